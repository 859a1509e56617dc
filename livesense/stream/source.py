"""Media sources (files, RTSP, HTTP(S)/HLS, capture devices) decoded with PyAV off the loop.

`open_source` opens the container at once and fails with one clear sentence; `items()`
then decodes in a worker thread and hands sampled frames and 16 kHz mono audio, all on one
stream clock, to the event loop through a bounded Handoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import av
import av.error
import numpy as np

from livesense.config import MediaLimits
from livesense.errors import ConfigError, SourceError
from livesense.records import AUDIO_RATE, AudioChunk, EndOfStream, Gap, VideoFrame
from livesense.stream.clock import StreamClock
from livesense.stream.handoff import Handoff, Item
from livesense.stream.media_guard import MediaGuard

log = logging.getLogger(__name__)

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp"})
HTTP_SCHEMES = frozenset({"http", "https"})
# URL scheme -> PyAV/FFmpeg input format names that may implement it
DEVICE_FORMATS: dict[str, tuple[str, ...]] = {
    "v4l2": ("v4l2", "video4linux2"),
    "alsa": ("alsa",),
    "pulse": ("pulse",),
}
SUPPORTED_SCHEMES = (
    "file", *sorted(HTTP_SCHEMES), "rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp",
    *DEVICE_FORMATS,
)  # fmt: skip
NOT_MEDIA_FORMATS = frozenset({"tty"})  # FFmpeg reads any text file as ANSI art
SKIP_NONREF_FACTOR = 4  # skip non-reference frames when sampling at <= 1/4 of the frame rate
GAP_SECONDS = 1.0  # a timestamp jump beyond this (s) is a gap
TRUNCATION_SLACK = 1.0  # a file ending this much (s) before its stated duration is truncated
_AUDIO_SNAP = 0.02  # audio timestamp drift (s) absorbed without moving the sample timeline


@dataclass(slots=True)
class _Target:
    """How to open a URL with PyAV."""

    arg: str
    format: str | None
    options: dict[str, str]
    kind: str  # "file", "network" or "device"
    scheme: str
    shown: str  # the URL as shown to users (credentials hidden)
    live: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _sentence(text: str) -> str:
    text = " ".join(str(text).split()).strip()
    if not text:
        return "Unknown error."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _hide_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def check_source_url(url: str) -> str:
    """The URL when livesense can read its scheme (a path has none), else SourceError with
    the list of schemes it reads; cheap, so callers refuse a source before loading models."""
    url = str(url)
    if "://" not in url:
        return url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SUPPORTED_SCHEMES:
        shown = "".join(ch for ch in scheme[:20] if ch.isprintable())
        listed = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise SourceError(
            f"livesense cannot read {shown}:// sources; give a file path or a URL starting "
            f"with {listed}."
        )
    return url


def _resolve(url: str, rtsp_transport: str, timeout: float) -> _Target:
    """Turn a user URL or path into what av.open needs."""
    check_source_url(url)
    if "://" not in url:
        return _Target(url, None, {}, "file", "file", url)
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    shown = _hide_credentials(url)
    if scheme == "file":
        path = unquote(urlsplit(url).path)
        return _Target(path, None, {}, "file", "file", path)
    if scheme in DEVICE_FORMATS:
        device, _, query = rest.partition("?")
        names = DEVICE_FORMATS[scheme]
        fmt = next((n for n in names if n in av.formats_available), None)
        if fmt is None:
            raise SourceError(
                f"This PyAV build cannot read {scheme} devices (no '{names[0]}' input format)."
            )
        if not device:
            raise SourceError(f"The device URL {url} names no device (e.g. {scheme}://default).")
        if scheme == "v4l2" and not Path(device).exists():
            raise SourceError(f"The video device {device} does not exist.")
        return _Target(device, fmt, dict(parse_qsl(query)), "device", scheme, url, live=True)
    if scheme in ("rtsp", "rtsps"):
        if rtsp_transport not in ("tcp", "udp"):
            raise ConfigError(f"The RTSP transport must be 'tcp' or 'udp', not {rtsp_transport!r}.")
        options = {"rtsp_transport": rtsp_transport, "timeout": str(int(timeout * 1_000_000))}
        return _Target(url, None, options, "network", scheme, shown, live=True)
    if scheme in HTTP_SCHEMES:
        return _Target(url, None, {}, "network", scheme, shown)
    return _Target(url, None, {}, "network", scheme, shown, live=scheme in LIVE_SCHEMES)


def _open_error(target: _Target, e: Exception, timeout: float, waited: float) -> SourceError:
    """One sentence saying why a source could not be opened."""
    what = target.shown
    if target.kind != "file" and waited >= timeout * 0.95:
        return SourceError(f"Could not open {what}: no answer within {timeout:g} s.")
    reason = _sentence(getattr(e, "strerror", None) or str(e))
    if target.kind == "file":
        if isinstance(e, av.error.PermissionError):
            return SourceError(f"The file {what} cannot be read: permission denied.")
        if isinstance(e, av.error.InvalidDataError | av.error.EOFError):
            return SourceError(
                f"The file {what} could not be read as media; it is corrupt, truncated or in "
                "an unsupported format."
            )
        return SourceError(f"The file {what} could not be opened: {reason}")
    if isinstance(e, av.error.ConnectionRefusedError):
        return SourceError(f"Could not connect to {what}: the connection was refused.")
    if isinstance(e, av.error.TimeoutError | av.error.ExitError):
        return SourceError(f"Could not open {what}: no answer within {timeout:g} s.")
    if isinstance(e, av.error.HTTPNotFoundError):
        return SourceError(f"The server has no {what} (HTTP 404 Not Found).")
    if isinstance(e, av.error.HTTPError | av.error.HTTPClientError):
        return SourceError(f"The server refused {what}: {reason}")
    if isinstance(e, av.error.InvalidDataError):
        return SourceError(f"The data from {what} could not be read as media.")
    if isinstance(e, av.error.ProtocolNotFoundError):
        return SourceError(f"This PyAV build does not support the URL {what}.")
    if target.kind == "device":
        return SourceError(f"Could not open the {target.scheme} device {target.arg}: {reason}")
    return SourceError(f"Could not open {what}: {reason}")


def _usable(streams: tuple[Any, ...]) -> Any | None:
    """The first stream that is real media (not cover art) and that has a decoder."""
    for stream in streams:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        if stream.codec_context is None:
            continue
        return stream
    return None


def _frame_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Downscaled size keeping aspect: longest side <= max_side, both sides even."""
    scale = min(1.0, max_side / max(width, height, 1))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return min(w, max(2, width // 2 * 2)), min(h, max(2, height // 2 * 2))


def open_source(
    url: str,
    *,
    realtime: bool = False,
    fps: float = 2.0,
    max_side: int = 640,
    queue_size: int = 256,
    rtsp_transport: str = "tcp",
    timeout: float = 10.0,
    limits: MediaLimits | None = None,
) -> MediaSource:
    """Open a file, URL or device now; raise SourceError with one sentence if it can't be read.

    Blocking (it opens and probes the container): call it via asyncio.to_thread.
    """
    if not fps > 0:
        raise ConfigError(f"The sampling rate must be above 0 frames per second, not {fps}.")
    if max_side < 16:
        raise ConfigError(f"The longest frame side must be at least 16 pixels, not {max_side}.")
    if queue_size < 2:
        raise ConfigError(f"The media queue must hold at least 2 items, not {queue_size}.")
    if not timeout > 0:
        raise ConfigError(f"The timeout must be above 0 seconds, not {timeout}.")
    url = str(url)  # a Path is welcome too
    if url.lower().startswith("v4l2://") and not any(
        n in av.formats_available for n in DEVICE_FORMATS["v4l2"]
    ):
        # PyAV's wheels lack the v4l2 input: read the device through OpenCV's V4L2 backend.
        from livesense.stream.capture import CaptureSource

        device = url.split("://", 1)[1].partition("?")[0]
        if not device or not Path(device).exists():
            raise SourceError(f"The video device {device or '(none)'} does not exist.")
        return CaptureSource(device, fps=fps, max_side=max_side, queue_size=queue_size, url=url)
    target = _resolve(url, rtsp_transport, timeout)
    if target.kind == "file":
        path = Path(target.arg)
        if not path.exists():
            raise SourceError(f"The file {target.shown} does not exist.")
        if path.is_dir():
            raise SourceError(f"{target.shown} is a directory, not a media file.")
        if path.stat().st_size == 0:
            raise SourceError(f"The file {target.shown} is empty.")
    options = dict(target.options)
    if target.live:
        # Packets read while probing would come out first, late: the wall anchor and the
        # lag would start off wrong by the probe time. Live sources start fresh instead.
        options.setdefault("fflags", "nobuffer")
    began = time.monotonic()
    try:
        container = av.open(
            target.arg,
            format=target.format,
            options=options,
            timeout=None if target.kind == "file" else (timeout, timeout),
            metadata_errors="replace",  # tags in a broken encoding must not stop the media
        )
    except av.error.FFmpegError as e:
        raise _open_error(target, e, timeout, time.monotonic() - began) from None
    except OSError as e:  # raised by Python's own file handling
        raise SourceError(f"Could not open {target.shown}: {_sentence(str(e))}") from None
    except (ValueError, OverflowError) as e:  # PyAV refusing what FFmpeg read (a hostile file)
        reason = _sentence(str(e))
        raise SourceError(f"{target.shown} could not be read as media: {reason}") from None
    try:
        if container.format.name in NOT_MEDIA_FORMATS:
            raise SourceError(f"{target.shown} is not audio or video (it looks like text).")
        video = _usable(container.streams.video)
        audio = _usable(container.streams.audio)
        if video is None and audio is None:
            raise SourceError(f"{target.shown} has no audio or video stream that can be decoded.")
        live = target.live or (target.kind == "network" and container.duration is None)
        guard = MediaGuard(limits, target.shown, live=live)
        guard.check_open(container, video, audio)
        return MediaSource(
            url,
            container,
            video,
            audio,
            live=live,
            realtime=realtime,
            fps=fps,
            max_side=max_side,
            queue_size=queue_size,
            shown=target.shown,
            guard=guard,
        )
    except BaseException:
        container.close()
        raise


class MediaSource:
    """One opened source. `items()` yields sampled frames, audio, gaps and finally EndOfStream.

    Counters (frames_decoded, frames_sampled, audio_chunks, drops, decode_errors, ...) are
    read by the metrics; drops happen only for live sources, oldest video first.
    """

    def __init__(
        self,
        url: str,
        container: Any,
        video: Any | None,
        audio: Any | None,
        *,
        live: bool,
        realtime: bool,
        fps: float,
        max_side: int,
        queue_size: int,
        shown: str | None = None,
        guard: MediaGuard | None = None,
    ) -> None:
        self.url = url
        self.shown = shown or url
        self.live = live
        self.realtime = realtime
        self.has_video = video is not None
        self.has_audio = audio is not None
        self.wall_anchor: float | None = None
        self.fps = fps
        self.max_side = max_side
        self.queue_size = queue_size
        duration = container.duration
        self.duration: float | None = None if live or duration is None else duration / 1e6
        self.width: int | None = video.codec_context.width if video is not None else None
        self.height: int | None = video.codec_context.height if video is not None else None
        # counters
        self.frames_decoded = 0
        self.frames_sampled = 0
        self.audio_chunks = 0
        self.audio_samples = 0
        self.gaps = 0
        self.decode_errors = 0
        self.lag = 0.0  # live: seconds between capture (wall clock) and hand-over, last item
        self.end_reason: str | None = None
        self.limit_reason: str | None = None  # set when a media limit ended the stream
        self._guard = guard

        self._container = container
        self._video = video
        self._audio = audio
        selected = [(k, s) for k, s in (("audio", audio), ("video", video)) if s is not None]
        kinds = [k for k, _ in selected]
        starts = [StreamClock.seconds(s.start_time, s.time_base) for _, s in selected]
        stated = [x for x in starts if x is not None]
        origin = min(stated) if len(stated) == len(starts) else None
        self._clock = StreamClock(kinds, lead=kinds[0], gap=GAP_SECONDS, origin=origin)
        self._handoff: Handoff | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        # video sampling
        self._last_slot = -1
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        # audio timeline
        self._resampler: av.AudioResampler | None = None
        self._audio_base: float | None = None
        self._audio_out = 0
        self._audio_in_next: float | None = None
        # pacing
        self._pace_start: float | None = None
        if video is not None:
            video.codec_context.thread_type = "AUTO"
            rate = video.average_rate or video.guessed_rate
            if rate and fps * SKIP_NONREF_FACTOR <= rate:
                # Sampling a few frames a second: frames no other frame refers to need not be
                # decoded at all (~30% less decoding for H.264 with B-frames).
                video.codec_context.skip_frame = "NONREF"

    def __repr__(self) -> str:
        return f"MediaSource({self.shown!r}, live={self.live})"

    @property
    def drops(self) -> int:
        return self._handoff.drops if self._handoff is not None else 0

    @property
    def video_drops(self) -> int:
        return self._handoff.video_drops if self._handoff is not None else 0

    @property
    def audio_drops(self) -> int:
        return self._handoff.audio_drops if self._handoff is not None else 0

    @property
    def queue_depth(self) -> int:
        return self._handoff.qsize() if self._handoff is not None else 0

    def stats(self) -> dict[str, float | int]:
        """Counters for metrics and status pages."""
        return {
            "frames_decoded": self.frames_decoded,
            "frames_sampled": self.frames_sampled,
            "audio_chunks": self.audio_chunks,
            "audio_seconds": self.audio_samples / AUDIO_RATE,
            "gaps": self.gaps,
            "drops": self.drops,
            "video_drops": self.video_drops,
            "audio_drops": self.audio_drops,
            "decode_errors": self.decode_errors,
            "queue_depth": self.queue_depth,
            "lag": self.lag,
        }

    async def items(self) -> AsyncIterator[VideoFrame | AudioChunk | Gap | EndOfStream]:
        """Decoded items in stream order; the last one is EndOfStream. Read once."""
        if self._started:
            raise SourceError(f"The source {self.shown} is already being read.")
        self._started = True
        if self._closed:
            yield EndOfStream("The source was closed before it was read.")
            return
        handoff = Handoff(
            self.queue_size,
            asyncio.get_running_loop(),
            "drop_oldest_video" if self.live else "wait",
        )
        self._handoff = handoff
        self._thread = threading.Thread(target=self._run, name=f"decode {self.shown}", daemon=True)
        self._thread.start()
        try:
            while True:
                item = await handoff.get()
                if (
                    self.live
                    and self.wall_anchor is not None
                    and not isinstance(item, Gap | EndOfStream)
                ):
                    self.lag = time.time() - (self.wall_anchor + item.t)
                yield item
                if isinstance(item, EndOfStream):
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop decoding and release the container (the thread finishes within a read)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._handoff is not None:
            self._handoff.close()
        if self._thread is None:
            self._free()

    def _free(self) -> None:
        """Free what was opened (the decode thread does it when it ran)."""
        self._container.close()

    # ---- decode thread -------------------------------------------------------------------

    def _run(self) -> None:
        reason: str | None = None
        try:
            reason = self._decode()
        except Exception as e:  # the thread must end with a reason, never a traceback
            log.exception("decoding %s failed", self.shown)
            reason = f"Decoding stopped on an unexpected error: {_sentence(str(e))}"
        finally:
            try:
                self._container.close()
            except Exception:  # closing a broken container must not hide the real reason
                log.debug("closing %s failed", self.shown, exc_info=True)
        self.end_reason = reason
        if not self._stop.is_set() and self._handoff is not None:
            self._handoff.put(EndOfStream(reason))

    def _decode(self) -> str | None:
        streams = [s for s in (self._video, self._audio) if s is not None]
        pending: list[Any] = []
        reason: str | None = None
        try:
            for packet in self._container.demux(streams):
                if self._stop.is_set():
                    return None
                if self._guard is not None:
                    self.limit_reason = self.limit_reason or self._guard.packet(packet)
                    if self.limit_reason is not None:
                        reason = self.limit_reason
                        break
                if self._clock.origin is None:
                    kind = "video" if self._is_video(packet) else "audio"
                    pending.append(packet)
                    when = StreamClock.seconds(packet.pts, packet.time_base)
                    if not self._clock.offer(kind, when):
                        continue
                    for held in pending:
                        self._decode_packet(held)
                    pending.clear()
                    continue
                self._decode_packet(packet)
        except av.error.FFmpegError as e:
            reason = self._read_error(e)
        except IndexError:  # PyAV cannot follow a track that appears mid-stream
            at = max((self._clock.expected(k) or 0.0) for k in self._clock.kinds)
            reason = f"{self.shown} added a track mid-stream; reading stopped at {at:.1f} s."
        self._clock.fix()
        for held in pending:
            self._decode_packet(held)
        if reason is not None:
            self._drain_decoders()
        self._flush_audio()
        if reason is None and not self.live:
            reason = self._truncation()
        if reason is None and self.decode_errors and not (self.frames_sampled or self.audio_chunks):
            reason = f"Nothing in {self.shown} could be decoded: its data is corrupt."
        return reason

    def _read_error(self, e: av.error.FFmpegError) -> str:
        at = max((self._clock.expected(k) or 0.0) for k in self._clock.kinds)
        if isinstance(e, av.error.ExitError | av.error.TimeoutError):
            return f"{self.shown} sent no data for too long; reading stopped at {at:.1f} s."
        return f"Reading {self.shown} stopped at {at:.1f} s: {_sentence(e.strerror or str(e))}"

    def _truncation(self) -> str | None:
        if self.duration is None:
            return None
        start = self._container.start_time
        start_s = start / 1e6 if start is not None else 0.0
        stated = self.duration - max(0.0, (self._clock.origin or 0.0) - start_s)
        reached = max((self._clock.expected(k) or 0.0) for k in self._clock.kinds)
        if reached < stated - TRUNCATION_SLACK:
            return (
                f"The file {self.shown} ended at {reached:.1f} s of its stated {stated:.1f} s; "
                "it is probably truncated."
            )
        return None

    def _decode_packet(self, packet: Any) -> None:
        try:
            frames = packet.decode()
        except av.error.EOFError:
            return
        except (av.error.InvalidDataError, av.error.UndefinedError):
            self.decode_errors += 1
            if self._guard is not None:
                self.limit_reason = self.limit_reason or self._guard.corrupt()
            return
        if self._guard is not None:
            self._guard.decoded()
        for frame in frames:
            if self._stop.is_set():
                return
            if self._is_video(packet):
                self._take_video(frame)
            else:
                self._take_audio(frame)

    def _is_video(self, packet: Any) -> bool:
        return self._video is not None and packet.stream.index == self._video.index

    def _drain_decoders(self) -> None:
        """After a read error, take the frames still inside the decoders."""
        for stream in (self._video, self._audio):
            if stream is None:
                continue
            try:
                frames = stream.codec_context.decode(None)
            except av.error.FFmpegError:
                continue
            for frame in frames:
                if stream is self._video:
                    self._take_video(frame)
                else:
                    self._take_audio(frame)

    def _take_video(self, frame: av.VideoFrame) -> None:
        self.frames_decoded += 1
        assert self._video is not None
        if self._guard is not None and not self._guard.frame_ok(frame.width, frame.height):
            return
        duration = StreamClock.seconds(frame.duration, frame.time_base) or 0.0
        if duration <= 0.0 and self._video.average_rate:
            duration = float(1 / self._video.average_rate)
        when = StreamClock.seconds(frame.pts, frame.time_base)
        t, gap = self._clock.stamp("video", when, duration)
        if gap is not None:
            self._emit_gap(gap)
        if t < 0.0:
            return
        slot = math.floor(t * self.fps + 1e-6)
        if slot <= self._last_slot:
            return
        self._last_slot = slot
        key = (frame.width, frame.height)
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = _frame_size(frame.width, frame.height, self.max_side)
        image: np.ndarray = frame.reformat(
            width=size[0], height=size[1], format="rgb24"
        ).to_ndarray()
        turns = round(frame.rotation / 90) % 4 if frame.rotation else 0
        if turns:  # phone videos: show the picture upright, as players do
            image = np.ascontiguousarray(np.rot90(image, turns))
        self.frames_sampled += 1
        self._emit(VideoFrame(t, image), t)

    def _take_audio(self, frame: av.AudioFrame) -> None:
        if self._guard is not None and not self._guard.audio_ok(
            frame.sample_rate, frame.layout.nb_channels
        ):
            return
        duration = frame.samples / frame.sample_rate if frame.sample_rate else 0.0
        when = StreamClock.seconds(frame.pts, frame.time_base)
        t, gap = self._clock.stamp("audio", when, duration)
        if gap is not None:
            self._emit_gap(gap)
        if self._audio_base is None or self._audio_in_next is None:
            self._audio_base = t
        elif abs(t - self._audio_in_next) > _AUDIO_SNAP:
            self._audio_base += t - self._audio_in_next  # a jump: move the sample timeline
        self._audio_in_next = t + duration
        try:
            try:
                out = self._resample(frame)
            except ValueError:  # the input format changed mid-stream: start a fresh resampler
                self._flush_audio()
                out = self._resample(frame)
        except av.error.FFmpegError:  # audio the resampler cannot take (a lying header)
            self._resampler = None
            self.decode_errors += 1
            if self._guard is not None:
                self.limit_reason = self.limit_reason or self._guard.corrupt()
            return
        for piece in out:
            self._emit_audio(piece)

    def _resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        if self._resampler is None:
            if frame is None:
                return []
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        return self._resampler.resample(frame)

    def _flush_audio(self) -> None:
        if self._resampler is None:
            return
        for piece in self._resampler.resample(None):
            self._emit_audio(piece)
        self._resampler = None

    def _emit_audio(self, piece: av.AudioFrame) -> None:
        samples = np.array(piece.to_ndarray(), dtype=np.float32).reshape(-1)
        if not len(samples) or self._audio_base is None:
            return
        t = self._audio_base + self._audio_out / AUDIO_RATE
        self._audio_out += len(samples)
        if t < 0.0:  # media from before the stream start: keep only what follows it
            skip = int(round(-t * AUDIO_RATE))
            if skip >= len(samples):
                return
            samples, t = samples[skip:], 0.0
        self.audio_chunks += 1
        self.audio_samples += len(samples)
        self._emit(AudioChunk(t, samples), t)

    def _emit_gap(self, gap: Gap) -> None:
        self.gaps += 1
        if self._pace_start is not None:
            self._pace_start -= gap.end - gap.start  # realtime pacing does not sit out a gap
        self._emit(gap, None)

    def _emit(self, item: Item, t: float | None) -> None:
        if t is not None and self._guard is not None and self.limit_reason is None:
            self.limit_reason = self._guard.position(t)
        if self.limit_reason is not None:  # a media limit ended the stream: nothing more goes out
            return
        if t is not None:
            if self.realtime and not self.live:
                now = time.monotonic()
                if self._pace_start is None:
                    self._pace_start = now - t
                elif self._pace_start + t > now:
                    self._stop.wait(self._pace_start + t - now)
            if self.wall_anchor is None and (self.live or self.realtime):
                self.wall_anchor = time.time() - t
        if self._stop.is_set() or self._handoff is None:
            return
        if not self._handoff.put(item):
            self._stop.set()

"""Files, RTSP, HTTP(S)/HLS and capture devices decoded with PyAV off the event loop.

`open_pyav` opens the container at once and fails with one clear sentence; `items()` then
decodes in a worker thread and hands sampled frames and 16 kHz mono audio, all on one
stream clock, to the event loop through a bounded Handoff (stream.decode_thread).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import av
import av.error
import numpy as np

from livesense.errors import ConfigError, SourceError
from livesense.records import AUDIO_RATE, AudioChunk, Gap, VideoFrame
from livesense.stream.clock import StreamClock
from livesense.stream.counters import SourceCounters
from livesense.stream.decode_thread import DecodeThread, ThreadFed, sentence
from livesense.stream.frame_size import frame_size
from livesense.stream.handoff import Item
from livesense.stream.media_guard import MediaGuard
from livesense.stream.options import SourceOptions
from livesense.urls import shown_url

log = logging.getLogger(__name__)

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp"})
HTTP_SCHEMES = frozenset({"http", "https"})
# URL scheme -> PyAV/FFmpeg input format names that may implement it
DEVICE_FORMATS: dict[str, tuple[str, ...]] = {
    "v4l2": ("v4l2", "video4linux2"),
    "alsa": ("alsa",),
    "pulse": ("pulse",),
}
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


def _hide_credentials(url: str) -> str:
    return shown_url(url)


def _resolve(url: str, rtsp_transport: str, timeout: float) -> _Target:
    """Turn a user URL or path into what av.open needs."""
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
    reason = sentence(getattr(e, "strerror", None) or str(e))
    if target.arg != what:  # the library may quote the URL it was given, credentials and all
        reason = reason.replace(target.arg, what)
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


def pyav_reads_v4l2() -> bool:
    """Whether this PyAV build has FFmpeg's v4l2 input (PyPI's wheels do not)."""
    return any(n in av.formats_available for n in DEVICE_FORMATS["v4l2"])


def open_pyav(url: str, options: SourceOptions) -> PyAVSource:
    """Open a file, URL or device with PyAV now; SourceError with one sentence if it can't be.

    Blocking (it opens and probes the container): call it via asyncio.to_thread.
    """
    timeout = options.timeout
    target = _resolve(url, options.rtsp_transport, timeout)
    if target.kind == "file":
        path = Path(target.arg)
        if not path.exists():
            raise SourceError(f"The file {target.shown} does not exist.")
        if path.is_dir():
            raise SourceError(f"{target.shown} is a directory, not a media file.")
        if path.stat().st_size == 0:
            raise SourceError(f"The file {target.shown} is empty.")
    av_options = dict(target.options)
    if target.live:
        # Packets read while probing would come out first, late: the wall anchor and the
        # lag would start off wrong by the probe time. Live sources start fresh instead.
        av_options.setdefault("fflags", "nobuffer")
    began = time.monotonic()
    try:
        container = av.open(
            target.arg,
            format=target.format,
            options=av_options,
            timeout=None if target.kind == "file" else (timeout, timeout),
            metadata_errors="replace",  # tags in a broken encoding must not stop the media
        )
    except av.error.FFmpegError as e:
        raise _open_error(target, e, timeout, time.monotonic() - began) from None
    except OSError as e:  # raised by Python's own file handling
        raise SourceError(f"Could not open {target.shown}: {sentence(str(e))}") from None
    except (ValueError, OverflowError) as e:  # PyAV refusing what FFmpeg read (a hostile file)
        reason = sentence(str(e))
        raise SourceError(f"{target.shown} could not be read as media: {reason}") from None
    try:
        if container.format.name in NOT_MEDIA_FORMATS:
            raise SourceError(f"{target.shown} is not audio or video (it looks like text).")
        video = _usable(container.streams.video)
        audio = _usable(container.streams.audio)
        if video is None and audio is None:
            raise SourceError(f"{target.shown} has no audio or video stream that can be decoded.")
        live = target.live or (target.kind == "network" and container.duration is None)
        guard = MediaGuard(options.limits, target.shown, live=live)
        guard.check_open(container, video, audio)
        return PyAVSource(
            url, container, video, audio, live=live, options=options, shown=target.shown,
            guard=guard,
        )  # fmt: skip
    except BaseException:
        container.close()
        raise


class PyAVSource(ThreadFed):
    """One opened PyAV container: a stream.source.Source. `items()` yields sampled frames,
    audio, gaps and finally EndOfStream; drops happen only for live sources, oldest video
    first, and are counted in `counters` with everything else.
    """

    def __init__(
        self,
        url: str,
        container: Any,
        video: Any | None,
        audio: Any | None,
        *,
        live: bool,
        options: SourceOptions,
        shown: str | None = None,
        guard: MediaGuard | None = None,
    ) -> None:
        self.url = url
        self.shown = shown or url
        self.live = live
        self.realtime = options.realtime
        self.has_video = video is not None
        self.has_audio = audio is not None
        self.fps = fps = options.fps
        self.max_side = options.max_side
        duration = container.duration
        self.duration: float | None = None if live or duration is None else duration / 1e6
        self.width: int | None = video.codec_context.width if video is not None else None
        self.height: int | None = video.codec_context.height if video is not None else None
        self.counters = SourceCounters()
        self.limit_reason: str | None = None  # set when a media limit ended the stream
        self._guard = guard
        self._feed = DecodeThread(
            self.shown,
            live=live,
            queue_size=options.queue_size,
            counters=self.counters,
            read=self._decode,
            release=self._free,
        )
        self._stop = self._feed.stop
        self._container = container
        self._video = video
        self._audio = audio
        selected = [(k, s) for k, s in (("audio", audio), ("video", video)) if s is not None]
        kinds = [k for k, _ in selected]
        starts = [StreamClock.seconds(s.start_time, s.time_base) for _, s in selected]
        stated = [x for x in starts if x is not None]
        origin = min(stated) if len(stated) == len(starts) else None
        self._clock = StreamClock(kinds, lead=kinds[0], gap=GAP_SECONDS, origin=origin)
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
                # decoded at all (for H.264 with B-frames, a good share of the decoding).
                video.codec_context.skip_frame = "NONREF"

    def __repr__(self) -> str:
        return f"PyAVSource({self.shown!r}, live={self.live})"

    def stats(self) -> dict[str, float | int]:
        """Counters for metrics and status pages."""
        return self.counters.as_json(self.queue_depth)

    def _free(self) -> None:
        try:
            self._container.close()
        except Exception:  # closing a broken container must not hide the real reason
            log.debug("closing %s failed", self.shown, exc_info=True)

    # ---- decode thread -------------------------------------------------------------------

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
        c = self.counters
        if reason is None and c.decode_errors and not (c.frames_sampled or c.audio_chunks):
            reason = f"Nothing in {self.shown} could be decoded: its data is corrupt."
        return reason

    def _read_error(self, e: av.error.FFmpegError) -> str:
        at = max((self._clock.expected(k) or 0.0) for k in self._clock.kinds)
        if isinstance(e, av.error.ExitError | av.error.TimeoutError):
            return f"{self.shown} sent no data for too long; reading stopped at {at:.1f} s."
        return f"Reading {self.shown} stopped at {at:.1f} s: {sentence(e.strerror or str(e))}"

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
            self.counters.decode_errors += 1
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
        self.counters.frames_decoded += 1
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
            size = self._sizes[key] = frame_size(frame.width, frame.height, self.max_side)
        image: np.ndarray = frame.reformat(
            width=size[0], height=size[1], format="rgb24"
        ).to_ndarray()
        turns = round(frame.rotation / 90) % 4 if frame.rotation else 0
        if turns:  # phone videos: show the picture upright, as players do
            image = np.ascontiguousarray(np.rot90(image, turns))
        self.counters.frames_sampled += 1
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
            self.counters.decode_errors += 1
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
        self.counters.audio_chunks += 1
        self.counters.audio_samples += len(samples)
        self._emit(AudioChunk(t, samples), t)

    def _emit_gap(self, gap: Gap) -> None:
        self.counters.gaps += 1
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
            if self._feed.wall_anchor is None and (self.live or self.realtime):
                self._feed.wall_anchor = time.time() - t
        self._feed.emit(item)

"""WebRTC ingestion: the tracks of one WHIP publisher as a live stream.source.Source (aiortc).

Real-time first: frames are sampled as they are decoded and only the newest waiting frame is
converted (aiortc's latest-frame relay idea); every frame or chunk left behind is counted.
Stream times come from the RTP timestamps, mapped to the publisher's capture clock by its RTCP
sender reports (arrival time when it sends none, or when its clock disagrees with ours), and
lie on a Timeline that a reconnect under the same stream id continues after a marked Gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from livesense.config import MediaLimits
from livesense.drop_policy import DropPolicy
from livesense.errors import SourceError, missing_package
from livesense.records import AUDIO_RATE, AudioChunk, EndOfStream, Gap, VideoFrame
from livesense.stream.counters import SourceCounters
from livesense.stream.frame_size import frame_size
from livesense.stream.handoff import Handoff, Item
from livesense.stream.media_guard import MediaGuard

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver

log = logging.getLogger(__name__)

NTP_EPOCH = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
GAP_SECONDS = 1.0  # a jump of the lead track's timestamps beyond this (s) is a gap
AUDIO_SNAP = 0.005  # RTP times are exact: a larger step is lost audio, left as a hole
AUDIO_CHUNK = AUDIO_RATE // 10  # audio is handed over in 100 ms chunks
VIDEO_BACKLOG = 15  # decoded frames waiting beyond this: skip to the newest
AUDIO_BACKLOG = 100  # 20 ms audio frames waiting beyond this (2 s): drop the oldest
MAX_CAPTURE_DELAY = 2.0  # a sender report implying more delay (s) than this is not trusted


@dataclass
class Timeline:
    """A stream's clock across WebRTC sessions, so a reconnect continues it after a Gap.

    `anchor` is the wall clock (Unix s) at stream time 0; `end` the stream time up to which
    media was handed over; `sessions` how many sessions have used it.
    """

    anchor: float
    end: float = 0.0
    sessions: int = 0


@dataclass
class _Sync:
    """What one track knows about its clock: first frames, arrivals, the latest sender report."""

    kind: str
    first_seen: float | None = None  # monotonic time of the first frame
    best: float = math.inf  # min(arrival - p) over frames seen: the arrival-based offset
    last_p: float = 0.0
    last_arrival: float = 0.0
    sr: tuple[float, int] | None = None  # (sender wall clock, RTP timestamp) of the last report
    clock_rate: int = 0
    receiver: Any = None
    offset: float | None = None  # capture wall = p + offset, once released
    clock: str = ""  # "rtcp" or "arrival"
    held: list[tuple[float, Any]] = field(default_factory=list)
    first_p: float | None = None  # media time of the session's first frame (media limits)

    def note(self, p: float, arrival: float) -> None:
        if self.first_seen is None:
            self.first_seen = time.monotonic()
        self.best = min(self.best, arrival - p)
        self.last_p, self.last_arrival = p, arrival

    def capture_offset(self) -> tuple[float, str]:
        """capture wall - p for this track, from its sender report if that is trustworthy."""
        origin = _rtp_origin(self.receiver)
        if self.sr is not None and origin is not None and self.clock_rate > 0:
            sr_wall, sr_rtp = self.sr
            raw = int(round(self.last_p * self.clock_rate)) + origin
            delta = ((raw - sr_rtp + 2**31) % 2**32) - 2**31
            capture = sr_wall + delta / self.clock_rate
            delay = self.last_arrival - capture
            if -0.05 <= delay <= MAX_CAPTURE_DELAY:
                return capture - self.last_p, "rtcp"
            log.info("%s sender report is %.2f s off arrival; using arrival", self.kind, delay)
        return self.best, "arrival"


def _rtp_origin(receiver: Any) -> int | None:
    """The RTP timestamp aiortc maps to pts 0 for this receiver (None if not readable)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    origin = getattr(mapper, "_origin", None)
    return int(origin) if isinstance(origin, int) else None


def _import_aiortc() -> Any:
    try:
        import aiortc
    except ImportError:
        raise missing_package("aiortc", "WebRTC ingestion (WHIP)", extra="webrtc") from None
    return aiortc


class WebRTCSource:
    """A live stream.source.Source fed by the audio and video tracks of one WebRTC peer
    connection.

    `accept(offer)` answers a publisher's SDP offer; `items()` then yields sampled RGB frames,
    16 kHz audio chunks, Gaps and a final EndOfStream (publisher gone, silent for
    `idle_timeout` s, connection failed, media beyond `limits`, or `close()`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeline: Timeline | None = None,
        fps: float = 2.0,
        max_side: int = 640,
        queue_size: int = 256,
        ice_servers: Sequence[Any] = (),
        idle_timeout: float = 10.0,
        sync_wait: float = 2.0,
        limits: MediaLimits | None = None,
    ) -> None:
        self.url = url
        self.shown = url
        self.live = True
        self.realtime = True
        self.has_video = False
        self.has_audio = False
        self.timeline = timeline or Timeline(anchor=time.time())
        self.wall_anchor: float | None = self.timeline.anchor
        self.fps = fps
        self.max_side = max_side
        self.queue_size = queue_size
        self.duration: float | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.ice_servers = list(ice_servers)
        self.idle_timeout = idle_timeout
        self.sync_wait = sync_wait
        self.guard = MediaGuard(limits, f"The publisher of {url}", live=True)
        self.limit_reason: str | None = None
        self.counters = SourceCounters()  # drops include frames skipped to catch up
        self.end_reason: str | None = None
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None

        self.pc: RTCPeerConnection | None = None
        self.ended = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: Handoff | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync: dict[str, _Sync] = {}
        self._released = False
        self._session_floor = 0.0
        self._last_media = time.monotonic()
        self._started = False
        self._closed = False
        self._finished = False
        # video sampling: the newest decoded frame of each slot waits here to be converted
        self._last_slot = -1
        self._pending: tuple[float, Any] | None = None
        self._wake_video = asyncio.Event()
        # audio timeline (on the publisher's media clock p) and the chunk being gathered
        self._resampler: av.AudioResampler | None = None
        self._audio_base: float | None = None
        self._audio_out = 0
        self._audio_next: float | None = None
        self._gather: list[np.ndarray] = []
        self._gather_p: float | None = None
        self._lead_next: float | None = None  # stream time the lead track should reach next

    def __repr__(self) -> str:
        return f"WebRTCSource({self.url!r})"

    def clocks(self) -> dict[str, str]:
        """Where each track's times come from: "rtcp" (sender reports) or "arrival"."""
        return {kind: s.clock for kind, s in self._sync.items() if s.clock}

    # ---- signalling ---------------------------------------------------------------------

    async def accept(self, offer: str) -> str:
        """Take a publisher's SDP offer and return the SDP answer (ICE candidates gathered).

        Raises SourceError with the reason when the offer is malformed or has nothing usable.
        """
        aiortc = _import_aiortc()
        if self.pc is not None:
            raise SourceError("This WebRTC source already has a publisher.")
        if not offer.lstrip().startswith("v=0"):
            raise SourceError("The body is not an SDP offer: it must start with 'v=0'.")
        check_offer(offer)
        self._loop = asyncio.get_running_loop()
        servers = [
            aiortc.RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            if not isinstance(s, aiortc.RTCIceServer)
            else s
            for s in self.ice_servers
        ]
        # An explicit (possibly empty) list: aiortc would otherwise reach for a public STUN server.
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=servers))
        self.pc = pc
        try:
            await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as e:  # aiortc raises ValueError, OperationError, ... for bad offers
            await _close_quietly(pc)
            raise SourceError(_offer_error(e)) from None
        receivers: dict[str, RTCRtpReceiver] = {}
        for transceiver in pc.getTransceivers():
            track = transceiver.receiver.track
            if track is not None and transceiver.kind not in receivers:
                receivers[transceiver.kind] = transceiver.receiver
        if not receivers:
            await _close_quietly(pc)
            raise SourceError("The SDP offer sends no audio or video track.")
        self.has_audio = "audio" in receivers
        self.has_video = "video" in receivers
        for line in offer.splitlines():
            if line.startswith("a=ice-ufrag:") and self.remote_ufrag is None:
                self.remote_ufrag = line.split(":", 1)[1].strip()
            elif line.startswith("a=ice-pwd:") and self.remote_pwd is None:
                self.remote_pwd = line.split(":", 1)[1].strip()
        self._handoff = Handoff(
            self.queue_size, self._loop, DropPolicy.DROP_OLDEST, self.counters
        )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "failed":
                self._finish("The publisher's connection was lost.")
            elif pc.connectionState == "closed":
                self._finish(None)

        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await _close_quietly(pc)
            raise SourceError(_offer_error(e)) from None
        for kind, receiver in receivers.items():
            sync = self._sync[kind] = _Sync(kind, receiver=receiver)
            self._watch_reports(receiver, sync)
            self._count_bytes(receiver)
            reader = self._read_video if kind == "video" else self._read_audio
            self._spawn(reader(receiver.track), f"webrtc-{kind}")
        if self.has_video:
            self._spawn(self._convert_video(), "webrtc-convert")
        self._spawn(self._watchdog(), "webrtc-watchdog")
        self.timeline.sessions += 1
        self._session_floor = self.timeline.end
        return str(pc.localDescription.sdp)

    async def add_candidates(self, fragment: str) -> int:
        """Trickle ICE: add the candidates of an SDP fragment; returns how many were added.

        Raises SourceError when the fragment asks for an ICE restart (not supported).
        """
        _import_aiortc()
        from aiortc.sdp import candidate_from_sdp

        if self.pc is None:
            raise SourceError("This session has no peer connection.")
        mids = [t.mid for t in self.pc.getTransceivers() if t.mid is not None]
        mid: str | None = mids[0] if mids else None
        added = 0
        for raw in fragment.splitlines():
            line = raw.strip()
            key, _, value = line.partition(":")
            if key == "a=ice-ufrag" and value.strip() != self.remote_ufrag:
                raise SourceError("ICE restarts are not supported; start a new session instead.")
            if key == "a=ice-pwd" and value.strip() != self.remote_pwd:
                raise SourceError("ICE restarts are not supported; start a new session instead.")
            if key == "a=mid":
                mid = value.strip()
            elif key == "a=candidate":
                shown = "".join(c if c.isprintable() else "?" for c in value[:80])
                bad = SourceError(
                    f"The ICE candidate {shown!r} is malformed: it needs a foundation, "
                    "component, transport, priority, address, port and 'typ <type>'."
                )
                fields = value.split()
                if len(fields) < 8 or fields[6] != "typ":
                    raise bad
                try:
                    candidate = candidate_from_sdp(value)
                except Exception:  # aiortc's parser asserts and indexes on what it is given
                    raise bad from None
                candidate.sdpMid = mid
                try:
                    await self.pc.addIceCandidate(candidate)
                except Exception:
                    raise SourceError(
                        f"The ICE candidate {shown!r} could not be added to this session."
                    ) from None
                added += 1
            elif line == "a=end-of-candidates":
                await self.pc.addIceCandidate(None)
        return added

    # ---- Source --------------------------------------------------------------------------

    async def items(self) -> AsyncIterator[Item]:
        """Items in arrival order (each track in time order); the last one is EndOfStream."""
        if self._started:
            raise SourceError(f"The source {self.url} is already being read.")
        self._started = True
        if self._handoff is None:
            yield EndOfStream("The WebRTC source was never connected to a publisher.")
            return
        try:
            async for item in self._handoff.relay(lambda: self.timeline.anchor):
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """End the session: the peer connection closes and items() ends with EndOfStream."""
        if self._closed:
            return
        self._closed = True
        self._finish(None)
        if self._handoff is not None:
            self._handoff.close()

    async def aclose(self) -> None:
        """Close and wait until the peer connection and every task of this source are done."""
        self.close()
        await self._shutdown()

    def stats(self) -> dict[str, float | int]:
        queued = self._handoff.qsize() if self._handoff is not None else 0
        out = self.counters.as_json(queued)
        out["sessions"] = self.timeline.sessions
        return out

    # ---- tracks -------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch_reports(self, receiver: Any, sync: _Sync) -> None:
        """Keep each RTCP sender report (wall clock <-> RTP time) this receiver gets."""
        from aiortc.rtp import RtcpSrPacket

        handle = receiver._handle_rtcp_packet
        rtx: Any = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket) and packet.ssrc not in rtx:
                info = packet.sender_info
                ntp = int(info.ntp_timestamp)
                wall = (ntp >> 32) - NTP_EPOCH + (ntp & 0xFFFFFFFF) / 2**32
                sync.sr = (wall, int(info.rtp_timestamp))
            await handle(packet)

        receiver._handle_rtcp_packet = on_rtcp

    def _count_bytes(self, receiver: Any) -> None:
        """Hold the RTP payload of this receiver to media.max_bitrate (arrival clock)."""
        handle = receiver._handle_rtp_packet

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            why = self.guard.received(len(packet.payload), arrival_time_ms / 1000.0)
            if why is not None:
                self._beyond_limits(why)
                return
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = on_rtp

    def _beyond_limits(self, reason: str) -> None:
        """Media beyond the limits: this session ends with the reason; nothing else does."""
        if self.limit_reason is None and not self._finished:
            self.limit_reason = reason
            log.warning("%s: %s", self.url, reason)
            self._finish(reason)

    def _within_limits(self, sync: _Sync, p: float) -> bool:
        """Whether the session's media time is still within media.max_duration."""
        if sync.first_p is None:
            sync.first_p = p
        why = self.guard.published(p - sync.first_p)
        if why is not None:
            self._beyond_limits(why)
        return why is None

    async def _read_video(self, track: MediaStreamTrack) -> None:
        from aiortc.mediastreams import MediaStreamError

        sync = self._sync["video"]
        backlog: Any = getattr(track, "_queue", None)
        try:
            while True:
                frame: Any = await track.recv()
                # Behind (the loop was busy): the newest decoded frame wins.
                while isinstance(backlog, asyncio.Queue) and backlog.qsize() > VIDEO_BACKLOG:
                    newer = backlog.get_nowait()
                    if newer is None:  # the track ended
                        return
                    self.counters.video_drops += 1
                    frame = newer
                arrival = time.time()
                self._last_media = time.monotonic()
                self.counters.frames_decoded += 1
                if frame.pts is None or frame.time_base is None:
                    continue
                why = self.guard.live_frame(int(frame.width), int(frame.height))
                if why is not None:  # cheap, per frame: the size may change mid-stream
                    self._beyond_limits(why)
                    return
                p = float(frame.pts * frame.time_base)
                if not self._within_limits(sync, p):
                    return
                sync.clock_rate = int(round(1 / frame.time_base))
                sync.note(p, arrival)
                # Sample on the stream clock once it is known, so a frame falls right after
                # each snippet boundary and snippets close without waiting for the next sample.
                at = p if sync.offset is None else p + sync.offset - self.timeline.anchor
                slot = math.floor(at * self.fps + 1e-6)
                if slot <= self._last_slot:
                    continue
                self._last_slot = slot
                if self._pending is not None:
                    self.counters.video_drops += 1  # conversion is behind: replace the waiting one
                self._pending = (p, frame)
                self._wake_video.set()
        except MediaStreamError:
            pass
        finally:
            self._finish(None)

    async def _convert_video(self) -> None:
        while not self._finished:
            await self._wake_video.wait()
            self._wake_video.clear()
            job, self._pending = self._pending, None
            if job is None:
                continue
            p, frame = job
            try:
                image = await asyncio.to_thread(self._to_rgb, frame)
            except (ValueError, av.FFmpegError):
                self.counters.decode_errors += 1
                continue
            self.counters.frames_sampled += 1
            self._deliver("video", p, image)

    def _to_rgb(self, frame: Any) -> np.ndarray:
        w, h = frame_size(frame.width, frame.height, self.max_side)
        self.width, self.height = frame.width, frame.height
        return np.asarray(frame.reformat(width=w, height=h, format="rgb24").to_ndarray())

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        from aiortc.mediastreams import MediaStreamError

        sync = self._sync["audio"]
        backlog: Any = getattr(track, "_queue", None)
        try:
            while True:
                frame: Any = await track.recv()
                while isinstance(backlog, asyncio.Queue) and backlog.qsize() > AUDIO_BACKLOG:
                    newer = backlog.get_nowait()
                    if newer is None:
                        return
                    self.counters.audio_drops += 1
                    frame = newer
                arrival = time.time()
                self._last_media = time.monotonic()
                if frame.pts is None or frame.time_base is None or not frame.sample_rate:
                    continue
                why = self.guard.live_audio(int(frame.sample_rate), _channels(frame))
                if why is not None:
                    self._beyond_limits(why)
                    return
                p = float(frame.pts * frame.time_base)
                if not self._within_limits(sync, p):
                    return
                duration = frame.samples / frame.sample_rate
                sync.clock_rate = int(frame.sample_rate)
                sync.note(p, arrival)
                self._on_audio(frame, p, duration)
        except MediaStreamError:
            pass
        finally:
            self._finish(None)

    def _on_audio(self, frame: Any, p: float, duration: float) -> None:
        if self._audio_base is None or self._audio_next is None:
            self._audio_base = p
        elif abs(p - self._audio_next) > AUDIO_SNAP:
            self._flush_gather()
            self._audio_base += p - self._audio_next  # a jump: move the sample timeline
        self._audio_next = p + duration
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        try:
            pieces = self._resampler.resample(frame)
        except ValueError:  # the input format changed: a fresh resampler
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            pieces = self._resampler.resample(frame)
        for piece in pieces:
            samples = np.asarray(piece.to_ndarray(), dtype=np.float32).reshape(-1)
            if not len(samples):
                continue
            if self._gather_p is None:
                self._gather_p = self._audio_base + self._audio_out / AUDIO_RATE
            self._audio_out += len(samples)
            self._gather.append(samples)
            if sum(len(s) for s in self._gather) >= AUDIO_CHUNK:
                self._flush_gather()

    def _flush_gather(self) -> None:
        if self._gather and self._gather_p is not None:
            samples = np.concatenate(self._gather)
            self.counters.audio_chunks += 1
            self.counters.audio_samples += len(samples)
            self._deliver("audio", self._gather_p, samples)
        self._gather, self._gather_p = [], None

    # ---- timing -------------------------------------------------------------------------

    def _deliver(self, kind: str, p: float, payload: Any) -> None:
        """Hand an item over once its track's clock is known; hold it until then."""
        if self._handoff is None:
            return
        sync = self._sync[kind]
        if sync.offset is None:
            sync.held.append((p, payload))
            if len(sync.held) > self.queue_size:
                sync.held.pop(0)
                if kind == "video":
                    self.counters.video_drops += 1
                else:
                    self.counters.audio_drops += 1
            self._maybe_release()
            return
        self._put(kind, p + sync.offset - self.timeline.anchor, payload)

    def _maybe_release(self, force: bool = False) -> None:
        """Fix the clocks of tracks whose sender report came (or whose wait is over)."""
        now = time.monotonic()
        waiting = [s for s in self._sync.values() if s.offset is None]
        if not waiting:
            return
        if not self._released:
            # The first release of a session fixes every started track at once, so one shift
            # keeps them in sync and one Gap marks the reconnect.
            started = [s for s in self._sync.values() if s.first_seen is not None]
            first = min((s.first_seen for s in started if s.first_seen is not None), default=now)
            timed_out = force or now - first >= self.sync_wait
            ready = started and all(s.sr is not None for s in started)
            every = len(started) == len(self._sync)
            if not (timed_out or (ready and every)):
                return
            for s in started:
                s.offset, s.clock = s.capture_offset()
            held_first = [
                s.held[0][0] + (s.offset or 0.0) - self.timeline.anchor for s in started if s.held
            ]
            if not held_first:
                return
            t_first = min(held_first)
            shift = max(0.0, self._session_floor - t_first)
            for s in started:
                s.offset = (s.offset or 0.0) + shift
            t_first += shift
            if self._session_floor > 0.0 and t_first > self._session_floor:
                self._put_gap(Gap(self._session_floor, t_first, "the publisher reconnected"))
            self._released = True
            self._lead_next = None
            for s in started:
                self._release(s)
            return
        for s in waiting:  # a track that started after the others
            if s.first_seen is None:
                continue
            if force or s.sr is not None or now - s.first_seen >= self.sync_wait:
                offset, s.clock = s.capture_offset()
                t0 = s.held[0][0] + offset - self.timeline.anchor if s.held else 0.0
                s.offset = offset + max(0.0, self._session_floor - t0)
                self._release(s)

    def _release(self, sync: _Sync) -> None:
        held, sync.held = sync.held, []
        assert sync.offset is not None
        for p, payload in held:
            self._put(sync.kind, p + sync.offset - self.timeline.anchor, payload)

    def _put(self, kind: str, t: float, payload: Any) -> None:
        assert self._handoff is not None
        lead = "audio" if "audio" in self._sync else "video"
        if kind == "video":
            item: Item = VideoFrame(t, payload)
            duration = 1.0 / self.fps
        else:
            item = AudioChunk(t, payload)
            duration = len(payload) / AUDIO_RATE
        if kind == lead:
            if self._lead_next is not None and t > self._lead_next + GAP_SECONDS:
                self._put_gap(Gap(self._lead_next, t, "the published media paused"))
            self._lead_next = t + duration
        self.timeline.end = max(self.timeline.end, t + duration)
        self._handoff.put(item)

    def _put_gap(self, gap: Gap) -> None:
        assert self._handoff is not None
        self.counters.gaps += 1
        self._handoff.put(gap)

    # ---- end ----------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """End a session whose publisher went silent; let waiting tracks use arrival times."""
        while not self._finished:
            await asyncio.sleep(0.25)
            if time.monotonic() - self._last_media > self.idle_timeout:
                self._finish(f"The publisher sent no media for {self.idle_timeout:g} s.")
                return
            self._maybe_release()

    def _finish(self, reason: str | None) -> None:
        """The session is over: hand over what is held, then EndOfStream (once)."""
        if self._finished:
            return
        self._finished = True
        self.end_reason = reason
        if self._handoff is not None:
            self._flush_gather()
            self._maybe_release(force=True)
            for sync in self._sync.values():
                if sync.held:  # a track that never delivered a first frame's clock
                    if sync.offset is None:
                        sync.offset, sync.clock = sync.capture_offset()
                    self._release(sync)
            self._handoff.put(EndOfStream(reason))
        self._wake_video.set()
        self.ended.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                task = loop.create_task(self._shutdown(), name="webrtc-close")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and not task.done():
                task.cancel()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        others = [t for t in list(self._tasks) if t is not current]
        if others:
            await asyncio.gather(*others, return_exceptions=True)


def _channels(frame: Any) -> int:
    layout = getattr(frame, "layout", None)
    n = getattr(layout, "nb_channels", None)
    if n is None:
        n = len(getattr(layout, "channels", ()) or ())
    return int(n)


MEDIA_KINDS = ("audio", "video", "application")


def check_offer(offer: str) -> None:
    """Refuse, with a sentence, what aiortc would trip over: a media section other than audio,
    video or data channels, and a BUNDLE group naming a mid that no section has."""
    mids: list[str] = []
    bundles: list[str] = []
    for raw in offer.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind not in MEDIA_KINDS:
                shown = "".join(c for c in kind[:20] if c.isprintable())
                raise SourceError(
                    f"The SDP offer has a media section of kind {shown!r}; this service takes "
                    "only audio and video."
                )
        elif line.startswith("a=mid:"):
            mids.append(line[6:].strip())
        elif line.startswith("a=group:BUNDLE"):
            bundles.extend(line[len("a=group:BUNDLE") :].split())
    for mid in bundles:
        if mid not in mids:
            shown = "".join(c for c in mid[:20] if c.isprintable())
            raise SourceError(
                f"The SDP offer's BUNDLE group names mid {shown!r}, which no media section has."
            )


async def _close_quietly(pc: Any) -> None:
    """Close a peer connection that may be half set up (aiortc may raise while it closes)."""
    with contextlib.suppress(Exception):
        await pc.close()


# What aiortc raises for offers it refuses on purpose; anything else is its internals failing
# on hostile input, whose words (attribute names, index errors) mean nothing to a publisher.
_REFUSALS = ("ValueError", "InvalidAccessError", "InvalidStateError", "OperationError")
_INTERNAL = ("NoneType", "object has no attribute", "index out of range", "not subscriptable",
             "unexpected keyword", "Traceback", "object is not")  # fmt: skip


def _offer_error(e: Exception) -> str:
    """One sentence for an offer aiortc refused, never repeating the library's internals."""
    text = " ".join(str(e).split()).rstrip(".")
    if "description send parameters" in text:
        kind = "video" if "video" in text else "audio"
        codecs = "VP8 or H.264 (packetization-mode 1)" if kind == "video" else "Opus"
        return f"The SDP offer has no {kind} codec this service can take: offer {codecs}."
    if type(e).__name__ in _REFUSALS and text and not any(x in text for x in _INTERNAL):
        return f"The SDP offer is malformed: {text[:200]}."
    return (
        "The SDP offer could not be used: it is malformed or asks for something this service "
        "does not support."
    )

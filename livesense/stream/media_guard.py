"""Holds a source to the media limits: refuse at open what is out of bounds, end with a reason
what turns hostile while decoding (bitrate, duration, runs of corrupt packets), skip odd frames.
WebRTC publishers have no container to check at open: each decoded frame, audio frame and RTP
packet is checked as it comes (live_frame, live_audio, published, received), and the first one
beyond the limits ends the session with its reason.
"""

from __future__ import annotations

import logging
from typing import Any

from livesense.config import MediaLimits
from livesense.errors import SourceError

log = logging.getLogger(__name__)

BITRATE_WINDOW = 10.0  # s of media time over which the bitrate is measured


class MediaGuard:
    """Per-source checks against MediaLimits; methods return a reason to stop, or None."""

    def __init__(self, limits: MediaLimits | None, shown: str, *, live: bool) -> None:
        self.limits = limits or MediaLimits()
        self.shown = shown
        self.live = live
        self.corrupt_run = 0
        self.frames_refused = 0  # decoded frames skipped for their size or sample rate
        self._window_start: float | None = None
        self._window_bytes = 0
        self._video: Any | None = None

    def check_open(self, container: Any, video: Any | None, audio: Any | None) -> None:
        """Raise SourceError if the container states something beyond the limits."""
        lim = self.limits
        what = self.shown
        tracks = len(container.streams)
        if tracks > lim.max_tracks:
            raise SourceError(
                f"{what} has {tracks} tracks, more than the {lim.max_tracks} accepted "
                "(media.max_tracks)."
            )
        if video is not None:
            self._video = video
            cc = video.codec_context
            w, h = int(cc.width or 0), int(cc.height or 0)
            if self._too_big(w, h):
                raise SourceError(
                    f"{what} has {w}x{h} video, beyond the limit of {lim.max_width}x"
                    f"{lim.max_height} and {lim.max_pixels} pixels (media.max_*)."
                )
            # Frames that grow beyond the limit mid-stream fail to decode instead of
            # allocating gigabytes (FFmpeg checks every frame against max_pixels).
            cc.options = {**dict(cc.options or {}), "max_pixels": str(lim.max_pixels)}
        if audio is not None:
            cc = audio.codec_context
            rate = int(cc.sample_rate or 0)
            if rate and not lim.min_sample_rate <= rate <= lim.max_sample_rate:
                raise SourceError(
                    f"{what} has audio at {rate} Hz, outside {lim.min_sample_rate}.."
                    f"{lim.max_sample_rate} Hz (media.min/max_sample_rate)."
                )
            channels = _channels(cc)
            if channels > lim.max_channels:
                raise SourceError(
                    f"{what} has {channels} audio channels, more than the {lim.max_channels} "
                    "accepted (media.max_channels)."
                )
        if not self.live and container.duration is not None:
            seconds = container.duration / 1e6
            if seconds > lim.max_duration:
                raise SourceError(
                    f"{what} lasts {seconds:.0f} s, longer than the {lim.max_duration:.0f} s "
                    "accepted (media.max_duration)."
                )
        stated = getattr(container, "bit_rate", None) or 0
        if stated > lim.max_bitrate:
            raise SourceError(
                f"{what} states a bitrate of {stated / 1e6:.1f} Mbit/s, above the "
                f"{lim.max_bitrate / 1e6:.1f} Mbit/s accepted (media.max_bitrate)."
            )

    def _too_big(self, w: int, h: int) -> bool:
        lim = self.limits
        return w > lim.max_width or h > lim.max_height or w * h > lim.max_pixels

    def packet(self, packet: Any) -> str | None:
        """Check the video size the decoder now has and count the packet toward the bitrate."""
        video = self._video
        if video is not None and packet.stream.index == video.index:
            cc = video.codec_context
            w, h = int(cc.width or 0), int(cc.height or 0)
            if self._too_big(w, h):  # its frames are refused by the decoder (max_pixels)
                lim = self.limits
                return (
                    f"{self.shown} changed to {w}x{h} video, beyond the limit of "
                    f"{lim.max_width}x{lim.max_height} and {lim.max_pixels} pixels (media.max_*)."
                )
        pts = packet.pts if packet.pts is not None else packet.dts
        t = None if pts is None or packet.time_base is None else float(pts * packet.time_base)
        return self.received(int(packet.size or 0), t)

    def received(self, size: int, t: float | None) -> str | None:
        """Count `size` bytes of media at time `t` (s, on any one clock) toward the bitrate."""
        if t is None:
            self._window_bytes += size
            return None
        start = self._window_start
        if start is None or t < start or t > start + 4 * BITRATE_WINDOW:
            # first packet, or timestamps went back or jumped ahead: measure afresh
            self._window_start, self._window_bytes = t, size
            return None
        self._window_bytes += size
        span = t - start
        if span < BITRATE_WINDOW:
            return None
        rate = self._window_bytes * 8 / span
        self._window_start, self._window_bytes = t, 0
        if rate > self.limits.max_bitrate:
            return (
                f"{self.shown} sent {rate / 1e6:.1f} Mbit/s over {span:.0f} s, above the "
                f"{self.limits.max_bitrate / 1e6:.1f} Mbit/s accepted (media.max_bitrate)."
            )
        return None

    def decoded(self) -> None:
        self.corrupt_run = 0

    def corrupt(self) -> str | None:
        """A packet failed to decode; a long run of them ends the stream."""
        self.corrupt_run += 1
        if self.corrupt_run < self.limits.max_corrupt_packets:
            return None
        return (
            f"{self.shown}: {self.corrupt_run} packets in a row could not be decoded (corrupt "
            "data, or frames beyond the size limit media.max_pixels)."
        )

    def position(self, t: float) -> str | None:
        """Media time reached; files may not run past max_duration (a lying header)."""
        if self.live or t <= self.limits.max_duration:
            return None
        return (
            f"{self.shown} ran past {self.limits.max_duration:.0f} s, the longest accepted "
            "(media.max_duration); reading stopped there."
        )

    def live_frame(self, width: int, height: int) -> str | None:
        """A decoded frame of a live publisher: a reason to end it when beyond the size limits
        (checked per frame: the size may change mid-stream)."""
        if not self._too_big(width, height):
            return None
        lim = self.limits
        return (
            f"{self.shown} sent {width}x{height} video, beyond the limit of {lim.max_width}x"
            f"{lim.max_height} and {lim.max_pixels} pixels (media.max_*)."
        )

    def live_audio(self, rate: int, channels: int) -> str | None:
        """Decoded audio of a live publisher: a reason to end it when beyond the limits."""
        lim = self.limits
        if not lim.min_sample_rate <= rate <= lim.max_sample_rate:
            return (
                f"{self.shown} sent audio at {rate} Hz, outside {lim.min_sample_rate}.."
                f"{lim.max_sample_rate} Hz (media.min/max_sample_rate)."
            )
        if channels > lim.max_channels:
            return (
                f"{self.shown} sent {channels} audio channels, more than the {lim.max_channels} "
                "accepted (media.max_channels)."
            )
        return None

    def published(self, seconds: float) -> str | None:
        """Media time of one publisher session so far (its own clock, so timestamps jumping
        hours ahead count too): a reason to end it past media.max_duration."""
        if seconds <= self.limits.max_duration:
            return None
        return (
            f"{self.shown} published {seconds:.0f} s of media in one session, more than the "
            f"{self.limits.max_duration:.0f} s accepted (media.max_duration)."
        )

    def frame_ok(self, width: int, height: int) -> bool:
        if self._too_big(width, height):
            self._refuse(f"a {width}x{height} frame")
            return False
        return True

    def audio_ok(self, rate: int, channels: int) -> bool:
        lim = self.limits
        if not lim.min_sample_rate <= rate <= lim.max_sample_rate or channels > lim.max_channels:
            self._refuse(f"audio at {rate} Hz with {channels} channels")
            return False
        return True

    def _refuse(self, what: str) -> None:
        self.frames_refused += 1
        if self.frames_refused == 1 or self.frames_refused % 1000 == 0:
            log.warning("%s: skipped %s, beyond the media limits (%d so far)",
                        self.shown, what, self.frames_refused)


def _channels(cc: Any) -> int:
    layout = getattr(cc, "layout", None)
    n = getattr(layout, "nb_channels", None) if layout is not None else None
    if n is None:
        n = getattr(cc, "channels", 0)
    return int(n or 0)

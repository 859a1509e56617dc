"""What every media source offers (`Source`), and `open_source`, which picks the backend
that reads a URL.

Backends: stream.pyav_source (files, RTSP, HTTP(S)/HLS, devices PyAV can read),
stream.capture (v4l2 devices through OpenCV when PyAV cannot), stream.webrtc (a WHIP
publisher) and stream.reconnect (a live source reopened after drops). Each implements
Source; none inherits from another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from livesense.config import MediaLimits
from livesense.errors import SourceError
from livesense.stream.counters import SourceCounters
from livesense.stream.handoff import Item
from livesense.stream.options import SourceOptions
from livesense.stream.pyav_source import DEVICE_FORMATS, HTTP_SCHEMES, open_pyav, pyav_reads_v4l2

__all__ = [
    "MediaSource", "Source", "SourceCounters", "SourceOptions", "check_source_url", "open_source"
]  # fmt: skip

SUPPORTED_SCHEMES = (
    "file", *sorted(HTTP_SCHEMES), "rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp",
    *DEVICE_FORMATS,
)  # fmt: skip


@runtime_checkable
class Source(Protocol):
    """One opened stream of media: `items()` yields sampled VideoFrames and 16 kHz AudioChunks
    on one stream clock (seconds from its start), Gaps where media is missing, and finally
    one EndOfStream whose reason says why it ended early (None: it simply ended)."""

    @property
    def url(self) -> str:
        """The URL or path as given."""

    @property
    def shown(self) -> str:
        """The URL as shown to users (credentials hidden)."""

    @property
    def live(self) -> bool:
        """Whether media comes in real time (live sources may drop; files never do)."""

    @property
    def has_video(self) -> bool: ...

    @property
    def has_audio(self) -> bool: ...

    @property
    def wall_anchor(self) -> float | None:
        """Wall clock (Unix s) at stream time 0, for live and paced sources once known."""

    @property
    def duration(self) -> float | None:
        """Stated length in seconds (files), None for live sources."""

    @property
    def limit_reason(self) -> str | None:
        """Why a media limit ended the stream (reopening it would not help), if one did."""

    @property
    def counters(self) -> SourceCounters:
        """What the source has done so far (decoded, sampled, dropped, reconnected...)."""

    def items(self) -> AsyncIterator[Item]:
        """The source's items in order, ending with EndOfStream. Read once."""

    def close(self) -> None:
        """Stop; `items()` ends soon after with EndOfStream. Idempotent."""


MediaSource = Source  # another name for Source, for code that imports it by that name


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
) -> Source:
    """Open a file, URL or device now; raise SourceError with one sentence if it can't be read.

    Blocking (it opens and probes the media): call it via asyncio.to_thread.
    """
    options = SourceOptions(
        realtime=realtime, fps=fps, max_side=max_side, queue_size=queue_size,
        rtsp_transport=rtsp_transport, timeout=timeout, limits=limits,
    )  # fmt: skip
    url = check_source_url(str(url))  # a Path is welcome too
    if url.lower().startswith("v4l2://") and not pyav_reads_v4l2():
        from livesense.stream.capture import CaptureSource  # OpenCV loads only for devices

        device = url.split("://", 1)[1].partition("?")[0]
        if not device or not Path(device).exists():
            raise SourceError(f"The video device {device or '(none)'} does not exist.")
        return CaptureSource(device, fps=fps, max_side=max_side, queue_size=queue_size, url=url)
    return open_pyav(url, options)

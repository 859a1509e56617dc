"""How a source is opened and sampled: one checked record handed to every backend."""

from __future__ import annotations

from dataclasses import dataclass

from livesense.config import MediaLimits
from livesense.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """Sampling and opening options; ConfigError with one sentence when one is out of range.

    realtime: pace a file at its own speed (live sources are real time anyway); fps: video
    frames sampled a second; max_side: longest side of a sampled frame; queue_size: items
    waiting for the pipeline; rtsp_transport, timeout (s): for network sources; limits:
    what media a source may send.
    """

    realtime: bool = False
    fps: float = 2.0
    max_side: int = 640
    queue_size: int = 256
    rtsp_transport: str = "tcp"
    timeout: float = 10.0
    limits: MediaLimits | None = None

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(
                f"The sampling rate must be above 0 frames per second, not {self.fps}."
            )
        if self.max_side < 16:
            raise ConfigError(
                f"The longest frame side must be at least 16 pixels, not {self.max_side}."
            )
        if self.queue_size < 2:
            raise ConfigError(f"The media queue must hold at least 2 items, not {self.queue_size}.")
        if not self.timeout > 0:
            raise ConfigError(f"The timeout must be above 0 seconds, not {self.timeout}.")

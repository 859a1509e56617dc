"""What a source has done so far, as one record every backend fills in the same way."""

from __future__ import annotations

from dataclasses import dataclass

from livesense.records import AUDIO_RATE


@dataclass(slots=True)
class SourceCounters:
    """Counts kept by a source and read by the pipeline, the metrics and status pages.

    Drops happen only on live sources: the hand-over queue was full, or a backend skipped a
    frame to catch up with real time. `lag` is the seconds between capture (wall clock) and
    hand-over of the last item of a live source.
    """

    frames_decoded: int = 0
    frames_sampled: int = 0
    audio_chunks: int = 0
    audio_samples: int = 0
    gaps: int = 0
    decode_errors: int = 0
    video_drops: int = 0
    audio_drops: int = 0
    reconnects: int = 0
    lag: float = 0.0

    @property
    def drops(self) -> int:
        return self.video_drops + self.audio_drops

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / AUDIO_RATE

    def plus(self, other: SourceCounters) -> SourceCounters:
        """Both sets of counts added up (a source made of several connections in turn);
        the lag is `other`'s, the newer one."""
        return SourceCounters(
            frames_decoded=self.frames_decoded + other.frames_decoded,
            frames_sampled=self.frames_sampled + other.frames_sampled,
            audio_chunks=self.audio_chunks + other.audio_chunks,
            audio_samples=self.audio_samples + other.audio_samples,
            gaps=self.gaps + other.gaps,
            decode_errors=self.decode_errors + other.decode_errors,
            video_drops=self.video_drops + other.video_drops,
            audio_drops=self.audio_drops + other.audio_drops,
            reconnects=self.reconnects + other.reconnects,
            lag=other.lag,
        )

    def as_json(self, queue_depth: int = 0) -> dict[str, float | int]:
        """The counts for metrics and status pages."""
        return {
            "frames_decoded": self.frames_decoded,
            "frames_sampled": self.frames_sampled,
            "audio_chunks": self.audio_chunks,
            "audio_seconds": self.audio_seconds,
            "gaps": self.gaps,
            "drops": self.drops,
            "video_drops": self.video_drops,
            "audio_drops": self.audio_drops,
            "decode_errors": self.decode_errors,
            "queue_depth": queue_depth,
            "lag": self.lag,
            "reconnects": self.reconnects,
        }

"""Core records that travel from the source to memory and back to the user.

Times are seconds on the stream clock (from stream start); `wall` is the wall-clock
(Unix seconds) at stream time 0 for live sources, None for files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

AUDIO_RATE = 16_000
"""Sample rate of all audio inside livesense (mono float32 in [-1, 1])."""


@dataclass(slots=True)
class VideoFrame:
    """One decoded video frame, RGB uint8 (H, W, 3), at stream time `t`."""

    t: float
    image: np.ndarray


@dataclass(slots=True)
class AudioChunk:
    """Decoded audio, 16 kHz mono float32, whose first sample is at stream time `t`."""

    t: float
    samples: np.ndarray


@dataclass(slots=True)
class EndOfStream:
    """Marks the end of a source; `reason` is set when it ended on an error."""

    reason: str | None = None


@dataclass(slots=True)
class Gap:
    """Media is missing between `start` and `end` (a PTS jump or a reconnect), and why."""

    start: float
    end: float
    reason: str = ""


@dataclass(slots=True)
class Snippet:
    """A fixed window [start, end) of aligned audio and video."""

    stream: str
    index: int
    start: float
    end: float
    wall: float | None = None
    frames: list[VideoFrame] = field(default_factory=list)
    audio: np.ndarray | None = None  # exactly (end - start) * AUDIO_RATE samples
    missing: set[str] = field(default_factory=set)  # subset of {"audio", "video"}
    gap: bool = False  # the window lies (partly) in a gap
    last: bool = False  # the stream's final snippet: its source has ended

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class Word:
    text: str
    start: float
    end: float
    prob: float = 1.0


@dataclass(slots=True)
class OcrLine:
    """A line of on-screen text; box is (x0, y0, x1, y1) in pixels of the source frame."""

    text: str
    box: tuple[float, float, float, float]
    score: float
    t: float


@dataclass(slots=True)
class Detection:
    """One detected object in one frame; box is (x1, y1, x2, y2) in pixels of the frame."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    t: float
    color: str = ""  # the box's dominant colour, by name ("red"), "" when unknown
    track: int = 0  # the track it belongs to (same object across frames and snippets)


@dataclass(slots=True)
class SeenObject:
    """What a moment shows of one object class: how many at once, the best of them."""

    label: str
    count: int
    score: float
    box: tuple[float, float, float, float]
    color: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "count": int(self.count),
            "score": round(float(self.score), 3),
            "box": [round(float(v), 1) for v in self.box],
            "color": self.color,
        }


@dataclass(slots=True)
class TrackSpan:
    """An object followed across frames and snippets: in view since `since`; `until` is set
    in the snippet where it left (the time it was last seen)."""

    id: int
    label: str
    since: float
    until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": int(self.id),
            "label": self.label,
            "since": round(float(self.since), 3),
            "until": None if self.until is None else round(float(self.until), 3),
        }


@dataclass(slots=True)
class Features:
    """What perception found in one snippet. Empty fields mean nothing was found."""

    words: list[Word] = field(default_factory=list)
    speech_ratio: float = 0.0
    events: dict[str, float] = field(default_factory=dict)  # speech / singing / music
    loudness_db: float = -120.0
    onsets: int = 0
    ocr: list[OcrLine] = field(default_factory=list)
    faces: int = 0
    scene_change: bool = False
    motion: float = 0.0
    colors: list[str] = field(default_factory=list)  # dominant colours, "#rrggbb"
    keyframe: bytes | None = None  # JPEG
    objects: list[Detection] = field(default_factory=list)  # detector output, all frames looked at
    scene: dict[str, float] = field(default_factory=dict)  # top scene labels -> probability
    tracks: list[TrackSpan] = field(default_factory=list)  # in view now, or left in this snippet
    image_embedding: np.ndarray | None = None  # CLIP slot
    audio_embedding: np.ndarray | None = None  # CLAP slot
    skipped: list[str] = field(default_factory=list)  # stages shed or failed

    @property
    def transcript(self) -> str:
        return " ".join(w.text.strip() for w in self.words).strip()


@dataclass(slots=True)
class Evidence:
    """What is kept to answer and to show a moment."""

    transcript: str = ""
    words: list[Word] = field(default_factory=list)
    ocr: list[OcrLine] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    faces: int = 0
    keyframe: str | None = None  # a reference: "<stream>/<index>.jpg" under the keyframe store
    scene_change: bool = False
    motion: float = 0.0
    colors: list[str] = field(default_factory=list)
    loudness_db: float = -120.0
    speech_ratio: float = 0.0
    objects: list[SeenObject] = field(default_factory=list)  # best score first
    scene: dict[str, float] = field(default_factory=dict)
    tracks: list[TrackSpan] = field(default_factory=list)

    def ocr_texts(self) -> list[str]:
        return [line.text for line in self.ocr]

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape of evidence (part of the CLI/HTTP contract)."""
        return {
            "transcript": self.transcript,
            "ocr": self.ocr_texts(),
            "events": {k: round(float(v), 3) for k, v in self.events.items()},
            "faces": int(self.faces),
            "keyframe": self.keyframe,
            "objects": [o.to_json() for o in self.objects],
            "scene": {k: round(float(v), 3) for k, v in self.scene.items()},
            "tracks": [t.to_json() for t in self.tracks],
        }


@dataclass(slots=True)
class SnippetRecord:
    """What the Combiner makes of a snippet: a few tagged vectors plus evidence.

    `tokens` is (K, D) float32, L2-normalised, in the shared text space; token_modalities[k]
    and token_times[k] tag token k. `clip_tokens` holds vectors in the CLIP space, if any.
    A consolidated record covers several snippets: `count` > 1 and index is the first one.
    """

    stream: str
    index: int
    start: float
    end: float
    tokens: np.ndarray
    token_modalities: list[str]
    token_times: list[float]
    evidence: Evidence
    wall: float | None = None
    clip_tokens: np.ndarray | None = None
    count: int = 1
    tier: str = "recent"


@dataclass(slots=True)
class Hit:
    stream: str
    start: float
    end: float
    score: float
    evidence: Evidence
    index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "start": round(float(self.start), 3),
            "end": round(float(self.end), 3),
            "score": round(float(self.score), 4),
            "evidence": self.evidence.to_json(),
        }


@dataclass(slots=True)
class Answer:
    text: str
    hits: list[Hit]

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.text, "hits": [h.to_json() for h in self.hits]}

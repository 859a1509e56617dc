"""StreamSummary: the abstract tier, a small running summary of a whole stream.

Updated once per snippet in constant time and stored in constant space: counts, the share
of speech, sound events, the most frequent words and on-screen lines (Space-Saving
heavy-hitter counters with a fixed number of slots) and the running mean of the snippets'
pooled tokens. Serialised as a few kilobytes of JSON.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.index import pool
from livesense.memory.lexical import STOPWORDS, normalise
from livesense.records import SnippetRecord

TERM_SLOTS = 48
TEXT_SLOTS = 16
SHOWN = 5  # lines and words shown in the summary text


def _space_saving(counts: dict[str, int], key: str, slots: int) -> None:
    """Count `key` in a Space-Saving table of `slots` entries (heavy hitters, bounded)."""
    if key in counts:
        counts[key] += 1
    elif len(counts) < slots:
        counts[key] = 1
    else:
        low = min(counts, key=counts.__getitem__)
        counts[key] = counts.pop(low) + 1


def _clock(t: float) -> str:
    s = max(0, int(round(t)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


@dataclass(slots=True)
class StreamSummary:
    """Running summary of one stream (the abstract tier)."""

    stream: str
    snippets: int = 0
    start: float | None = None
    end: float = 0.0
    speech: int = 0  # snippets with a transcript
    events: dict[str, int] = field(default_factory=dict)  # snippets with the event >= 0.5
    faces: int = 0  # snippets with a face
    scenes: int = 0  # scene changes
    terms: dict[str, int] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)
    mean: np.ndarray = field(default_factory=lambda: np.zeros(DIM, np.float32))
    dropped_words: int = 0  # words left out of consolidated text for lack of room

    def update(self, record: SnippetRecord) -> None:
        """Fold one new snippet's record in (constant time)."""
        ev = record.evidence
        n = max(1, int(record.count))
        self.snippets += n
        self.start = record.start if self.start is None else min(self.start, record.start)
        self.end = max(self.end, record.end)
        if ev.transcript.strip():
            self.speech += n
            for word in set(normalise(ev.transcript).split()):
                if len(word) >= 3 and word not in STOPWORDS and not word.isdigit():
                    _space_saving(self.terms, word, TERM_SLOTS)
        for k, v in ev.events.items():
            if v >= 0.5 and k != "speech":
                self.events[k] = self.events.get(k, 0) + n
        self.faces += n if ev.faces else 0
        self.scenes += 1 if ev.scene_change else 0
        for text in {" ".join(t.split()) for t in ev.ocr_texts()}:
            if text:
                _space_saving(self.texts, text[:80], TEXT_SLOTS)
        tokens = np.asarray(record.tokens, np.float32)
        if tokens.ndim == 2 and len(tokens) and tokens.shape[1] == len(self.mean):
            w = n / self.snippets
            self.mean = ((1.0 - w) * self.mean + w * pool(tokens)).astype(np.float32)

    def text(self) -> str:
        """One paragraph about the whole stream."""
        if not self.snippets:
            return f"Nothing of stream {self.stream} is stored yet."
        span = self.end - (self.start or 0.0)
        parts = [f"{_clock(span)} of stream {self.stream} ({self.snippets} snippets)"]
        parts.append(f"speech in {100 * self.speech / self.snippets:.0f}% of it")
        if self.events:
            top = sorted(self.events.items(), key=lambda kv: -kv[1])[:3]
            parts.append(
                "heard " + ", ".join(f"{k} ({100 * c / self.snippets:.0f}%)" for k, c in top)
            )
        if self.texts:
            top_texts = sorted(self.texts, key=lambda k: -self.texts[k])[:SHOWN]
            parts.append("on screen most often " + ", ".join(f"\u201c{t}\u201d" for t in top_texts))
        if self.terms:
            top_terms = sorted(self.terms, key=lambda k: -self.terms[k])[:SHOWN]
            parts.append("words most often: " + ", ".join(top_terms))
        return "; ".join(parts) + "."

    def to_json(self) -> str:
        mean = np.asarray(self.mean, np.float16).tobytes()
        return json.dumps(
            {
                "stream": self.stream,
                "snippets": self.snippets,
                "start": self.start,
                "end": self.end,
                "speech": self.speech,
                "events": self.events,
                "faces": self.faces,
                "scenes": self.scenes,
                "terms": self.terms,
                "texts": self.texts,
                "mean": base64.b64encode(mean).decode(),
                "dropped_words": self.dropped_words,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StreamSummary:
        d: dict[str, Any] = json.loads(text)
        mean = np.frombuffer(base64.b64decode(d.get("mean", "")), np.float16).astype(np.float32)
        return cls(
            stream=str(d["stream"]),
            snippets=int(d.get("snippets", 0)),
            start=d.get("start"),
            end=float(d.get("end", 0.0)),
            speech=int(d.get("speech", 0)),
            events={str(k): int(v) for k, v in d.get("events", {}).items()},
            faces=int(d.get("faces", 0)),
            scenes=int(d.get("scenes", 0)),
            terms={str(k): int(v) for k, v in d.get("terms", {}).items()},
            texts={str(k): int(v) for k, v in d.get("texts", {}).items()},
            mean=mean if len(mean) else np.zeros(DIM, np.float32),
            dropped_words=int(d.get("dropped_words", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The public shape (API, CLI)."""
        return {
            "snippets": self.snippets,
            "start": self.start,
            "end": self.end,
            "speech": round(self.speech / self.snippets, 3) if self.snippets else 0.0,
            "text": self.text(),
        }

"""Combiners fuse one snippet's features into a compact SnippetRecord.

Mirasol3B's Combiner squeezes a snippet's audio and video into a few learned tokens. With no
trainable weights shipped, the default `EvidenceCombiner` makes at most one token per modality
in the shared text space (what was said, what was shown as text, what was heard, what was
seen), each tagged with modality and time. A learned Transformer Combiner can replace it
behind the same `Combiner` protocol: `combine_batch(snippets, features) -> records`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from livesense.engines.text import TextEmbedder
from livesense.records import Evidence, Features, Snippet, SnippetRecord
from livesense.seen import seen_text, summarise

MODALITIES = ("speech", "text", "audio", "visual")
"""Token slots, in order. A record holds at most one token per slot (K <= 4)."""


class Combiner(Protocol):
    """Fuses each snippet's features into a record of a few tagged vectors plus evidence."""

    def combine_batch(
        self, snippets: list[Snippet], features: list[Features]
    ) -> list[SnippetRecord]: ...


def describe_audio(f: Features) -> str:
    """A short phrase for what was heard beyond the words (those have their own token)."""
    parts = [
        label
        for label, p in sorted(f.events.items(), key=lambda kv: -kv[1])
        if p >= 0.5 and not (label == "speech" and f.words)
    ]
    return " and ".join(parts)


def describe_visual(f: Features) -> str:
    """A short phrase for what was seen, for the visual token: the detected objects, most
    confident first ("a red motorcycle and a chair, maybe a cup"), the scene labels, else
    faces, a new scene and movement."""
    seen = seen_text(summarise(f.objects), f.scene)
    if seen:
        return seen
    parts: list[str] = []
    if f.faces:
        parts.append("one person's face" if f.faces == 1 else f"{f.faces} people's faces")
    if f.scene_change:
        parts.append("a new scene")
    if f.motion > 0.08:
        parts.append("movement")
    return ", ".join(parts)


class EvidenceCombiner:
    """Default Combiner: one text-space token per present modality, batched embedding."""

    def __init__(self, embedder: TextEmbedder) -> None:
        self.embedder = embedder

    def combine(self, snippet: Snippet, features: Features) -> SnippetRecord:
        return self.combine_batch([snippet], [features])[0]

    def combine_batch(
        self, snippets: list[Snippet], features: list[Features]
    ) -> list[SnippetRecord]:
        texts: list[str] = []
        slots: list[list[tuple[str, float, int]]] = []  # per snippet: (modality, time, text row)
        for snip, f in zip(snippets, features, strict=True):
            mid = (snip.start + snip.end) / 2
            mine: list[tuple[str, float, int]] = []
            transcript = f.transcript
            if transcript:
                t = float(np.mean([(w.start + w.end) / 2 for w in f.words]))
                mine.append(("speech", t, len(texts)))
                texts.append(transcript)
            if f.ocr:
                mine.append(("text", f.ocr[0].t, len(texts)))
                texts.append(" ".join(line.text for line in f.ocr))
            heard = describe_audio(f)
            if heard:
                mine.append(("audio", mid, len(texts)))
                texts.append(f"sound of {heard}")
            seen = describe_visual(f)
            if seen or not mine:
                # Every record keeps at least one token so it can be found by time and scene.
                mine.append(("visual", mid, len(texts)))
                texts.append(seen or ("silence" if "video" in snip.missing else "a still picture"))
            slots.append(mine)
        vectors = self.embedder.embed(texts)
        records = []
        for snip, f, mine in zip(snippets, features, slots, strict=True):
            rows = [row for _, _, row in mine]
            clip = None
            if f.image_embedding is not None:
                clip = np.asarray(f.image_embedding, np.float32)[None, :]
            records.append(
                SnippetRecord(
                    stream=snip.stream,
                    index=snip.index,
                    start=snip.start,
                    end=snip.end,
                    wall=snip.wall,
                    tokens=vectors[rows].astype(np.float32),
                    token_modalities=[m for m, _, _ in mine],
                    token_times=[round(t, 3) for _, t, _ in mine],
                    evidence=evidence_of(f),
                    clip_tokens=clip,
                )
            )
        return records


def evidence_of(f: Features) -> Evidence:
    """What is kept from the features to answer and to show (the keyframe ref is set on store)."""
    return Evidence(
        transcript=f.transcript,
        words=list(f.words),
        ocr=list(f.ocr),
        events={k: float(v) for k, v in f.events.items()},
        faces=int(f.faces),
        scene_change=bool(f.scene_change),
        motion=float(f.motion),
        colors=list(f.colors),
        loudness_db=float(f.loudness_db),
        speech_ratio=float(f.speech_ratio),
        objects=summarise(f.objects),
        scene={k: float(v) for k, v in f.scene.items()},
        tracks=list(f.tracks),
    )

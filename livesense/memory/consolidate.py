"""Consolidation: merge adjacent moments of a stream into one summarised record.

memory.tiers decides which records merge and when; merge_group makes the merged record: the
span of its members, one count-weighted mean token per modality, the distinct transcript
sentences and on-screen lines, the loudest events and the most salient member's keyframe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from livesense.memory.index import pool
from livesense.memory.lexical import normalise
from livesense.records import Evidence, OcrLine, SeenObject, SnippetRecord, TrackSpan

TRANSCRIPT_MAX = 240  # characters of merged transcript kept for display (answers quote 220)
OCR_MAX = 12  # distinct on-screen lines kept for display
OBJECTS_MAX = 12  # object classes kept in a merged moment, best first
SCENE_MAX = 5
TRACKS_MAX = 24
LEX_MAX = 20000  # characters of searchable text kept whole before falling back to words

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(slots=True)
class Stored:
    """A record as stored: row id, the snippet indices it covers, its searchable text."""

    rid: int
    record: SnippetRecord
    last_index: int
    lex: str
    salience: float = 0.0
    members: list[int] = field(default_factory=list)  # row ids merged into this one


def merge_group(group: list[Stored], *, lex: bool = True) -> Stored:
    """One consolidated record standing for the group (its row id is 0 until stored);
    lex=False leaves its searchable text empty for the caller to fill (memory.tiers)."""
    first = group[0].record
    counts = np.array([it.record.count for it in group], np.float32)
    tokens, modalities, times = _merge_tokens(group, counts)
    best = max(
        range(len(group)),
        key=lambda i: (group[i].record.evidence.keyframe is not None, group[i].salience, -i),
    )
    evidence = _merge_evidence([it.record.evidence for it in group], counts, best)
    clips = [it.record.clip_tokens for it in group if it.record.clip_tokens is not None]
    clips = [c for c in clips if c.shape[-1] == clips[0].shape[-1]]
    clip = None
    if clips:
        clip = pool(np.concatenate([c.reshape(-1, c.shape[-1]) for c in clips]))[None, :]
    record = SnippetRecord(
        stream=first.stream,
        index=first.index,
        start=first.start,
        end=max(it.record.end for it in group),
        tokens=tokens,
        token_modalities=modalities,
        token_times=times,
        evidence=evidence,
        wall=first.wall,
        clip_tokens=clip,
        count=int(counts.sum()),
        tier="consolidated",
    )
    return Stored(
        rid=0,
        record=record,
        last_index=max(it.last_index for it in group),
        lex=merge_lex([it.lex for it in group]) if lex else "",
        salience=max(it.salience for it in group),
        members=[it.rid for it in group],
    )


def _merge_tokens(
    group: list[Stored], counts: np.ndarray
) -> tuple[np.ndarray, list[str], list[float]]:
    """One token per modality: the count-weighted, normalised mean of the members' tokens."""
    order: list[str] = []
    acc: dict[str, list[tuple[np.ndarray, float, float]]] = {}
    for it, w in zip(group, counts, strict=True):
        r = it.record
        for k in range(len(r.tokens)):
            mod = r.token_modalities[k] if k < len(r.token_modalities) else "unknown"
            t = r.token_times[k] if k < len(r.token_times) else (r.start + r.end) / 2
            if mod not in acc:
                order.append(mod)
                acc[mod] = []
            acc[mod].append((r.tokens[k].astype(np.float32), float(w), float(t)))
    dim = group[0].record.tokens.shape[1]
    vecs, times = [], []
    for mod in order:
        rows = acc[mod]
        w = np.array([x[1] for x in rows], np.float32)
        v = (np.stack([x[0] for x in rows]) * w[:, None]).sum(axis=0)
        n = float(np.linalg.norm(v))
        vecs.append(v / n if n > 1e-12 else v)
        times.append(float(np.average([x[2] for x in rows], weights=w)))
    tokens = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)
    return tokens, order, times


def _merge_evidence(evs: list[Evidence], counts: np.ndarray, best: int) -> Evidence:
    events: dict[str, float] = {}
    for ev in evs:
        for k, v in ev.events.items():
            events[k] = max(events.get(k, 0.0), float(v))
    ocr: list[OcrLine] = []
    seen: set[str] = set()
    for ev in evs:
        for line in ev.ocr:
            key = normalise(line.text)
            if key and key not in seen and len(ocr) < OCR_MAX:
                seen.add(key)
                ocr.append(line)
    total = float(counts.sum()) or 1.0
    objects: dict[str, SeenObject] = {}
    for ev in evs:
        for o in ev.objects:
            have = objects.get(o.label)
            if have is None or o.score > have.score:
                objects[o.label] = replace(o, count=max(o.count, have.count if have else 0))
            else:
                have.count = max(have.count, o.count)
    scene: dict[str, float] = {}
    for ev in evs:
        for k, v in ev.scene.items():
            scene[k] = max(scene.get(k, 0.0), float(v))
    tracks: dict[int, TrackSpan] = {}
    for ev in evs:  # oldest first: a track's latest state wins
        for t in ev.tracks:
            first = tracks.get(t.id)
            tracks[t.id] = replace(t, since=min(t.since, first.since) if first else t.since)
    return Evidence(
        transcript=summarise_transcripts([ev.transcript for ev in evs]),
        words=[],
        ocr=ocr,
        events=events,
        faces=max(ev.faces for ev in evs),
        keyframe=evs[best].keyframe,
        scene_change=any(ev.scene_change for ev in evs),
        motion=max(ev.motion for ev in evs),
        colors=list(evs[best].colors),
        loudness_db=max(ev.loudness_db for ev in evs),
        speech_ratio=float(sum(ev.speech_ratio * c for ev, c in zip(evs, counts, strict=True)))
        / total,
        objects=sorted(objects.values(), key=lambda o: -o.score)[:OBJECTS_MAX],
        scene=dict(sorted(scene.items(), key=lambda kv: -kv[1])[:SCENE_MAX]),
        tracks=sorted(tracks.values(), key=lambda t: t.id)[-TRACKS_MAX:],
    )


def summarise_transcripts(texts: list[str], limit: int = TRANSCRIPT_MAX) -> str:
    """Distinct sentences in time order, whole sentences up to `limit` characters."""
    out: list[str] = []
    seen: set[str] = set()
    size = 0
    for text in texts:
        for sentence in _SENTENCE.split(text.strip()):
            sentence = sentence.strip()
            key = normalise(sentence)
            if not key or key in seen:
                continue
            seen.add(key)
            if size + len(sentence) + 1 > limit:
                if not out:  # one very long sentence: cut it
                    out.append(sentence[: limit - 1].rstrip() + "…")
                return " ".join(out)
            out.append(sentence)
            size += len(sentence) + 1
    return " ".join(out)


def merge_lex(lexes: list[str], limit: int = LEX_MAX) -> str:
    """Searchable text of a merged record: distinct lines, then distinct words past `limit`."""
    lines: list[str] = []
    seen: set[str] = set()
    for lex in lexes:
        for line in lex.splitlines():
            line = line.strip()
            if line and line.lower() not in seen:
                seen.add(line.lower())
                lines.append(line)
    kept: list[str] = []
    size = 0
    rest: list[str] = []
    for line in lines:
        if size + len(line) + 1 <= limit and not rest:
            kept.append(line)
            size += len(line) + 1
        else:
            rest.append(line)
    if rest:
        words = {w.lower() for line in kept for w in line.split()}
        extra: list[str] = []
        for line in rest:
            for w in line.split():
                if w.lower() not in words:
                    words.add(w.lower())
                    extra.append(w)
        kept.append(" ".join(extra))
    return "\n".join(kept)

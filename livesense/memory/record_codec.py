"""Stored records as flat fields (Redis hashes): metadata JSON, evidence JSON, float16 tokens.

Tokens are kept as float16 (half the bytes; cosines move by < 1e-3). The field names are short
because they repeat in every record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.consolidate import Stored
from livesense.memory.evidence_codec import evidence_from_json, evidence_to_json
from livesense.records import SnippetRecord

META, TIER, EVIDENCE, TOKENS, CLIP, LEX = b"m", b"t", b"ev", b"tok", b"clip", b"lex"
FIELDS = (META, TIER, EVIDENCE, TOKENS, CLIP, LEX)


def _f16(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, np.float16).tobytes()


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """What a record's META field holds (JSON with the short keys in brackets): the last
    snippet index it stands for (l), its span in stream seconds (s, e), wall-clock start (w),
    snippets merged into it (c), salience (sal), each token's modality (mods) and time (times),
    and the width of its CLIP tokens (cd; None without them)."""

    last: int
    start: float
    end: float
    wall: float | None = None
    count: int = 1
    salience: float = 0.0
    modalities: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    clip_dim: int | None = None

    @classmethod
    def of(cls, item: Stored, clip_dim: int | None) -> RecordMeta:
        r = item.record
        return cls(
            last=int(item.last_index),
            start=float(r.start),
            end=float(r.end),
            wall=None if r.wall is None else float(r.wall),
            count=int(r.count),
            salience=round(float(item.salience), 4),
            modalities=list(r.token_modalities),
            times=[round(float(t), 3) for t in r.token_times],
            clip_dim=clip_dim,
        )

    def to_json(self) -> bytes:
        raw = {
            "l": self.last, "s": self.start, "e": self.end, "w": self.wall, "c": self.count,
            "sal": self.salience, "mods": self.modalities, "times": self.times,
            "cd": self.clip_dim,
        }  # fmt: skip
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> RecordMeta:
        m = json.loads(raw)
        wall, cd = m.get("w"), m.get("cd")
        return cls(
            last=int(m["l"]),
            start=float(m["s"]),
            end=float(m["e"]),
            wall=None if wall is None else float(wall),
            count=int(m.get("c", 1)),
            salience=float(m.get("sal", 0.0)),
            modalities=[str(x) for x in m.get("mods", [])],
            times=[float(t) for t in m.get("times", [])],
            clip_dim=int(cd) if cd else None,
        )


def pack_record(item: Stored) -> dict[bytes, bytes]:
    """The fields of one record (without CLIP when it has none)."""
    r = item.record
    clip = None if r.clip_tokens is None else np.asarray(r.clip_tokens, np.float32)
    meta = RecordMeta.of(item, None if clip is None else int(clip.shape[-1]))
    out = {
        META: meta.to_json(),
        TIER: r.tier.encode(),
        EVIDENCE: evidence_to_json(r.evidence).encode(),
        TOKENS: _f16(r.tokens),
        LEX: item.lex.encode(),
    }
    if clip is not None:
        out[CLIP] = _f16(clip.reshape(-1, clip.shape[-1]))
    return out


def unpack_meta(raw: bytes) -> RecordMeta:
    return RecordMeta.from_json(raw)


def unpack_tokens(raw: bytes | None) -> np.ndarray:
    if not raw:
        return np.zeros((0, DIM), np.float32)
    return np.frombuffer(raw, np.float16).reshape(-1, DIM).astype(np.float32)


def unpack_record(stream: str, index: int, fields: dict[bytes, bytes]) -> Stored:
    """A Stored record from its fields (all of FIELDS that it has)."""
    meta = RecordMeta.from_json(fields[META])
    clip_raw = fields.get(CLIP)
    clip = None
    if clip_raw and meta.clip_dim:
        clip = np.frombuffer(clip_raw, np.float16).reshape(-1, meta.clip_dim).astype(np.float32)
    record = SnippetRecord(
        stream=stream,
        index=int(index),
        start=meta.start,
        end=meta.end,
        tokens=unpack_tokens(fields.get(TOKENS)),
        token_modalities=meta.modalities,
        token_times=meta.times,
        evidence=evidence_from_json(fields[EVIDENCE].decode()),
        wall=meta.wall,
        clip_tokens=clip,
        count=meta.count,
        tier=fields.get(TIER, b"recent").decode(),
    )
    return Stored(
        rid=int(index),
        record=record,
        last_index=meta.last,
        lex=fields.get(LEX, b"").decode(),
        salience=meta.salience,
    )

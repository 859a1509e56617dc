"""Stored records as flat fields (Redis hashes): metadata JSON, evidence JSON, float16 tokens.

Tokens are kept as float16 (half the bytes; cosines move by < 1e-3). The field names are short
because they repeat in every record.
"""

from __future__ import annotations

import json

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.consolidate import Stored
from livesense.memory.evidence_codec import evidence_from_json, evidence_to_json
from livesense.records import SnippetRecord

META, TIER, EVIDENCE, TOKENS, CLIP, LEX = b"m", b"t", b"ev", b"tok", b"clip", b"lex"
FIELDS = (META, TIER, EVIDENCE, TOKENS, CLIP, LEX)


def _f16(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, np.float16).tobytes()


def pack_record(item: Stored) -> dict[bytes, bytes]:
    """The fields of one record (without CLIP when it has none)."""
    r = item.record
    clip = None if r.clip_tokens is None else np.asarray(r.clip_tokens, np.float32)
    meta = {
        "l": int(item.last_index),
        "s": float(r.start),
        "e": float(r.end),
        "w": None if r.wall is None else float(r.wall),
        "c": int(r.count),
        "sal": round(float(item.salience), 4),
        "mods": list(r.token_modalities),
        "times": [round(float(t), 3) for t in r.token_times],
        "cd": None if clip is None else int(clip.shape[-1]),
    }
    out = {
        META: json.dumps(meta, separators=(",", ":")).encode(),
        TIER: r.tier.encode(),
        EVIDENCE: evidence_to_json(r.evidence).encode(),
        TOKENS: _f16(r.tokens),
        LEX: item.lex.encode(),
    }
    if clip is not None:
        out[CLIP] = _f16(clip.reshape(-1, clip.shape[-1]))
    return out


def unpack_meta(raw: bytes) -> dict[str, object]:
    out: dict[str, object] = json.loads(raw)
    return out


def unpack_tokens(raw: bytes | None) -> np.ndarray:
    if not raw:
        return np.zeros((0, DIM), np.float32)
    return np.frombuffer(raw, np.float16).reshape(-1, DIM).astype(np.float32)


def unpack_record(stream: str, index: int, fields: dict[bytes, bytes]) -> Stored:
    """A Stored record from its fields (all of FIELDS that it has)."""
    meta = json.loads(fields[META])
    clip_raw = fields.get(CLIP)
    clip = None
    if clip_raw and meta.get("cd"):
        clip = np.frombuffer(clip_raw, np.float16).reshape(-1, int(meta["cd"])).astype(np.float32)
    record = SnippetRecord(
        stream=stream,
        index=int(index),
        start=float(meta["s"]),
        end=float(meta["e"]),
        tokens=unpack_tokens(fields.get(TOKENS)),
        token_modalities=[str(m) for m in meta.get("mods", [])],
        token_times=[float(t) for t in meta.get("times", [])],
        evidence=evidence_from_json(fields[EVIDENCE].decode()),
        wall=meta.get("w"),
        clip_tokens=clip,
        count=int(meta.get("c", 1)),
        tier=fields.get(TIER, b"recent").decode(),
    )
    return Stored(
        rid=int(index),
        record=record,
        last_index=int(meta["l"]),
        lex=fields.get(LEX, b"").decode(),
        salience=float(meta.get("sal", 0.0)),
    )

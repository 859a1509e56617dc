"""Checks every store runs on what it is given: records to store, time ranges to search."""

from __future__ import annotations

import numpy as np

from livesense.engines.text import DIM
from livesense.errors import LivesenseError, QueryError
from livesense.records import SnippetRecord


def check_record(record: SnippetRecord) -> np.ndarray:
    """The record's tokens as (K, DIM) float32 rows of unit length, or LivesenseError."""
    tokens = np.asarray(record.tokens, np.float32)
    if tokens.size == 0:
        tokens = np.zeros((0, DIM), np.float32)
    elif tokens.ndim == 1 and tokens.size == DIM:
        tokens = tokens[None, :]
    if tokens.ndim != 2 or tokens.shape[1] != DIM:
        raise LivesenseError(
            f"A record's tokens must be (K, {DIM}) vectors, not {tuple(tokens.shape)}."
        )
    if not np.isfinite(tokens).all():
        raise LivesenseError("A record's tokens contain NaN or infinite values.")
    if not (np.isfinite(record.start) and np.isfinite(record.end)) or record.end < record.start:
        raise LivesenseError(f"A record's time span {record.start}..{record.end} is invalid.")
    if int(record.index) < 0:
        raise LivesenseError(f"A record's index must not be negative ({record.index}).")
    norms = np.linalg.norm(tokens, axis=1, keepdims=True)
    return np.where(norms > 1e-12, tokens / np.maximum(norms, 1e-12), tokens)


def check_range(start: float | None, end: float | None) -> None:
    """QueryError unless the bounds are finite and in order."""
    for v in (start, end):
        if v is not None and not np.isfinite(v):
            raise QueryError("Time range bounds must be finite numbers of seconds.")
    if start is not None and end is not None and start > end:
        raise QueryError(f"The time range starts ({start}) after it ends ({end}).")

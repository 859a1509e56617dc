"""Which stored moments a query's time window takes: one rule for every store and index.

A moment spans [start, end) on its stream's clock; a window [start, end] (either side may be
open) takes the moments that end after its start, or start exactly there (a moment of no
length), and that start by its end.
"""

from __future__ import annotations

from typing import overload

import numpy as np


@overload
def in_window(
    rec_start: float, rec_end: float, start: float | None, end: float | None
) -> bool: ...


@overload
def in_window(
    rec_start: np.ndarray, rec_end: np.ndarray, start: float | None, end: float | None
) -> np.ndarray | bool: ...


def in_window(
    rec_start: float | np.ndarray,
    rec_end: float | np.ndarray,
    start: float | None,
    end: float | None,
) -> bool | np.ndarray:
    """Whether moments spanning [rec_start, rec_end) fall in the window [start, end] (None:
    no bound on that side); element-wise for arrays (True when there is no bound at all)."""
    ok: bool | np.ndarray = True
    if start is not None:
        ok = ok & ((rec_end > start) | (rec_start >= start))
    if end is not None:
        ok = ok & (rec_start <= end)
    return ok


def redis_window(start: float | None, end: float | None) -> list[str]:
    """The same window as RediSearch query clauses on numeric fields `start` and `end`."""
    where = []
    if start is not None:  # "ends after start, or starts there": cheaper than "starts after"
        a = repr(float(start))
        where.append(f"(@end:[({a} +inf] | @start:[{a} {a}])")
    if end is not None:
        where.append(f"@start:[-inf {float(end)!r}]")
    return where

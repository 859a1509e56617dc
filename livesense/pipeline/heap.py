"""Hands the C heap's free pages back to the system now and then.

Decoding, models and queries allocate and free large buffers from many threads; glibc's
malloc keeps what they free in per-thread arenas, so a long run's resident size creeps up
although what is in use stays flat. `trim_heap` asks malloc to return those free pages
(malloc_trim), at most once every TRIM_EVERY seconds whichever stream calls it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

TRIM_EVERY = 30.0
"""Seconds between two trims (a trim walks every arena: a few milliseconds)."""

_lock = threading.Lock()
_last = 0.0
_trim: Callable[[int], int] | None = None
_looked = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            _trim = ctypes.CDLL(None).malloc_trim  # glibc only
        except (AttributeError, OSError):
            _trim = None
    return _trim


def trim_heap(force: bool = False) -> bool:
    """Return free heap pages to the system unless that was done in the last TRIM_EVERY s
    (True when it ran). Blocking for a few milliseconds: call it off the event loop."""
    global _last
    trim = _malloc_trim()
    if trim is None:
        return False
    now = time.monotonic()
    with _lock:
        if not force and now - _last < TRIM_EVERY:
            return False
        _last = now
    trim(0)
    return True

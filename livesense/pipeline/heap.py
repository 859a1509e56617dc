"""Keeps the C heap from creeping up over a long run (glibc's malloc; elsewhere a no-op).

Decoding, models and queries allocate and free large buffers (frames, audio, model inputs)
from many threads. glibc serves a freed large buffer's successors from its heap once it has
raised its mmap threshold, and keeps what is freed in per-thread arenas, so a long run's
resident size creeps up although what is in use stays flat. `tune_heap` fixes the threshold
(buffers from MMAP_THRESHOLD up are mapped and unmapped: given back when freed) and caps the
arenas; `trim_heap` returns the heaps' free pages (malloc_trim), at most once every TRIM_EVERY
seconds whichever stream calls it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

TRIM_EVERY = 30.0
"""Seconds between two trims (a trim walks every arena: a few milliseconds)."""
MMAP_THRESHOLD = 256 * 1024
"""Buffers this large (bytes) or larger are mapped on their own (a 320x240 frame: 230 KB)."""
ARENA_MAX = 4
"""Heaps malloc may keep for threads (its default: 8 per core)."""
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_tuned = False

_lock = threading.Lock()
_last = 0.0
_trim: Callable[[int], int] | None = None
_looked = False


def tune_heap() -> bool:
    """Fix malloc's mmap threshold and cap its arenas, once per process (True if it did)."""
    global _tuned
    with _lock:
        if _tuned:
            return False
        _tuned = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_ARENA_MAX, ARENA_MAX)
    )


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

"""Writes a stream's moments to memory; when memory cannot be written (a full disk, a locked
or unreachable store) they wait in RAM, bounded, and are retried with exponential backoff."""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from collections import deque
from typing import Any

from prometheus_client import Counter, Gauge

from livesense.records import SnippetRecord

log = logging.getLogger("livesense.pipeline")

UNSAVED = Gauge("livesense_unsaved_moments", "Moments held in RAM, not yet written", ["stream"])
PERSIST_FAILURES = Counter(
    "livesense_persist_failures_total", "Memory writes that failed and were retried", ["stream"]
)
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EROFS}
_TRANSIENT_WORDS = ("disk is full", "no space left", "database is locked", "disk i/o error",
                    "quota", "connection", "timeout", "unreachable", "readonly database")


def transient(e: BaseException) -> bool:
    """Is this a write failure that may pass (full disk, lock, I/O, a store out of reach)?"""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _TRANSIENT_ERRNOS:
            return True
        if isinstance(cur, sqlite3.OperationalError):
            return True
        if isinstance(cur, ConnectionError | TimeoutError):
            return True
        text = str(cur).lower()
        if any(w in text for w in _TRANSIENT_WORDS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _reason(e: BaseException) -> str:
    text = str(e).strip() or e.__class__.__name__
    if "full" in text.lower() or (isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return "the disk is full"
    return text.rstrip(".")


class Persister:
    """`add` stores a record now or keeps it (in order) for a later retry; never loses silently."""

    def __init__(
        self,
        store: Any,
        stream: str,
        *,
        max_unsaved: int = 20000,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.store = store
        self.stream = stream
        self.max_unsaved = max_unsaved
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.pending: deque[tuple[SnippetRecord, bytes | None]] = deque()
        self.error: str | None = None  # why memory cannot be written now
        self.failures = 0
        self.dropped = 0  # moments lost because RAM held max_unsaved already
        self.written = 0
        self._delay = retry_initial
        self._next_try = 0.0

    @property
    def unsaved(self) -> int:
        return len(self.pending)

    def add(self, record: SnippetRecord, keyframe: bytes | None) -> bool:
        """Store `record` (after any held before it). True when it was written now."""
        self.retry()
        if not self.pending:
            try:
                self.store.add(record, keyframe)
            except Exception as e:
                if not transient(e):
                    raise
                self._failed(e)
            else:
                self.written += 1
                return True
        if len(self.pending) >= self.max_unsaved:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append((record, keyframe))
        UNSAVED.labels(self.stream).set(len(self.pending))
        return False

    def retry(self, *, now: float | None = None, force: bool = False) -> int:
        """Write what is held, if a retry is due (or forced); returns how many were written."""
        if not self.pending:
            return 0
        now = time.monotonic() if now is None else now
        if not force and now < self._next_try:
            return 0
        written = 0
        while self.pending:
            record, keyframe = self.pending[0]
            try:
                self.store.add(record, keyframe)
            except Exception as e:
                if not transient(e):
                    log.error("stream %s: moment %s cannot be stored: %s", self.stream,
                              record.index, e)
                    self.pending.popleft()
                    self.dropped += 1
                    continue
                self._failed(e)
                break
            self.pending.popleft()
            written += 1
            self.written += 1
        if not self.pending:
            if self.error is not None:
                log.warning("stream %s: memory is writable again; %d held moments written",
                            self.stream, written)
            self.error = None
            self._delay = self.retry_initial
        UNSAVED.labels(self.stream).set(len(self.pending))
        return written

    def flush(self, deadline: float) -> int:
        """Retry until all is written or `deadline` (monotonic) passes; returns what is left."""
        while self.pending:
            self.retry(force=True)
            if not self.pending or time.monotonic() + min(self._delay, 1.0) > deadline:
                break
            time.sleep(min(self._delay, 1.0))
        return len(self.pending)

    def _failed(self, e: BaseException) -> None:
        self.failures += 1
        PERSIST_FAILURES.labels(self.stream).inc()
        reason = _reason(e)
        if self.error is None:
            log.warning("stream %s: memory cannot be written (%s); holding moments in RAM",
                        self.stream, reason)
        self.error = reason
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self.retry_max, self._delay * 2)

"""Keeps a perception stage alive: a call that raises restarts the stage, and the stream goes on.

The snippet whose call failed is kept with that stage named in `features.skipped`. A stage
that keeps failing (more than `max_restarts` a minute) rests for `rest` seconds: it is
skipped meanwhile, then tried again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Counter

log = logging.getLogger("livesense.pipeline")

STAGE_FAILURES = Counter(
    "livesense_stage_failures_total", "Perception stage calls that raised", ["stream", "stage"]
)

S = TypeVar("S")
R = TypeVar("R")


class StageSupervisor(Generic[S]):
    """Owns one stage instance made by `factory`; `call` runs work on it, never raising."""

    def __init__(
        self,
        name: str,
        stream: str,
        factory: Callable[[], S],
        *,
        max_restarts: int = 5,
        rest: float = 60.0,
    ) -> None:
        self.name = name
        self.stream = stream
        self.factory = factory
        self.max_restarts = max_restarts
        self.rest = rest
        self.stage: S = factory()
        self.failures = 0
        self.restarts = 0
        self.skipped = 0  # calls skipped while the stage rested
        self.last_error: str | None = None
        self._recent: deque[float] = deque()
        self._resting_until = 0.0
        self._lock = threading.Lock()

    @property
    def resting(self) -> bool:
        return time.monotonic() < self._resting_until

    def call(self, work: Callable[[S], R], fallback: Callable[[S], R]) -> R:
        """`work(stage)`; if it raises, the stage restarts and `fallback(old stage)` is returned."""
        with self._lock:
            if self.resting:
                self.skipped += 1
                return fallback(self.stage)
            stage = self.stage
            try:
                return work(stage)
            except Exception as e:
                self._failed(e)
                return fallback(stage)

    def _failed(self, e: Exception) -> None:
        self.failures += 1
        STAGE_FAILURES.labels(self.stream, self.name).inc()
        self.last_error = f"{e.__class__.__name__}: {e}"[:300]
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60.0:
            self._recent.popleft()
        log.warning(
            "stream %s: the %s stage failed (%s); restarting it",
            self.stream,
            self.name,
            self.last_error,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        if len(self._recent) > self.max_restarts:
            self._resting_until = now + self.rest
            log.warning(
                "stream %s: the %s stage failed %d times in a minute; skipping it for %g s",
                self.stream,
                self.name,
                len(self._recent),
                self.rest,
            )
            self._recent.clear()
        try:
            self.stage = self.factory()
            self.restarts += 1
        except Exception as err:  # cannot even rebuild it: rest, keep the old instance
            self._resting_until = now + self.rest
            log.warning("stream %s: the %s stage cannot restart: %s", self.stream, self.name, err)

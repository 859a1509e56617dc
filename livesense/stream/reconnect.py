"""A live source that survives drops: it reopens its URL with exponential backoff and keeps one
stream clock, marking each outage as a Gap from the last media before it to the first after."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from livesense.errors import LivesenseError
from livesense.records import AUDIO_RATE, AudioChunk, EndOfStream, Gap
from livesense.stream.counters import SourceCounters
from livesense.stream.handoff import Item
from livesense.stream.source import Source

log = logging.getLogger(__name__)

RECONNECTS = Counter("livesense_reconnects_total", "Live sources reopened after a drop")
RECONNECT_FAILURES = Counter(
    "livesense_reconnect_failures_total", "Attempts to reopen a dropped live source that failed"
)


@dataclass(slots=True)
class Outage:
    """One drop: stream time it began and ended (None while it lasts), and why it began."""

    start: float
    end: float | None
    reason: str | None
    attempts: int = 0

    def describe(self) -> str:
        """Why media is missing, for the gap marker in memory."""
        why = (self.reason or "the stream ended").rstrip(".")
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        return f"the source dropped ({why}) and was reconnected after {tries}"


class ReconnectingSource:
    """A stream.source.Source wrapping an open live source and `opener`, which opens the same
    URL again when it drops."""

    live = True
    duration: float | None = None

    def __init__(
        self,
        first: Source,
        opener: Callable[[], Source],
        *,
        initial: float = 0.5,
        maximum: float = 30.0,
        attempts: int = 0,
        jitter: float = 0.1,
    ) -> None:
        self.url = first.url
        self.shown = first.shown
        self.has_video = first.has_video
        self.has_audio = first.has_audio
        self.wall_anchor: float | None = None
        self.end_reason: str | None = None
        self.limit_reason: str | None = None
        self.initial = initial
        self.maximum = maximum
        self.max_attempts = attempts
        self.jitter = jitter
        self.current = first
        self.outages: deque[Outage] = deque(maxlen=100)
        self.attempt_times: deque[float] = deque(maxlen=100)  # monotonic, for tests and status
        self._opener = opener
        self._past = SourceCounters()  # the connections that ended
        self._retired: Source | None = None  # the last of them (current until one reopens)
        self._own = SourceCounters()  # gaps (outages included) and reconnects, counted here
        self._started = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"ReconnectingSource({self.shown!r}, reconnects={self._own.reconnects})"

    @property
    def counters(self) -> SourceCounters:
        """The counts of every connection so far added up (a snapshot); gaps are this
        stream's, outages included."""
        ended = self.current is self._retired
        total = self._past if ended else self._past.plus(self.current.counters)
        return dataclasses.replace(total, gaps=self._own.gaps, reconnects=self._own.reconnects)

    def stats(self) -> dict[str, float | int]:
        return self.counters.as_json()

    async def items(self) -> AsyncIterator[Item]:
        """Items of every connection in turn on one clock, a Gap across each outage."""
        if self._started:
            raise LivesenseError(f"The source {self.shown} is already being read.")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        offset = 0.0  # added to the times of the current connection
        reached = 0.0  # stream time up to which media came
        outage: Outage | None = None
        try:
            while True:
                source = self.current
                reason: str | None = None
                async for item in source.items():
                    if isinstance(item, EndOfStream):
                        reason = item.reason
                        break
                    if outage is not None:  # first media after a reconnect: close the gap
                        offset = self._resume_offset(source, reached, outage)
                        outage.end = offset
                        self._own.gaps += 1
                        yield Gap(outage.start, offset, outage.describe())
                        reached = offset
                        outage = None
                    if self.wall_anchor is None and source.wall_anchor is not None:
                        self.wall_anchor = source.wall_anchor
                    if isinstance(item, Gap):
                        item = Gap(item.start + offset, item.end + offset, item.reason)
                        self._own.gaps += 1
                    else:
                        item.t += offset
                        end = item.t
                        if isinstance(item, AudioChunk):
                            end += len(item.samples) / AUDIO_RATE
                        reached = max(reached, end)
                    yield item
                self._retire(source)
                if self._closed:
                    yield EndOfStream(None)
                    return
                if source.limit_reason is not None:  # a media limit: reconnecting won't help
                    yield EndOfStream(source.limit_reason)
                    return
                if outage is None:
                    outage = Outage(reached, None, reason)
                    self.outages.append(outage)
                    log.warning("%s dropped at %.1f s (%s); reconnecting", self.shown, reached,
                                reason or "the stream ended")
                fresh, failure = await self._reopen(outage)
                if fresh is None:
                    yield EndOfStream(failure)
                    return
                self.current = fresh
                self._own.reconnects += 1
                RECONNECTS.inc()
        finally:
            self.close()

    def _resume_offset(self, source: Source, reached: float, outage: Outage) -> float:
        """Where the new connection's time 0 lies on this stream's clock (never before `reached`).

        With wall clocks on both sides, the outage lasts as long as it did in real time."""
        if self.wall_anchor is not None and source.wall_anchor is not None:
            return max(reached, source.wall_anchor - self.wall_anchor)
        return reached

    def _retire(self, source: Source) -> None:
        self._past = self._past.plus(source.counters)
        self._retired = source
        source.close()

    async def _reopen(self, outage: Outage) -> tuple[Source | None, str | None]:
        """Open the URL again, waiting initial, 2x, 4x ... (at most `maximum`) between tries."""
        delay = self.initial
        failures = 0
        last = outage.reason
        while not self._closed:
            wait = delay * (1.0 + random.uniform(-self.jitter, self.jitter))
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if self._closed:
                break
            self.attempt_times.append(time.monotonic())
            outage.attempts += 1
            try:
                fresh = await asyncio.to_thread(self._opener)
            except LivesenseError as e:
                failures += 1
                RECONNECT_FAILURES.inc()
                last = str(e)
                log.info("%s: reconnect %d failed: %s", self.shown, failures, e)
                if self.max_attempts and failures >= self.max_attempts:
                    return None, (
                        f"{self.shown} dropped and could not be reopened after {failures} "
                        f"attempts: {last}"
                    )
                delay = min(self.maximum, delay * 2)
                continue
            if self._closed:
                fresh.close()
                break
            log.warning("%s: reconnected after %d attempts", self.shown, outage.attempts)
            return fresh, None
        return None, None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.current.close()
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(self._wake.set)

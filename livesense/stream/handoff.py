"""Bounded hand-over of decoded items from a decode thread to the asyncio event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from livesense.drop_policy import DropPolicy
from livesense.records import AudioChunk, EndOfStream, Gap, VideoFrame
from livesense.stream.counters import SourceCounters

Item = VideoFrame | AudioChunk | Gap | EndOfStream


class Handoff:
    """A bounded queue written by one thread and read by coroutines on one event loop.

    WAIT (files): the writer blocks while the queue is full, nothing is lost.
    DROP_OLDEST (live): the writer never blocks; when full, the oldest video frame goes
    first, then (with no video queued) the oldest audio chunk. Every drop is counted in
    `counters` (the source's, when given). Gaps and end-of-stream are never dropped.
    """

    POLICIES = (DropPolicy.WAIT, DropPolicy.DROP_OLDEST)

    def __init__(
        self,
        maxsize: int,
        loop: asyncio.AbstractEventLoop,
        policy: str = DropPolicy.WAIT,
        counters: SourceCounters | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("Handoff needs room for at least one item")
        drop = DropPolicy.named(policy)
        if drop not in self.POLICIES:
            raise ValueError(f"a media handoff cannot use the drop policy {drop.value!r}")
        self.maxsize = maxsize
        self.policy = drop
        self.counters = counters if counters is not None else SourceCounters()
        self._loop = loop
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def drops(self) -> int:
        return self.counters.drops

    @property
    def video_drops(self) -> int:
        return self.counters.video_drops

    @property
    def audio_drops(self) -> int:
        return self.counters.audio_drops

    def qsize(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> bool:
        """Hand an item over (writer thread). False when the handoff was closed."""
        with self._cond:
            if self.policy is DropPolicy.WAIT:
                while len(self._items) >= self.maxsize and not self._closed:
                    self._cond.wait(0.1)
            elif len(self._items) >= self.maxsize and not self._make_room(item):
                return not self._closed  # the item itself was the one dropped
            if self._closed:
                return False
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                with self._cond:
                    self._closed = True
                return False
        return True

    def _make_room(self, item: Item) -> bool:
        """Drop one item to make room (lock held). False when `item` itself is dropped."""
        for i, queued in enumerate(self._items):
            if isinstance(queued, VideoFrame):
                del self._items[i]
                self.counters.video_drops += 1
                return True
        if isinstance(item, VideoFrame):
            self.counters.video_drops += 1
            return False
        for i, queued in enumerate(self._items):
            if isinstance(queued, AudioChunk):
                del self._items[i]
                self.counters.audio_drops += 1
                return True
        if isinstance(item, AudioChunk):
            self.counters.audio_drops += 1
            return False
        return True  # only control items queued: let this one through

    async def get(self) -> Item:
        """The next item (event loop side); waits without blocking the loop."""
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify()
                    return item
                if self._closed:
                    return EndOfStream()
                waiter = self._loop.create_future()
                self._waiter = waiter
            await waiter

    async def relay(self, anchor: Callable[[], float | None]) -> AsyncIterator[Item]:
        """The items up to EndOfStream (included). With the wall clock at stream time 0
        known (`anchor()`), `counters.lag` follows how late each frame or chunk is."""
        while True:
            item = await self.get()
            if isinstance(item, VideoFrame | AudioChunk) and (zero := anchor()) is not None:
                self.counters.lag = time.time() - (zero + item.t)
            yield item
            if isinstance(item, EndOfStream):
                return

    def close(self) -> None:
        """Wake a blocked writer and a waiting reader; further puts fail."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop has no reader left
                self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

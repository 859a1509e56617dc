"""A blocking reader run in a worker thread, its items handed to the event loop in order.

The PyAV and the capture-device sources read media with blocking calls; DecodeThread runs
such a reader off the loop, hands what it emits over through a bounded Handoff and ends the
stream with one EndOfStream that says why (None: the media simply ended).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable

from livesense.drop_policy import DropPolicy
from livesense.errors import SourceError
from livesense.records import EndOfStream
from livesense.stream.counters import SourceCounters
from livesense.stream.handoff import Handoff, Item

log = logging.getLogger(__name__)


def sentence(text: str) -> str:
    """`text` as one sentence: one line, a capital first letter and a full stop."""
    text = " ".join(str(text).split()).strip()
    if not text:
        return "Unknown error."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


class DecodeThread:
    """Runs `read` in a thread once `items()` is iterated; `release` frees what it reads from.

    `read` emits items with `emit` (False: stop reading) and returns why the media ended
    early, or None. A live source's queue drops the oldest video first; a file's waits.
    """

    def __init__(
        self,
        shown: str,
        *,
        live: bool,
        queue_size: int,
        counters: SourceCounters,
        read: Callable[[], str | None],
        release: Callable[[], None],
        what: str = "Decoding",
    ) -> None:
        self.shown = shown
        self.live = live
        self.queue_size = queue_size
        self.counters = counters
        self.stop = threading.Event()
        self.end_reason: str | None = None
        self.wall_anchor: float | None = None  # set by the reader with the first item
        self._read = read
        self._release = release
        self._what = what
        self._handoff: Handoff | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return self._handoff.qsize() if self._handoff is not None else 0

    def emit(self, item: Item) -> bool:
        """Hand an item over (reader thread); False once nobody reads any more."""
        if self.stop.is_set() or self._handoff is None:
            return False
        if not self._handoff.put(item):
            self.stop.set()
            return False
        return True

    async def items(self) -> AsyncIterator[Item]:
        """What the reader emits, in order; the last one is EndOfStream. Read once."""
        if self._started:
            raise SourceError(f"The source {self.shown} is already being read.")
        self._started = True
        if self._closed:
            yield EndOfStream("The source was closed before it was read.")
            return
        policy = DropPolicy.DROP_OLDEST if self.live else DropPolicy.WAIT
        handoff = Handoff(self.queue_size, asyncio.get_running_loop(), policy, self.counters)
        self._handoff = handoff
        self._thread = threading.Thread(target=self._run, name=f"read {self.shown}", daemon=True)
        self._thread.start()
        try:
            async for item in handoff.relay(lambda: self.wall_anchor if self.live else None):
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading; what was opened is freed now, or by the thread within one read."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        if self._handoff is not None:
            self._handoff.close()
        if self._thread is None:
            self._release()

    def _run(self) -> None:
        reason: str | None = None
        try:
            reason = self._read()
        except Exception as e:  # the thread must end with a reason, never a traceback
            log.exception("reading %s failed", self.shown)
            reason = f"{self._what} stopped on an unexpected error: {sentence(str(e))}"
        finally:
            try:
                self._release()
            except Exception:  # freeing a broken container must not hide the real reason
                log.debug("closing %s failed", self.shown, exc_info=True)
        self.end_reason = reason
        if not self.stop.is_set() and self._handoff is not None:
            self._handoff.put(EndOfStream(reason))


class ThreadFed:
    """The Source members of a source read by a DecodeThread (`_feed`): the PyAV and
    capture-device sources share them (the rest of Source each defines itself)."""

    _feed: DecodeThread

    @property
    def wall_anchor(self) -> float | None:
        """Wall clock (Unix s) at stream time 0, known with the first item of a live or
        paced source."""
        return self._feed.wall_anchor

    @property
    def end_reason(self) -> str | None:
        return self._feed.end_reason

    @property
    def queue_depth(self) -> int:
        return self._feed.queue_depth

    def items(self) -> AsyncIterator[Item]:
        """The items in stream order; the last one is EndOfStream. Read once."""
        return self._feed.items()

    def close(self) -> None:
        """Stop reading and release the media (the thread finishes within one read)."""
        self._feed.close()

"""Cross-stream dynamic batching: one model instance, requests of every stream, full batches.

Callers (one worker thread per stream) submit items and wait for their results; one worker
thread per model gathers items into a batch of up to `max_batch` and runs it. Fairness: a
batch is filled round-robin, one item per stream per turn, starting with a different stream
each time, so a busy stream gets no more than its share while others wait. Waiting: once an
item is queued (and the last batch has ended) the worker waits at most `max_delay` for more,
and not at all when every stream seen lately already has an item queued; a lone stream runs
its items on its own thread (no hand-off, no delay). With `max_delay=None` the wait adapts
to the model: a tenth of its recent batch time (AUTO_DELAY bounds), so slow CPU models fill
their batches and fast GPU engines are not held up. Backpressure: the queue is bounded per
stream and in total; a full queue makes the caller wait (WAIT) or drops the oldest queued
request of the busiest stream (DROP_OLDEST) or the new one (DROP_NEWEST), as the pipeline's
queues do; every drop is counted. Buckets: with a `key` (an item's bucket: its padded shape),
a batch holds items of one key only, the key of the item whose turn it is, so that a batch
runs at one shape; a stream's items keep their order within each key."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from livesense.drop_policy import DropPolicy
from livesense.engines.engine import EngineError

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

AUTO_DELAY = (0.001, 0.05)
"""Bounds (s) of the adaptive gathering delay: a tenth of the recent batch time, clamped."""


class BatchDroppedError(EngineError):
    """The request was dropped by a full batch queue (live overload), or the batcher closed."""


@dataclass(eq=False)
class _Request(Generic[I, O]):
    items: Sequence[I]
    stream: Hashable
    arrived: float
    future: Future[list[O]] = field(default_factory=Future)
    results: list[Any] = field(default_factory=list)
    next: int = 0  # first item not yet handed to a batch
    remaining: int = 0  # items without a result yet
    failed: bool = False
    order: list[int] = field(default_factory=list)  # items in the order they are handed out
    keys: list[Hashable] = field(default_factory=list)  # each item's bucket (with a key)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)
        self.remaining = len(self.items)
        if not self.order:
            self.order = list(range(len(self.items)))


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0
    items: int = 0
    drops: int = 0
    failures: int = 0
    max_queued: int = 0
    inline: int = 0  # batches a lone stream ran on its own thread
    seconds: float = 0.0  # inside run_batch
    served: dict[str, int] = field(default_factory=dict)  # items per stream

    def as_json(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "drops": self.drops,
            "failures": self.failures,
            "max_queued": self.max_queued,
            "inline": self.inline,
            "seconds": round(self.seconds, 4),
        }


class Batcher(Generic[I, O]):
    """Gathers items of all streams into batches for `run_batch(items) -> results`."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[I]], Sequence[O]],
        *,
        max_batch: int = 16,
        max_delay: float | None = 0.002,
        queue_size: int = 256,
        stream_queue: int = 64,
        policy: str = DropPolicy.WAIT,
        active_window: float | None = None,
        key: Callable[[I], Hashable] | None = None,
    ) -> None:
        drop = DropPolicy.named(policy)
        if max_batch < 1 or queue_size < 1 or stream_queue < 1:
            raise ValueError("batch and queue sizes must be >= 1")
        self.name = name
        self.run_batch = run_batch
        self.key = key
        self.max_batch = max_batch
        self.max_delay = None if max_delay is None else max(0.0, max_delay)
        self._batch_time = 0.0  # moving average of run_batch's seconds
        self._free_at = 0.0  # when the worker's last batch ended
        self.queue_size = queue_size
        self.stream_queue = stream_queue
        self.policy = drop
        self.active_window = (
            active_window
            if active_window is not None
            else max(0.2, 50 * (self.max_delay if self.max_delay is not None else AUTO_DELAY[1]))
        )
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._queues: dict[Hashable, deque[_Request[I, O]]] = {}
        self._pending: dict[Hashable, int] = {}  # items not yet in a batch, per stream
        self._ring: deque[Hashable] = deque()  # streams with pending items, in serving order
        self._seen: dict[Hashable, float] = {}
        self._total = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- callers ----------------------------------------------------------------------------

    def __call__(self, items: Sequence[I], stream: Hashable | None = None) -> list[O]:
        """Submit and wait: the results of `items`, in order.

        A stream that is alone (no other stream seen within the active window, nothing
        queued) runs its items on its own thread: no hand-off to the worker, no delay.
        """
        key: Hashable = stream if stream is not None else threading.get_ident()
        if items and self._alone(key):
            return self._run_inline(list(items))
        return self.submit(items, key).result()

    def _alone(self, key: Hashable) -> bool:
        with self._cond:
            self._check_open()
            now = time.perf_counter()
            self._seen[key] = now
            self._all_waiting(now)  # forgets streams not seen lately
            return self._total == 0 and all(k == key for k in self._seen)

    def _run_inline(self, items: list[I]) -> list[O]:
        if self.key is not None:  # one run per bucket, results back in the callers' order
            out_of: list[Any] = [None] * len(items)
            for group in groups([self.key(x) for x in items]):
                for i, r in zip(group, self._run_chunks([items[i] for i in group]), strict=True):
                    out_of[i] = r
            return out_of
        return self._run_chunks(items)

    def _run_chunks(self, items: list[I]) -> list[O]:
        out: list[O] = []
        for i in range(0, len(items), self.max_batch):
            chunk = items[i : i + self.max_batch]
            t0 = time.perf_counter()
            try:
                results = list(self.run_batch(chunk))
            except Exception:
                with self._cond:
                    self.stats.failures += 1
                raise
            if len(results) != len(chunk):
                raise EngineError(
                    f"{self.name}: a batch of {len(chunk)} gave {len(results)} results."
                )
            with self._cond:
                self._timed(time.perf_counter() - t0)
                self.stats.batches += 1
                self.stats.items += len(chunk)
                self.stats.inline += 1
            out.extend(results)
        return out

    def submit(
        self, items: Sequence[I], stream: Hashable | None = None, timeout: float | None = None
    ) -> Future[list[O]]:
        """Queue `items` of `stream` (default: the calling thread); a future of their results.

        Under WAIT a full queue blocks the caller (up to `timeout`, then BatchDroppedError);
        under the drop policies the future of a dropped request fails with BatchDroppedError.
        """
        key: Hashable = stream if stream is not None else threading.get_ident()
        request: _Request[I, O] = _Request(list(items), key, time.perf_counter())
        if self.key is not None and request.items:
            request.keys = [self.key(x) for x in request.items]
            request.order = [i for g in groups(request.keys) for i in g]
        if not request.items:
            request.future.set_result([])
            return request.future
        n = len(request.items)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._check_open()
            self._seen[key] = time.perf_counter()
            while not self._fits(key, n):
                if self.policy is DropPolicy.DROP_NEWEST:
                    self.stats.drops += n
                    request.future.set_exception(self._dropped())
                    return request.future
                if self.policy is DropPolicy.DROP_OLDEST and self._drop_oldest(key):
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.stats.drops += n
                    raise BatchDroppedError(
                        f"The {self.name} batch queue stayed full for {timeout} s."
                    )
                self._cond.wait(left)
                self._check_open()
            self._enqueue(request)
            self._cond.notify_all()
        return request.future

    def close(self) -> None:
        """Stop the worker; requests still queued fail with BatchDroppedError."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        with self._cond:
            for q in self._queues.values():
                for req in q:
                    if not req.future.done():
                        req.future.set_exception(
                            BatchDroppedError(f"The {self.name} batcher was closed.")
                        )
            self._queues.clear()
            self._ring.clear()
            self._pending.clear()
            self._total = 0

    @property
    def delay(self) -> float:
        """The gathering delay now (s): max_delay, or the adaptive one."""
        if self.max_delay is not None:
            return self.max_delay
        low, high = AUTO_DELAY
        return min(high, max(low, 0.1 * self._batch_time))

    def _timed(self, seconds: float) -> None:
        self.stats.seconds += seconds
        a = self._batch_time
        self._batch_time = seconds if a == 0.0 else 0.8 * a + 0.2 * seconds

    @property
    def queued(self) -> int:
        """Items waiting for a batch, all streams."""
        return self._total

    # -- queue ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BatchDroppedError(f"The {self.name} batcher is closed.")

    def _dropped(self) -> BatchDroppedError:
        return BatchDroppedError(f"The {self.name} batch queue was full: the request was dropped.")

    def _fits(self, key: Hashable, n: int) -> bool:
        mine = self._pending.get(key, 0)
        stream_ok = mine == 0 or mine + n <= self.stream_queue
        total_ok = self._total == 0 or self._total + n <= self.queue_size
        return stream_ok and total_ok

    def _enqueue(self, request: _Request[I, O]) -> None:
        key = request.stream
        q = self._queues.setdefault(key, deque())
        q.append(request)
        if self._pending.get(key, 0) == 0:
            self._ring.append(key)
        self._pending[key] = self._pending.get(key, 0) + len(request.items)
        self._total += len(request.items)
        self.stats.max_queued = max(self.stats.max_queued, self._total)

    def _drop_oldest(self, key: Hashable) -> bool:
        """Drop the oldest untouched request of this stream (if over its share) or the busiest."""
        mine = self._pending.get(key, 0)
        if mine and mine + 1 > self.stream_queue:
            victim = key
        elif self._pending:
            victim = max(self._pending, key=lambda k: self._pending[k])
        else:
            return False
        q = self._queues.get(victim)
        if not q:
            return False
        for req in q:
            if req.next == 0:  # nothing of it is in a batch yet
                q.remove(req)
                n = len(req.items)
                self._pending[victim] -= n
                self._total -= n
                if self._pending[victim] == 0:
                    self._ring.remove(victim)
                    del self._pending[victim]
                    if not q:
                        del self._queues[victim]
                self.stats.drops += n
                req.future.set_exception(self._dropped())
                return True
        return False

    def _all_waiting(self, now: float) -> bool:
        """Every stream seen within the active window has an item queued."""
        stale = [k for k, t in self._seen.items() if now - t > self.active_window]
        for k in stale:
            del self._seen[k]
        return all(k in self._pending for k in self._seen)

    def _gather(self) -> list[tuple[_Request[I, O], int]]:
        if self.key is not None:
            return self._gather_bucket()
        batch: list[tuple[_Request[I, O], int]] = []
        while len(batch) < self.max_batch and self._ring:
            key = self._ring[0]
            q = self._queues[key]
            req = q[0]
            batch.append((req, req.next))
            req.next += 1
            if req.next == len(req.items):
                q.popleft()
            self._pending[key] -= 1
            self._total -= 1
            if self._pending[key] == 0:
                self._ring.popleft()
                del self._pending[key]
                if not q:
                    del self._queues[key]
            else:
                self._ring.rotate(-1)
        return batch

    def _gather_bucket(self) -> list[tuple[_Request[I, O], int]]:
        """Round-robin like `_gather`, over the items of one bucket: the head stream's next."""
        batch: list[tuple[_Request[I, O], int]] = []
        head = self._queues[self._ring[0]][0]
        bucket_key = head.keys[head.order[head.next]]
        skipped = 0  # streams in a row whose next item is of another bucket
        while len(batch) < self.max_batch and self._ring and skipped < len(self._ring):
            stream = self._ring[0]
            q = self._queues[stream]
            req = q[0]
            index = req.order[req.next]
            if req.keys[index] != bucket_key:
                self._ring.rotate(-1)
                skipped += 1
                continue
            skipped = 0
            batch.append((req, index))
            req.next += 1
            if req.next == len(req.items):
                q.popleft()
            self._pending[stream] -= 1
            self._total -= 1
            if self._pending[stream] == 0:
                self._ring.popleft()
                del self._pending[stream]
                if not q:
                    del self._queues[stream]
            else:
                self._ring.rotate(-1)
        return batch

    # -- worker -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._total == 0:
                    self._cond.wait()
                if self._closed:
                    return
                # Wait from the later of the oldest item's arrival and the end of the last
                # batch: items that queued during a run may still be joined by stragglers.
                oldest = min(self._queues[k][0].arrived for k in self._ring)
                deadline = max(oldest, self._free_at) + self.delay
                while not self._closed and self._total < self.max_batch:
                    now = time.perf_counter()
                    if now >= deadline or self._all_waiting(now):
                        break
                    self._cond.wait(deadline - now)
                if self._closed:
                    return
                batch = self._gather()
                self._cond.notify_all()  # room for waiting submitters
            if batch:
                self._dispatch(batch)
                self._free_at = time.perf_counter()

    def _dispatch(self, batch: list[tuple[_Request[I, O], int]]) -> None:
        live = [(req, i) for req, i in batch if not req.failed]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            outputs = list(self.run_batch([req.items[i] for req, i in live]))
            if len(outputs) != len(live):
                raise EngineError(
                    f"{self.name}: a batch of {len(live)} gave {len(outputs)} results."
                )
        except Exception as e:
            self._timed(time.perf_counter() - t0)
            self._retry_alone(live, e)
            return
        self._timed(time.perf_counter() - t0)
        self.stats.batches += 1
        self.stats.items += len(live)
        for (req, i), out in zip(live, outputs, strict=True):
            self._deliver(req, i, out)

    def _retry_alone(self, live: list[tuple[_Request[I, O], int]], error: Exception) -> None:
        """A failed batch is rerun request by request, so one bad input fails only its caller."""
        by_request: dict[int, list[tuple[_Request[I, O], int]]] = {}
        for req, i in live:
            by_request.setdefault(id(req), []).append((req, i))
        if len(by_request) == 1:
            self._fail(live[0][0], error)
            return
        for parts in by_request.values():
            req = parts[0][0]
            try:
                outputs = list(self.run_batch([req.items[i] for _, i in parts]))
            except Exception as e:
                self._fail(req, e)
                continue
            self.stats.batches += 1
            self.stats.items += len(parts)
            for (_, i), out in zip(parts, outputs, strict=False):
                self._deliver(req, i, out)

    def _deliver(self, req: _Request[I, O], index: int, out: O) -> None:
        req.results[index] = out
        req.remaining -= 1
        name = str(req.stream)
        if name not in self.stats.served and len(self.stats.served) >= 4096:
            self.stats.served.clear()  # bounded: thread ids come and go
        self.stats.served[name] = self.stats.served.get(name, 0) + 1
        if req.remaining == 0 and not req.future.done():
            req.future.set_result(req.results)

    def _fail(self, req: _Request[I, O], error: Exception) -> None:
        self.stats.failures += 1
        req.failed = True
        if not req.future.done():
            req.future.set_exception(error)


def bucket(n: int, edges: Sequence[int]) -> int:
    """The smallest edge >= n (n itself beyond the last edge): lengths padded per bucket."""
    for edge in edges:
        if n <= edge:
            return edge
    return n


def groups(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, groups in order of first appearance."""
    out: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return list(out.values())

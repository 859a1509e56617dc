"""Standing queries: each new moment is scored against every subscription as it is stored.

A subscription embeds its query once; `publish` (called from the writer thread) scores the
new record with the hybrid formula of memory.search (dense max over its tokens, lexical match
on its evidence text in Python, no database) and hands matching hits to the subscriber's event
loop. Each subscriber has a bounded queue that drops its oldest hit when full, and counts it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque

import numpy as np

from livesense.engines.text import TextEmbedder, shared_text_embedder
from livesense.errors import QueryError
from livesense.memory.lexical import Term, match_terms, normalise, query_terms, searchable_text
from livesense.memory.search import check_query, check_stream, hybrid_score
from livesense.records import Hit, SnippetRecord

WATCH_THRESHOLD = 0.33
"""Default score a new moment needs to be pushed: the query's words (even glued into on-screen
text), or a close paraphrase; unrelated moments score below 0.1."""

_ids = itertools.count(1)


class WatchQueue(asyncio.Queue[Hit]):
    """The subscriber's queue; the first `get` binds the subscription to the caller's loop
    when it was made outside one (e.g. in a worker thread)."""

    def __init__(self, sub: Subscription, maxsize: int) -> None:
        super().__init__(maxsize)
        self._sub = sub

    async def get(self) -> Hit:
        self._sub._bind(asyncio.get_running_loop())
        return await super().get()


class Subscription:
    """One standing query; hits arrive on `queue`, `drops` counts those pushed out."""

    def __init__(
        self,
        query: str,
        vector: np.ndarray,
        *,
        stream: str | None,
        threshold: float,
        maxsize: int,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.id = next(_ids)
        self.query = query
        self.vector = vector
        self.terms: list[Term] = query_terms(query)
        self.stream = stream
        self.threshold = threshold
        self.queue: WatchQueue = WatchQueue(self, maxsize)
        self.drops = 0
        self.delivered = 0
        self.active = True
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: deque[Hit] = deque()  # hits that came before a loop was known

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._loop is not None:
                return
            self._loop = loop
            pending = list(self._pending)
            self._pending.clear()
        for hit in pending:
            self._put(hit)

    def _offer(self, hit: Hit) -> None:
        """From any thread: hand the hit to the subscriber's loop."""
        with self._lock:
            loop = self._loop
            if loop is None:
                if len(self._pending) >= max(1, self.queue.maxsize):
                    self._pending.popleft()
                    self.drops += 1
                self._pending.append(hit)
                return
        try:
            loop.call_soon_threadsafe(self._put, hit)
        except RuntimeError:  # the loop is closed: the subscriber is gone
            self.active = False

    def _put(self, hit: Hit) -> None:
        """On the subscriber's loop: enqueue, dropping the oldest hit when full."""
        if self.queue.full():
            self.queue.get_nowait()
            self.drops += 1
        self.queue.put_nowait(hit)
        self.delivered += 1

    def __repr__(self) -> str:
        return f"Subscription({self.id}, {self.query!r}, stream={self.stream!r})"


class WatchHub:
    """All standing queries of a process; `publish` runs once per stored moment."""

    def __init__(self, embedder: TextEmbedder | None = None) -> None:
        self._embedder = embedder
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = shared_text_embedder()
        return self._embedder

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(
        self,
        query: str,
        *,
        stream: str | None = None,
        threshold: float | None = None,
        maxsize: int = 64,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Subscription:
        """A standing query. Hits go to the given loop, the running one, or the loop that
        first awaits `queue.get()`. Embeds the query (blocking, a few ms)."""
        q = check_query(query)
        if stream is not None:
            check_stream(stream)
        if maxsize < 1:
            raise QueryError("A watch queue must hold at least one hit.")
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        vector = self.embedder.embed([q])[0]
        sub = Subscription(
            q,
            vector,
            stream=stream,
            threshold=WATCH_THRESHOLD if threshold is None else float(threshold),
            maxsize=maxsize,
            loop=loop,
        )
        with self._lock:
            self._subs = [*self._subs, sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.active = False
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    def score(self, sub: Subscription, record: SnippetRecord, norm: str | None = None) -> float:
        """The hybrid score of a record for one subscription (memory.search, uniform idf)."""
        if norm is None:
            norm = normalise(searchable_text(record.evidence))
        dense = float((record.tokens @ sub.vector).max()) if len(record.tokens) else 0.0
        coverage, every = match_terms(sub.terms, norm)
        return hybrid_score(dense, coverage, every)

    def publish(self, record: SnippetRecord) -> None:
        """Score a newly stored record against every subscription; thread-safe."""
        subs = self._subs  # replaced, never mutated: no lock needed to read
        subs = [s for s in subs if s.stream is None or s.stream == record.stream]
        if not subs:
            return
        norm = normalise(searchable_text(record.evidence))
        tokens = np.asarray(record.tokens, np.float32)
        if len(tokens):
            dense = (np.stack([s.vector for s in subs]) @ tokens.T).max(axis=1)
        else:
            dense = np.zeros(len(subs), np.float32)
        gone: list[Subscription] = []
        for sub, d in zip(subs, dense, strict=True):
            coverage, every = match_terms(sub.terms, norm)
            score = hybrid_score(float(d), coverage, every)
            if score < sub.threshold:
                continue
            hit = Hit(
                stream=record.stream,
                start=record.start,
                end=record.end,
                score=score,
                evidence=record.evidence,
                index=record.index,
            )
            sub._offer(hit)
            if not sub.active:
                gone.append(sub)
        for sub in gone:
            self.unsubscribe(sub)

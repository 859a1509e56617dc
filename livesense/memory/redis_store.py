"""RedisStore: the rolling memory of all streams in Redis, shared by many processes and machines.

Writing: one process ingests a stream at a time; it holds the stream's lease (redis.leases) and
keeps the stream's tiers (memory.tiers) in memory. Each new snippet becomes a TierPlan that the
writer (redis.writer) buffers and applies atomically in the stream's slot; a full buffer makes
`add` wait, and while Redis is unreachable writes wait there and are retried.

Reading: every process that answers queries keeps a LocalIndex (dense + lexical) that the
follower (redis.follower) keeps in sync with each stream's change log, and tells this process's
standing queries (watch) of new moments, whichever process wrote them.

Vector search: where the server has a query engine, records also carry their vectors in its
index (redis.vectors); `vector_search` (and health()) says whether searches use it or this
process's index.

This module wires those parts (and redis.gaps, redis.reads) behind the Store contract; they
share one connection and its event-loop thread (redis.link).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from livesense.config import MemorySettings, RedisSettings
from livesense.engines.text import TextEmbedder
from livesense.errors import LivesenseError
from livesense.memory.consolidate import Stored
from livesense.memory.local_index import LocalIndex
from livesense.memory.redis.follower import Follower
from livesense.memory.redis.gaps import GapMarks
from livesense.memory.redis.leases import Leases
from livesense.memory.redis.link import RedisLink, log
from livesense.memory.redis.link import import_redis as _import_redis
from livesense.memory.redis.reads import Reads
from livesense.memory.redis.vectors import LOCAL_INDEX, QUERY_ENGINE, RecordVectors
from livesense.memory.redis.writer import Writer, delete_keys
from livesense.memory.search import SearchQuery, check_stream
from livesense.memory.store_base import Store
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import (
    GapMark,
    StreamTiers,
    TierBudget,
    TierPlan,
    TimelineMoment,
    with_gaps,
)
from livesense.records import Hit, SnippetRecord

if TYPE_CHECKING:
    from livesense.memory.watch import WatchHub

__all__ = ["LOCAL_INDEX", "QUERY_ENGINE", "RedisStore", "_import_redis"]


class RedisStore(Store):
    """The rolling memory in Redis: add, search, ask, timeline, list; many processes at once."""

    publishes_on_add = False  # the change follower tells watchers of every writer's moments

    def __init__(
        self,
        url: str,
        settings: MemorySettings | None = None,
        redis: RedisSettings | None = None,
        *,
        readonly: bool = False,
        follow: bool = False,
        embedder: TextEmbedder | None = None,
        hub: WatchHub | None = None,
        vector_index: bool | None = None,
    ) -> None:
        """vector_index: search vectors with Redis's query engine (True: it must be there);
        in this process's local index (False); None: the local index, while records still get
        their vectors in the server's index where it has one (for processes set to True).
        """
        self.url = url
        self.settings = settings or MemorySettings()
        self.redis_settings = redis or RedisSettings(url=url)
        self.readonly = readonly
        self.follow = follow
        self.hub = hub
        self.budget = TierBudget.from_settings(self.settings)
        self._embedder = embedder
        self._link = link = RedisLink(url, self.redis_settings)
        self.keys = link.keys
        self.token = link.token
        self.vector_search = LOCAL_INDEX
        self._want_engine = vector_index
        self._leases = Leases(link)
        self._writer = Writer(link, self._leases, stored_elsewhere=self._forget_tiers)
        self._gaps = GapMarks(link)
        self._vectors = RecordVectors(link)
        self._follower = Follower(link, hub)
        self._reads = Reads(link)
        self._tiers: dict[str, StreamTiers] = {}
        self._stream_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        try:
            link.io.run(self._start())  # following: loads every stream's index first
        except BaseException:
            link.io.stop()
            raise

    async def _start(self) -> None:
        """Connect, load the scripts, open the vector index and start the background tasks
        (a follower first loads every stream into its index)."""
        await self._link.connect()
        for part in (self._leases, self._writer, self._gaps):
            part.register()
        self.vector_search = await self._vectors.open(self._want_engine)
        self._writer.vectors = self._vectors.engine
        if self.vector_search == QUERY_ENGINE:
            self._follower.local = LocalIndex(dense=False)  # tokens stay in Redis
        if not self.readonly:
            self._tasks.append(asyncio.create_task(self._writer.flush_loop(), name="redis-flush"))
            self._tasks.append(asyncio.create_task(self._leases.renew_loop(), name="redis-leases"))
        if self.follow:
            await self._follower.start()
            loop = self._follower.follow_loop()
            self._tasks.append(asyncio.create_task(loop, name="redis-follow"))

    # -- leases ----------------------------------------------------------------------------

    def holder(self, stream: str) -> str | None:
        """The token of the process ingesting the stream, if any."""
        return self._leases.holder(stream)

    def acquire(self, stream: str) -> bool:
        """Take the stream's lease for this store (True if it was free or already ours)."""
        check_stream(stream)
        if self.readonly:
            raise LivesenseError("This memory is open read-only; it cannot ingest.")
        return self._leases.acquire(stream)

    def wait_for_lease(self, stream: str, say: Callable[[str], None] | None = None) -> bool:
        """Take the stream's lease, waiting for one whose holder stopped renewing it; True when
        it was taken over from such a holder (an ingest that died: its work is resumed).

        A process killed without a goodbye leaves its lease to expire (at most
        `redis.lease_ttl`); a restarted ingest waits for that, saying so once through `say`.
        A holder that is alive renews its lease every third of the TTL: seen renewed (or
        taken by a third process), the wait ends at once with a one-sentence refusal.
        """
        if self.acquire(stream):
            return False
        return self._leases.wait_for(stream, say)

    def owns(self, stream: str) -> bool:
        """Whether this store still holds the stream's lease (as far as it knows)."""
        return self._leases.owns(stream)

    def release(self, stream: str, timeout: float = 30.0) -> None:
        """Write what is buffered for the stream, then give its lease up."""
        with self._stream_lock(stream):
            self._writer.drain(stream, timeout)
            self._tiers.pop(stream, None)
            self._leases.owned.discard(stream)
        self._leases.give_up(stream)

    # -- writing ---------------------------------------------------------------------------

    def _stream_lock(self, stream: str) -> threading.Lock:
        with self._locks_lock:
            lock = self._stream_locks.get(stream)
            if lock is None:
                lock = self._stream_locks[stream] = threading.Lock()
            return lock

    def _check_writable(self, stream: str) -> None:
        """Refuse a write with one sentence: the store is closed or read-only, or another
        process took the stream's lease."""
        closed = self._link.closed
        if self.readonly or closed:
            state = "has been closed" if closed else "is open read-only"
            raise LivesenseError(f"This memory {state}; it cannot be written.")
        fenced = self._leases.fenced.get(stream)
        if fenced is not None:
            raise LivesenseError(
                f"Stream {stream} is now ingested by {fenced}; this process stopped writing it."
            )

    @contextlib.contextmanager
    def _writing(self, stream: str) -> Iterator[StreamTiers]:
        """The stream's lock and tiers (taking its lease on first use)."""
        self._check_writable(stream)
        with self._stream_lock(stream):
            tiers = self._tiers.get(stream) or self._open_stream(stream)
            tiers.mark_queried(self._writer.queried.pop(stream, ()))
            yield tiers

    def _open_stream(self, stream: str) -> StreamTiers:
        """Take the lease and load the stream's tiers (under the stream's lock)."""
        if stream not in self._leases.owned and not self.acquire(stream):
            holder = self.holder(stream) or "another process"
            raise LivesenseError(
                f"Stream {stream} is being ingested by {holder}; stop it there first."
            )
        items, summary = self._link.call(self._reads.load_stream(stream), "load a stream")
        tiers = StreamTiers(stream, self.budget, items, summary)
        self._tiers[stream] = tiers
        return tiers

    def _forget_tiers(self, stream: str) -> None:
        """Another writer stored a snippet of the stream: reload its tiers on the next write."""
        self._tiers.pop(stream, None)

    def _keyframe_ref(self, stream: str, index: int, data: bytes) -> str:
        return f"{stream}/{index}.jpg"  # the JPEG goes with the plan's write

    def _record_id(self, index: int) -> int:
        return index

    def _write_plan(self, plan: TierPlan, keyframe: bytes | None) -> None:
        """Buffer the plan's write (waiting while the buffer is full); it reaches Redis in
        the background (see flush)."""
        self._writer.put(plan, keyframe)

    def _imported(self, stream: str, items: list[Stored], summary: StreamSummary | None) -> None:
        self._tiers[stream] = StreamTiers(stream, self.budget, items, summary)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every buffered write has reached Redis."""
        self._writer.flush(timeout)

    def delete_stream(self, stream: str) -> dict[str, int]:
        """Delete every key of the stream (records with their vectors, timeline, change log,
        keyframes, summary, gap markers) while holding its lease, so that no writer comes in
        between; refused while another process ingests it. Query processes drop it locally
        when the feed tells them."""
        check_stream(stream)
        if self._link.closed:
            raise LivesenseError("This memory has been closed.")

        async def delete() -> dict[str, int]:
            async with self._leases.holding(stream):
                deleted = await delete_keys(self._link, stream)
            await self._follower.drop_stream(stream)
            return deleted

        deleted = dict(self._link.call(delete(), "delete a stream"))
        with self._stream_lock(stream):
            self._tiers.pop(stream, None)
            self._leases.owned.discard(stream)
            self._writer.queried.pop(stream, None)
        return deleted

    def _mark_gap(self, stream: str, mark: GapMark) -> None:
        """Store a gap marker now (idempotent); while Redis is unreachable markers wait and
        go with the next one marked."""
        self._check_writable(stream)
        self._gaps.mark(stream, mark)

    @property
    def gaps_dropped(self) -> int:
        """Gap markers dropped while Redis was away (the oldest go first)."""
        return self._gaps.dropped

    def gaps(self, stream: str) -> list[GapMark]:
        """The stream's gap markers in time order."""
        return self._link.call(self._gaps.read_marks(check_stream(stream)), "read gap markers")

    def health(self) -> dict[str, Any]:
        """Whether Redis answers, and what waits to be written."""
        return {
            "redis": self._link.shown,
            **self._writer.report(),
            "owned": sorted(self._leases.owned),
            "fenced": dict(self._leases.fenced),
            "vector_search": self.vector_search,
        }

    # -- following changes -----------------------------------------------------------------

    def refresh(self) -> None:
        """Catch up with what other processes wrote (a no-op while following changes)."""
        if not self.follow and not self._link.closed:
            self.sync()

    def sync(self) -> None:
        """Catch up with every stream now."""
        self._link.call(self._follower.sweep(publish=self.follow), "read the change log")

    @property
    def local_size(self) -> int:
        """Records held in this process's query index."""
        return len(self._follower.local)

    # -- reading ---------------------------------------------------------------------------

    def _search(self, q: SearchQuery) -> list[Hit]:
        local = self._follower.local
        if self.vector_search == QUERY_ENGINE:
            search = self._vectors.search(local, q)
            lexical, dense = self._link.call(search, "search vectors")
            ranked = local.fuse(lexical, dense, q.top_k)
        else:
            ranked = local.search(q)
        if not ranked:
            return []
        return self._link.call(self._reads.hits(ranked), "read moments")

    def stream_ids(self) -> list[str]:
        return self._link.call(self._reads.stream_ids(), "list streams")

    def streams(self) -> list[dict[str, Any]]:
        """Per stream: stored records, covered span and snippets they stand for."""
        return self._link.call(self._reads.streams(), "list streams")

    def summary(self, stream: str) -> StreamSummary | None:
        """The stream's abstract tier."""
        return self._link.call(self._reads.summary(check_stream(stream)), "read")

    def timeline(self, stream: str) -> list[TimelineMoment]:
        """The stream's stored moments and gap markers in time order; they tile the stream
        without overlaps."""
        moments = self._link.call(self._reads.moments(check_stream(stream)), "read a timeline")
        return with_gaps(moments, self.gaps(stream))

    def get(self, stream: str, index: int) -> SnippetRecord | None:
        """The stored record that covers snippet `index` of `stream`, if any."""
        found = self._reads.covering(check_stream(stream), int(index))
        item = self._link.call(found, "read a moment")
        return None if item is None else item.record

    def _after(self, stream: str, index: int) -> SnippetRecord | None:
        found = self._reads.following(check_stream(stream), int(index))
        return self._link.call(found, "read a moment")

    def recent(self, stream: str, n: int = 10) -> list[SnippetRecord]:
        """The newest `n` stored records of a stream, oldest first."""
        return self._link.call(self._reads.recent(check_stream(stream), int(n)), "read moments")

    def keyframe(self, stream: str, index: int) -> bytes | None:
        """The JPEG keyframe of snippet `index` (or of the moment that covers it), if stored."""
        found = self._reads.keyframe(check_stream(stream), int(index))
        return self._link.call(found, "read a keyframe")

    def next_index(self, stream: str) -> int:
        """The snippet index after the last one stored (0 for a new stream)."""
        return self._link.call(self._reads.next_index(check_stream(stream)), "read")

    def count(self, stream: str | None = None) -> int:
        """Stored records, of one stream or of all."""
        names = [check_stream(stream)] if stream is not None else self.stream_ids()
        return self._link.call(self._reads.count(names), "count moments")

    # -- lifetime --------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered (waiting up to `timeout`), give leases up and disconnect."""
        link = self._link
        if link.closed:
            return
        if not self.readonly:
            try:
                self.flush(timeout)
            except LivesenseError as e:
                log.error("%s They are lost.", e)
            for stream in list(self._leases.owned):
                self._leases.give_up(stream)
        link.closed = True
        self._writer.wake_all()

        async def shutdown() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await link.client.aclose()

        with contextlib.suppress(Exception):
            link.io.run(shutdown(), timeout=10)
        link.io.stop()
        self._follower.local.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writer"
        return f"RedisStore({self._link.shown!r}, {mode}, prefix={self.keys.prefix!r})"

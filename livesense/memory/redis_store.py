"""RedisStore: the rolling memory of all streams in Redis, shared by many processes and machines.

Writing: one process ingests a stream at a time; it holds the stream's lease (a key with a time
to live, renewed in the background) and keeps the stream's tiers (memory.tiers) in memory.
Each new snippet becomes a TierPlan that one Lua script applies atomically in the stream's slot:
it checks the lease (a process that lost it is fenced off), skips a plan already applied (writer
token + sequence number, so a retried write is never doubled), refuses a snippet already
stored, writes records, keyframes, the summary and a change-log entry, and hands back the
snippets that queries returned meanwhile (they become key moments). Writes go through a bounded
buffer: while Redis is unreachable they wait there and are retried with backoff; a full buffer
makes `add` wait.

Reading: every process that answers queries keeps a LocalIndex (dense + lexical) in sync
incrementally from each stream's change log (a Redis Stream); a hint feed wakes it as soon as a
stream changes, and a sweep every few seconds catches anything a hint missed. New moments seen
there are scored against this process's standing queries (watch), so a process ingesting
stream A pushes to a client connected to any other process.

Vector search: where the server has a query engine (Redis 8, or Redis Stack's search module),
the dense side of search runs in Redis. Every record hash then also carries its pooled token
vector (FLOAT16), its stream (TAG) and its time span (NUMERIC), and one HNSW index covers all
records; a search asks it for the nearest records within the stream and time filters (FT.SEARCH
KNN, DIALECT 2), re-scores them exactly from their tokens, and mixes them with the lexical
candidates of the local index, which then keeps no tokens at all. Without a query engine each
query process keeps every record's tokens in its LocalIndex. `vector_search` (and health())
says which one a store uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from livesense.config import MemorySettings, RedisSettings
from livesense.engines.text import DIM, TextEmbedder
from livesense.errors import (
    LivesenseError,
    StoreUnavailableError,
    StreamBusyError,
    missing_package,
)
from livesense.memory.consolidate import Stored
from livesense.memory.evidence_codec import evidence_from_json
from livesense.memory.index import matvec, to_float32
from livesense.memory.local_index import Key, Lexical, LocalIndex
from livesense.memory.loop_thread import LoopThread
from livesense.memory.record_codec import (
    EVIDENCE,
    LEX,
    META,
    TIER,
    TOKENS,
    pack_record,
    unpack_meta,
    unpack_record,
    unpack_tokens,
)
from livesense.memory.redis_keys import RedisKeys
from livesense.memory.search import DENSE_CANDIDATES, check_stream
from livesense.memory.store_base import Store
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import (
    GAPS_KEPT,
    Drop,
    GapMark,
    Put,
    Retier,
    StreamTiers,
    TierBudget,
    TierPlan,
    TimelineMoment,
    with_gaps,
)
from livesense.memory.time_window import redis_window
from livesense.records import Hit, SnippetRecord
from livesense.urls import shown_url

if TYPE_CHECKING:
    from livesense.memory.watch import WatchHub

log = logging.getLogger(__name__)

ASK_HITS = 5
BATCH = 64  # writes sent in one round trip
FEED_KEPT = 100_000  # hint entries kept in the feed
SWEEP_SECONDS = 5.0  # the follower checks every stream this often, hint or not...
SWEEP_SLICES = 5  # ...a slice of them at a time, so that a sweep never holds up searches
SWEEP_CHUNK = 200  # streams checked in one round trip
QUERIED_TTL = 3600  # seconds a set of queried snippets waits for its stream's writer

# Fields every record hash gets where the server has a query engine, and the index over them.
# FLOAT16 like the stored tokens, and a modest EF_CONSTRUCTION: inserts into the HNSW graph stay
# cheap enough for 1,000 live streams in half the memory; a high EF_RUNTIME lets the graph find
# most of the true nearest among near-duplicate scenes (figures in the README).
VEC, VSTREAM, VSTART, VEND = b"vec", b"stream", b"start", b"end"
HNSW = ["M", 16, "EF_CONSTRUCTION", 64, "EF_RUNTIME", 200]
LOCAL_INDEX = "local index"
QUERY_ENGINE = "redis query engine"

# KEYS: a record. ARGV: its tokens as read, then field, value pairs. Sets the fields only if the
# record still holds those tokens (it was not merged or dropped meanwhile).
BACKFILL_LUA = """
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS: meta, lease, timeline, changes, queried, then the keys the operations name.
# ARGV: token, seq, index to check (-1: none), operation count, lease ttl (ms), then per
# operation: command, key position, argument count, arguments.
APPLY_LUA = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {-1, holder} end
if redis.call('HGET', KEYS[1], 'wtoken') == ARGV[1] then
  local done = tonumber(redis.call('HGET', KEYS[1], 'wseq') or '-1')
  if tonumber(ARGV[2]) <= done then return {0} end
end
local check = tonumber(ARGV[3])
if check >= 0 then
  local prev = redis.call('ZREVRANGEBYSCORE', KEYS[3], check, '-inf', 'LIMIT', 0, 1)
  if #prev > 0 and tonumber(string.match(prev[1], ':(%d+)$')) >= check then return {2} end
end
if not holder then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5]) end
local allowed = {HSET=1, DEL=1, ZADD=1, ZREM=1, XADD=1, SET=1}
local i = 6
for n = 1, tonumber(ARGV[4]) do
  local cmd = ARGV[i]
  if not allowed[cmd] then return redis.error_reply('livesense: command not allowed ' .. cmd) end
  local key = KEYS[tonumber(ARGV[i + 1])]
  local argc = tonumber(ARGV[i + 2])
  local args = {}
  for j = 1, argc do args[j] = ARGV[i + 2 + j] end
  redis.call(cmd, key, unpack(args))
  i = i + 3 + argc
end
redis.call('HSET', KEYS[1], 'wtoken', ARGV[1], 'wseq', ARGV[2])
local q = redis.call('SMEMBERS', KEYS[5])
if #q > 0 then redis.call('DEL', KEYS[5]) end
return {1, q}
"""

# KEYS: lease. ARGV: token, ttl (ms). 1: held (renewed or taken back), 0: someone else has it.
RENEW_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

# KEYS: gaps, gap reasons, lease. ARGV: member, start, reason, markers kept, token.
# {1}: stored, {0}: stored already, {-1, holder}: another process ingests the stream.
GAP_LUA = """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[5] then return {-1, holder} end
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return {0} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
end
return {1}
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise missing_package("redis", "The Redis store", extra="redis") from None
    return aioredis


@dataclass(slots=True)
class _Write:
    """One plan, encoded for APPLY_LUA."""

    stream: str
    seq: int
    keys: list[str]
    args: list[Any]


@dataclass(slots=True)
class _Health:
    connected: bool = True
    acked: int = 0
    retries: int = 0
    lost: int = 0  # writes refused (fenced) or failed for good
    last_error: str | None = None
    unreachable_since: float | None = None
    warned_at: float = 0.0
    fenced: dict[str, str] = field(default_factory=dict)


class RedisStore(Store):
    """The rolling memory in Redis: add, search, ask, timeline, list; many processes at once."""

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
        self._aioredis = _import_redis()
        self.url = url
        self.settings = settings or MemorySettings()
        self.redis_settings = redis or RedisSettings(url=url)
        self.readonly = readonly
        self.follow = follow
        self.hub = hub
        self.keys = RedisKeys(self.redis_settings.prefix)
        self.budget = TierBudget.from_settings(self.settings)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._embedder = embedder
        self._ttl_ms = int(self.redis_settings.lease_ttl * 1000)
        self._tiers: dict[str, StreamTiers] = {}
        self._seq: dict[str, int] = {}
        self._owned: set[str] = set()
        self._stream_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._queried_inbox: dict[str, set[int]] = {}
        self._pending: deque[_Write] = deque()
        # Gap markers waiting while Redis was away; when full the oldest is dropped (counted)
        self._gap_backlog: deque[tuple[str, GapMark]] = deque(maxlen=256)
        self.gaps_dropped = 0
        self._gap_lock = threading.Lock()
        self._flusher_idle = True
        self._space = threading.Condition()
        self._health = _Health()
        self._want_engine = vector_index
        self._engine = False  # the server has a query engine: records carry their vectors
        self.vector_search = LOCAL_INDEX
        self._local = LocalIndex()
        self._chg: dict[str, bytes] = {}
        self._sync_lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._io = LoopThread("livesense-redis")
        try:
            self._io.run(self._start())  # following: loads every stream's index first
        except BaseException:
            self._io.stop()
            raise

    # -- connection and background tasks ---------------------------------------------------

    async def _start(self) -> None:
        self._client = self._aioredis.Redis.from_url(
            self.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        try:
            await self._client.ping()
        except (self._aioredis.RedisError, OSError) as e:
            await self._client.aclose()
            raise LivesenseError(
                f"Redis at {shown_url(self.url)} cannot be reached ({e})."
            ) from None
        self._apply = self._client.register_script(APPLY_LUA)
        self._renew = self._client.register_script(RENEW_LUA)
        self._release = self._client.register_script(RELEASE_LUA)
        self._gap = self._client.register_script(GAP_LUA)
        self._backfill_script = self._client.register_script(BACKFILL_LUA)
        await self._open_vector_index()
        self._sync_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        if not self.readonly:
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="redis-flush"))
            self._tasks.append(asyncio.create_task(self._renew_loop(), name="redis-leases"))
        if self.follow:
            feed = await self._client.xrevrange(self.keys.feed, count=1)
            self._feed_id = feed[0][0] if feed else b"0-0"
            await self._sweep(publish=False)
            if self._local.dense:  # the first searches run on fitted lists, not beside a fit
                await asyncio.to_thread(self._local.vectors.maybe_fit, wait=True)
            self._tasks.append(asyncio.create_task(self._follow_loop(), name="redis-follow"))

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._aioredis.ConnectionError, self._aioredis.TimeoutError, OSError)

    def _call(self, coro: Any, what: str) -> Any:
        """Run a read on the IO loop; Redis trouble becomes one sentence."""
        if self._closed:
            coro.close()
            raise LivesenseError("This memory has been closed.")
        try:
            return self._io.run(coro, timeout=60)
        except self._errors() as e:
            raise StoreUnavailableError(
                f"Redis at {shown_url(self.url)} could not {what} ({e.__class__.__name__}: {e})."
            ) from None

    # -- leases ----------------------------------------------------------------------------

    def holder(self, stream: str) -> str | None:
        """The token of the process ingesting the stream, if any."""
        raw = self._call(self._client.get(self.keys.lease(stream)), "read a lease")
        return None if raw is None else raw.decode()

    def acquire(self, stream: str) -> bool:
        """Take the stream's lease for this store (True if it was free or already ours)."""
        check_stream(stream)
        if self.readonly:
            raise LivesenseError("This memory is open read-only; it cannot ingest.")
        key = self.keys.lease(stream)
        taking = self._client.set(key, self.token, nx=True, px=self._ttl_ms)
        got = self._call(taking, "take a lease")
        if not got and self.holder(stream) != self.token:
            return False
        self._owned.add(stream)
        self._health.fenced.pop(stream, None)
        return True

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
        ttl = self.redis_settings.lease_ttl
        key = self.keys.lease(stream)
        holder, left = self._call(self._lease_state(key), "read a lease")
        if say is not None and holder is not None:
            say(
                f"stream {stream} is still leased to {holder}; waiting up to {left / 1000:.1f} s "
                "for the lease to expire (a process that died no longer renews it)"
            )
        deadline = time.monotonic() + ttl + 1.0
        while time.monotonic() < deadline:
            time.sleep(min(0.2, ttl / 10))
            if self.acquire(stream):
                return True
            now_holder, now_left = self._call(self._lease_state(key), "read a lease")
            if now_holder is not None and (now_holder != holder or now_left > left + 50):
                holder = now_holder
                break  # renewed, or taken by someone else: its holder is alive
            if now_holder is not None:
                left = now_left
        raise LivesenseError(
            f"Stream {stream} is being ingested by {holder or 'another process'}; "
            "stop it there first."
        )

    async def _lease_state(self, key: str) -> tuple[str | None, int]:
        """(holder, milliseconds left) of a lease; (None, 0) when it is free."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, left = await pipe.execute()
        return (None if raw is None else raw.decode()), max(0, int(left))

    def owns(self, stream: str) -> bool:
        """Whether this store still holds the stream's lease (as far as it knows)."""
        return stream in self._owned and stream not in self._health.fenced

    def release(self, stream: str, timeout: float = 30.0) -> None:
        """Write what is buffered for the stream, then give its lease up."""
        with self._stream_lock(stream):
            self._wait_for(lambda: not any(w.stream == stream for w in self._pending), timeout)
            self._tiers.pop(stream, None)
            self._owned.discard(stream)
        with contextlib.suppress(LivesenseError):
            self._call(
                self._release(keys=[self.keys.lease(stream)], args=[self.token]), "release a lease"
            )

    async def _renew_loop(self) -> None:
        period = self.redis_settings.lease_ttl / 3
        while True:
            await asyncio.sleep(period)
            for stream in list(self._owned):
                try:
                    held = await self._renew(
                        keys=[self.keys.lease(stream)], args=[self.token, self._ttl_ms]
                    )
                except self._errors():
                    continue  # the write path reports an unreachable server
                if not held:
                    holder = await self._client.get(self.keys.lease(stream))
                    self._fence(stream, holder.decode() if holder else "another process")

    def _fence(self, stream: str, holder: str) -> None:
        if stream not in self._health.fenced:
            log.error("stream %s is now ingested by %s; no more writes from here", stream, holder)
        self._health.fenced[stream] = holder
        self._owned.discard(stream)

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
        if self.readonly or self._closed:
            state = "has been closed" if self._closed else "is open read-only"
            raise LivesenseError(f"This memory {state}; it cannot be written.")
        fenced = self._health.fenced.get(stream)
        if fenced is not None:
            raise LivesenseError(
                f"Stream {stream} is now ingested by {fenced}; this process stopped writing it."
            )

    publishes_on_add = False  # the change follower tells watchers of every writer's moments

    @contextlib.contextmanager
    def _writing(self, stream: str) -> Iterator[StreamTiers]:
        """The stream's lock and tiers (taking its lease on first use)."""
        self._check_writable(stream)
        with self._stream_lock(stream):
            tiers = self._tiers.get(stream) or self._open_stream(stream)
            tiers.mark_queried(self._queried_inbox.pop(stream, ()))
            yield tiers

    def _keyframe_ref(self, stream: str, index: int, data: bytes) -> str:
        return f"{stream}/{index}.jpg"  # the JPEG goes with the plan's write

    def _record_id(self, index: int) -> int:
        return index

    def _write_plan(self, plan: TierPlan, keyframe: bytes | None) -> None:
        """Buffer the plan's write (waiting while the buffer is full); it reaches Redis in
        the background (see flush)."""
        stream = plan.stream
        self._seq[stream] = seq = self._seq.get(stream, 0) + 1
        write = self._encode(stream, seq, plan.index, plan, keyframe)
        with self._space:
            while len(self._pending) >= self.redis_settings.buffer and not self._closed:
                self._space.wait(1.0)
            self._pending.append(write)
            wake, self._flusher_idle = self._flusher_idle, False
        if wake and self._wake is not None:  # the flusher sleeps only when nothing is pending
            self._io.loop.call_soon_threadsafe(self._wake.set)

    def _imported(self, stream: str, items: list[Stored], summary: StreamSummary | None) -> None:
        self._tiers[stream] = StreamTiers(stream, self.budget, items, summary)

    def delete_stream(self, stream: str) -> dict[str, int]:
        """Delete every key of the stream (records with their vectors, timeline, change log,
        keyframes, summary, gap markers) while holding its lease, so that no writer comes in
        between; refused while another process ingests it. Query processes drop it locally
        when the feed tells them."""
        check_stream(stream)
        if self._closed:
            raise LivesenseError("This memory has been closed.")
        deleted = dict(self._call(self._delete_stream(stream), "delete a stream"))
        with self._stream_lock(stream):
            self._tiers.pop(stream, None)
            self._owned.discard(stream)
            self._queried_inbox.pop(stream, None)
        return deleted

    async def _delete_stream(self, stream: str) -> dict[str, int]:
        k = self.keys
        lease = k.lease(stream)
        took = await self._client.set(lease, self.token, nx=True, px=self._ttl_ms)
        if not took:
            holder = await self._client.get(lease)
            if holder is not None and holder.decode() != self.token:
                raise StreamBusyError(
                    f"Stream {stream} is being ingested by {holder.decode()}; stop it first."
                )
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.zcard(k.timeline(stream))
            pipe.zcard(k.gaps(stream))
            moments, gaps = await pipe.execute()
            keyframes = 0
            doomed: list[bytes] = []
            async for key in self._client.scan_iter(match=f"{k.tag(stream)}:*", count=1000):
                if key.decode() == lease:
                    continue
                keyframes += ":kf:" in key.decode()
                doomed.append(key)
            for i in range(0, len(doomed), 500):
                await self._client.unlink(*doomed[i : i + 500])
            pipe = self._client.pipeline(transaction=False)
            pipe.srem(k.streams, stream)
            pipe.xadd(k.feed, {"s": stream}, maxlen=FEED_KEPT, approximate=True)
            await pipe.execute()
        finally:
            await self._release(keys=[lease], args=[self.token])
        assert self._sync_lock is not None
        async with self._sync_lock:
            self._local.drop_stream(stream)
            self._chg.pop(stream, None)
        return {"moments": int(moments), "keyframes": int(keyframes), "gaps": int(gaps)}

    def _mark_gap(self, stream: str, mark: GapMark) -> None:
        """Store a gap marker now (one script in the stream's slot, idempotent). While Redis
        is unreachable markers wait here and go with the next one marked."""
        self._check_writable(stream)
        with self._gap_lock:
            if len(self._gap_backlog) == self._gap_backlog.maxlen:
                self.gaps_dropped += 1
                log.warning("Redis has been away for %d gap markers: the oldest is dropped "
                            "(%d so far)", self._gap_backlog.maxlen, self.gaps_dropped)
            self._gap_backlog.append((stream, mark))
            while self._gap_backlog:
                s, m = self._gap_backlog[0]
                k = self.keys
                script = self._gap(
                    keys=[k.gaps(s), k.gap_reasons(s), k.lease(s)],
                    args=[f"{m.start:.3f}:{m.end:.3f}", m.start, m.reason, GAPS_KEPT, self.token],
                )
                try:
                    result = self._call(script, "mark a gap")
                except LivesenseError:
                    raise  # unreachable: the marker waits for the next one
                except Exception:
                    self._gap_backlog.popleft()
                    raise
                self._gap_backlog.popleft()
                if int(result[0]) == -1:
                    raise LivesenseError(
                        f"Stream {s} is being ingested by {result[1].decode()}; "
                        "its gap was not marked here."
                    )

    def gaps(self, stream: str) -> list[GapMark]:
        """The stream's gap markers in time order."""
        return list(self._call(self._gaps(check_stream(stream)), "read gap markers"))

    async def _gaps(self, stream: str) -> list[GapMark]:
        pipe = self._client.pipeline(transaction=False)
        pipe.zrange(self.keys.gaps(stream), 0, -1)
        pipe.hgetall(self.keys.gap_reasons(stream))
        members, reasons = await pipe.execute()
        out: list[GapMark] = []
        for member in members:
            start, _, end = member.decode().partition(":")
            why = reasons.get(member, b"").decode()
            out.append(GapMark(float(start), float(end), why or "media was missing"))
        return sorted(out, key=lambda g: (g.start, g.end))

    def _open_stream(self, stream: str) -> StreamTiers:
        """Take the lease and load the stream's tiers (under the stream's lock)."""
        if stream not in self._owned and not self.acquire(stream):
            holder = self.holder(stream) or "another process"
            raise LivesenseError(
                f"Stream {stream} is being ingested by {holder}; stop it there first."
            )
        items, summary = self._call(self._load_stream(stream), "load a stream")
        tiers = StreamTiers(stream, self.budget, items, summary)
        self._tiers[stream] = tiers
        return tiers

    async def _load_stream(self, stream: str) -> tuple[list[Stored], StreamSummary | None]:
        members = await self._client.zrange(self.keys.timeline(stream), 0, -1)
        firsts = [self.keys.parse_member(m)[0] for m in members]
        items: list[Stored] = []
        for i in range(0, len(firsts), 500):
            pipe = self._client.pipeline(transaction=False)
            for idx in firsts[i : i + 500]:
                pipe.hgetall(self.keys.record(stream, idx))
            for idx, fields in zip(firsts[i : i + 500], await pipe.execute(), strict=True):
                if fields:
                    items.append(unpack_record(stream, idx, fields))
        raw = await self._client.hget(self.keys.meta(stream), "summary")
        return items, None if raw is None else StreamSummary.from_json(raw)

    def _encode(
        self, stream: str, seq: int, index: int, plan: Any, keyframe: bytes | None
    ) -> _Write:
        k = self.keys
        keys = [k.meta(stream), k.lease(stream), k.timeline(stream), k.changes(stream)]
        keys.append(k.queried(stream))
        pos = {key: i + 1 for i, key in enumerate(keys)}
        args: list[Any] = []
        count = 0

        def op(cmd: str, key: str, *xs: Any) -> None:
            nonlocal count
            if key not in pos:
                keys.append(key)
                pos[key] = len(keys)
            args.extend([cmd, pos[key], len(xs), *xs])
            count += 1

        final: dict[int, bool] = {}  # index -> put (True) or dropped (False), last op wins
        for o in plan.ops:
            if isinstance(o, Put):
                idx = o.item.record.index
                rk = k.record(stream, idx)
                op("DEL", rk)
                fields = pack_record(o.item)
                if self._engine:
                    r = o.item.record
                    fields.update(vector_fields(stream, r.start, r.end, r.tokens))
                op("HSET", rk, *[x for kv in fields.items() for x in kv])
                op("ZADD", k.timeline(stream), idx, f"{idx}:{o.item.last_index}")
                if idx == index and keyframe and o.item.record.evidence.keyframe:
                    op("SET", k.keyframe(stream, idx), keyframe)
                final[idx] = True
            elif isinstance(o, Retier):
                op("HSET", k.record(stream, o.index), TIER, o.tier)
            elif isinstance(o, Drop):
                op("DEL", k.record(stream, o.index))
                op("ZREM", k.timeline(stream), f"{o.index}:{o.last}")
                if o.keyframe:
                    ref = o.keyframe.rsplit("/", 1)[-1].removesuffix(".jpg")
                    if ref.isdigit():
                        op("DEL", k.keyframe(stream, int(ref)))
                final[o.index] = False
        if plan.summary is not None:
            op("HSET", k.meta(stream), "summary", plan.summary.to_json())
        puts = ",".join(str(i) for i, put in final.items() if put)
        drops = ",".join(str(o.index) for o in plan.ops if isinstance(o, Drop))
        kept = self.redis_settings.changes_kept
        op("XADD", k.changes(stream), "MAXLEN", "~", kept, "*", "new", index, "put", puts,
           "drop", drops)  # fmt: skip
        return _Write(stream, seq, keys, [self.token, seq, index, count, self._ttl_ms, *args])

    async def _flush_loop(self) -> None:
        assert self._wake is not None
        backoff = 0.1
        while True:
            with self._space:
                if not self._pending:
                    self._flusher_idle = True
                    self._wake.clear()
            if self._flusher_idle:
                await self._wake.wait()
                continue
            batch = list(self._pending)[:BATCH]
            try:
                results = await self._send(batch)
            except self._errors() as e:
                self._unreachable(e, len(self._pending), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.redis_settings.retry_max)
                continue
            backoff = 0.1
            self._reachable()
            for write, result in zip(batch, results, strict=True):
                self._settle(write, result)
            with self._space:
                for _ in batch:
                    self._pending.popleft()
                if self._health.fenced:
                    kept = [w for w in self._pending if w.stream not in self._health.fenced]
                    self._health.lost += len(self._pending) - len(kept)
                    self._pending = deque(kept)
                self._space.notify_all()

    async def _send(self, batch: list[_Write]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for w in batch:
            await self._apply(keys=w.keys, args=w.args, client=pipe)
        streams = sorted({w.stream for w in batch})
        pipe.sadd(self.keys.streams, *streams)
        for s in streams:
            pipe.xadd(self.keys.feed, {"s": s}, maxlen=FEED_KEPT, approximate=True)
        results = await pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, self._errors()):
                raise r
        return list(results[: len(batch)])

    def _settle(self, write: _Write, result: Any) -> None:
        if isinstance(result, Exception):
            self._health.lost += 1
            self._health.last_error = str(result)
            log.error("a write of stream %s failed: %s", write.stream, result)
            return
        code = int(result[0])
        if code in (0, 1):
            self._health.acked += 1
            if code == 1 and len(result) > 1 and result[1]:
                inbox = self._queried_inbox.setdefault(write.stream, set())
                inbox.update(int(x) for x in result[1])
        elif code == -1:
            self._health.lost += 1
            self._fence(write.stream, result[1].decode() if len(result) > 1 else "another process")
        else:  # the snippet is stored already: someone else wrote it; reload before going on
            log.warning("stream %s: snippet already stored by another writer", write.stream)
            self._tiers.pop(write.stream, None)

    def _unreachable(self, e: BaseException, buffered: int, wait: float) -> None:
        h = self._health
        h.connected = False
        h.retries += 1
        h.last_error = f"{e.__class__.__name__}: {e}"
        now = time.monotonic()
        if h.unreachable_since is None:
            h.unreachable_since = now
        if now - h.warned_at >= 5.0:
            h.warned_at = now
            log.warning(
                "Redis at %s is unreachable (%s); %d records buffered, retrying in %.1f s",
                shown_url(self.url), h.last_error, buffered, wait,
            )  # fmt: skip

    def _reachable(self) -> None:
        h = self._health
        if not h.connected:
            log.warning("Redis at %s is reachable again", shown_url(self.url))
        h.connected, h.unreachable_since = True, None

    def _wait_for(self, done: Any, timeout: float | None) -> bool:
        with self._space:
            return bool(self._space.wait_for(done, timeout))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every buffered write has reached Redis."""
        if not self._wait_for(lambda: not self._pending, timeout):
            raise LivesenseError(
                f"{len(self._pending)} records could not be written to Redis at "
                f"{shown_url(self.url)} within {timeout} s ({self._health.last_error})."
            )

    def health(self) -> dict[str, Any]:
        """Whether Redis answers, and what waits to be written."""
        h = self._health
        return {
            "redis": shown_url(self.url),
            "connected": h.connected,
            "buffered": len(self._pending),
            "acked": h.acked,
            "retries": h.retries,
            "lost": h.lost,
            "last_error": h.last_error,
            "unreachable_for": None
            if h.unreachable_since is None
            else round(time.monotonic() - h.unreachable_since, 1),
            "owned": sorted(self._owned),
            "fenced": dict(h.fenced),
            "vector_search": self.vector_search,
        }

    # -- following changes (query processes) -------------------------------------------

    async def _follow_loop(self) -> None:
        last_sweep = time.monotonic()
        turn = 0
        backoff = 0.1
        while True:
            try:
                got = await self._client.xread(
                    {self.keys.feed: self._feed_id}, count=1000, block=1000
                )
                touched: set[str] = set()
                for _, entries in got or []:
                    for entry_id, fields in entries:
                        self._feed_id = entry_id
                        touched.add(fields[b"s"].decode())
                for stream in sorted(touched):
                    await self._sync_stream(stream, publish=True)
                if time.monotonic() - last_sweep >= SWEEP_SECONDS / SWEEP_SLICES:
                    await self._sweep(publish=True, part=turn % SWEEP_SLICES, parts=SWEEP_SLICES)
                    turn += 1
                    last_sweep = time.monotonic()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except self._errors() as e:
                log.warning("following changes in Redis failed (%s); retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.redis_settings.retry_max)
            except Exception:
                log.exception("following changes in Redis failed")
                await asyncio.sleep(1.0)

    async def _sweep(self, *, publish: bool, part: int = 0, parts: int = 1) -> None:
        """Bring the local index up to date with every stream (with parts > 1: with the
        part-th slice of the known streams, and with every new one)."""
        raw = await self._client.smembers(self.keys.streams)
        streams = sorted(s.decode() for s in raw)
        assert self._sync_lock is not None
        async with self._sync_lock:
            for gone in set(self._chg) - set(streams):  # deleted meanwhile
                self._local.drop_stream(gone)
                self._chg.pop(gone, None)
        known = [s for s in streams[part::parts] if s in self._chg]
        for i in range(0, len(known), SWEEP_CHUNK):
            chunk = known[i : i + SWEEP_CHUNK]
            pipe = self._client.pipeline(transaction=False)
            for s in chunk:
                pipe.xrevrange(self.keys.changes(s), count=1)
            for s, last in zip(chunk, await pipe.execute(), strict=True):
                if last and last[0][0] != self._chg[s]:
                    await self._sync_stream(s, publish=publish)
        for s in streams:
            if s not in self._chg:
                await self._sync_stream(s, publish=False)

    async def _sync_stream(self, stream: str, *, publish: bool) -> None:
        assert self._sync_lock is not None
        async with self._sync_lock:
            while True:
                last = self._chg.get(stream)
                if last is None:
                    await self._reload_stream(stream)
                    return
                pipe = self._client.pipeline(transaction=False)
                pipe.xrange(self.keys.changes(stream), min=b"(" + last, count=1000)
                pipe.xrange(self.keys.changes(stream), count=1)
                entries, oldest = await pipe.execute()
                if oldest and _id_after(oldest[0][0], last):  # trimmed past us
                    await self._reload_stream(stream)
                    return
                if not oldest:  # no change log: the stream was deleted
                    self._local.drop_stream(stream)
                    self._chg.pop(stream, None)
                    return
                if not entries:
                    return
                await self._apply_changes(stream, entries, publish)
                self._chg[stream] = entries[-1][0]
                if len(entries) < 1000:
                    return

    async def _reload_stream(self, stream: str) -> None:
        newest = await self._client.xrevrange(self.keys.changes(stream), count=1)
        members = await self._client.zrange(self.keys.timeline(stream), 0, -1)
        firsts = [self.keys.parse_member(m)[0] for m in members]
        self._local.drop_stream(stream)
        await self._fetch_into_index(stream, firsts, publish=())
        self._chg[stream] = newest[0][0] if newest else b"0-0"

    async def _apply_changes(self, stream: str, entries: list[Any], publish: bool) -> None:
        puts: dict[int, None] = {}
        new: set[int] = set()
        for _, fields in entries:
            for idx in _ints(fields.get(b"drop", b"")):
                self._local.drop(stream, idx)
                puts.pop(idx, None)
            for idx in _ints(fields.get(b"put", b"")):
                puts[idx] = None
            if publish and fields.get(b"new"):
                new.add(int(fields[b"new"]))
        await self._fetch_into_index(stream, list(puts), publish=new & set(puts))

    async def _fetch_into_index(
        self, stream: str, indices: list[int], publish: Iterable[int]
    ) -> None:
        watched = set(publish) if self.hub is not None and len(self.hub) else set()
        for i in range(0, len(indices), 500):
            chunk = indices[i : i + 500]
            published: list[SnippetRecord] = []
            pipe = self._client.pipeline(transaction=False)
            plain = [META, LEX] if not self._local.dense else [META, LEX, TOKENS]
            for idx in chunk:
                fields = [META, LEX, TOKENS, EVIDENCE] if idx in watched else plain
                pipe.hmget(self.keys.record(stream, idx), fields)
            rows = []
            for idx, values in zip(chunk, await pipe.execute(), strict=True):
                if values[0] is None:
                    self._local.drop(stream, idx)  # merged away since
                    continue
                meta = unpack_meta(values[0])
                tokens = unpack_tokens(values[2] if len(values) > 2 else None)
                start, end = float(meta["s"]), float(meta["e"])  # type: ignore[arg-type]
                rows.append((idx, start, end, tokens, (values[1] or b"").decode()))
                if idx in watched and self.hub is not None:
                    record = SnippetRecord(
                        stream, idx, start, end, tokens, [str(m) for m in meta["mods"]],  # type: ignore[attr-defined]
                        [float(t) for t in meta["times"]],  # type: ignore[attr-defined]
                        evidence_from_json(values[3].decode()), count=int(meta["c"]),  # type: ignore[call-overload]
                    )  # fmt: skip
                    published.append(record)
            self._local.put_many(stream, rows)
            for record in published:
                try:
                    self.hub.publish(record)  # type: ignore[union-attr]
                except Exception:
                    log.exception("publishing moment %s/%s failed", stream, record.index)

    def refresh(self) -> None:
        """Catch up with what other processes wrote (a no-op while following changes)."""
        if not self.follow and not self._closed:
            self.sync()

    def sync(self) -> None:
        """Catch up with every stream now."""
        self._call(self._sweep(publish=self.follow), "read the change log")

    # -- reading ---------------------------------------------------------------------------

    def _search(
        self,
        qvec: np.ndarray,
        query: str,
        *,
        stream: str | None,
        start: float | None,
        end: float | None,
        top_k: int,
    ) -> list[Hit]:
        self.refresh()
        if self.vector_search == QUERY_ENGINE:
            k = max(DENSE_CANDIDATES, 4 * top_k)
            search = self._engine_search(qvec, query, stream, start, end, k)
            lexical, dense = self._call(search, "search vectors")
            ranked = self._local.fuse(lexical, dense, top_k)
        else:
            ranked = self._local.search(
                qvec, query, stream=stream, start=start, end=end, top_k=top_k
            )
        if not ranked:
            return []
        return list(self._call(self._hits(ranked), "read moments"))

    # -- Redis's own vector index ------------------------------------------------------------

    async def _open_vector_index(self) -> None:
        """Find out whether the server has a query engine; if so, make sure the records' index
        exists (the process that creates it gives the records already stored their vectors),
        and search vectors there when told to (vector_index=True). By default searches run on
        this process's index: Redis's HNSW holds one pooled vector per record and finds far
        fewer of the exact best moments (bench.index_compare)."""
        try:
            await self._client.execute_command("FT._LIST")
            self._engine = True
        except self._aioredis.ResponseError:
            self._engine = False
        if self._want_engine and not self._engine:
            await self._client.aclose()
            raise LivesenseError(
                f"Redis at {shown_url(self.url)} has no query engine (Redis 8 or Redis Stack), "
                "so it cannot keep a vector index."
            )
        if self._engine:
            try:
                created = await self._create_index()
                if created or not await self._client.exists(self.keys.vectors_filled):
                    await self._backfill()
            except self._aioredis.ResponseError as e:
                if self._want_engine:
                    await self._client.aclose()
                    raise LivesenseError(
                        f"Redis at {shown_url(self.url)} refused the vector index ({e})."
                    ) from None
                log.warning("Redis refused the vector index (%s); vectors stay local", e)
                self._engine = False
        if self._engine and self._want_engine:
            self.vector_search = QUERY_ENGINE
            self._local = LocalIndex(dense=False)
        log.info(
            "Redis at %s: vector search in %s", shown_url(self.url),
            "Redis's query engine" if self._local.dense is False else "this process's index",
        )  # fmt: skip

    async def _create_index(self) -> bool:
        """Create the records' vector index (False: it exists already)."""
        k = self.keys
        vector = ["TYPE", "FLOAT16", "DIM", DIM, "DISTANCE_METRIC", "COSINE", *HNSW]
        try:
            await self._client.execute_command(
                "FT.CREATE", k.vector_index, "ON", "HASH", "PREFIX", 1, k.records_under,
                "FILTER", 'contains(@__key, ":r:")', "SCHEMA",
                VEC, "VECTOR", "HNSW", len(vector), *vector,
                VSTREAM, "TAG", "CASESENSITIVE", VSTART, "NUMERIC", VEND, "NUMERIC",
            )  # fmt: skip
        except self._aioredis.ResponseError as e:
            if "exists" in str(e).lower():
                return False
            raise
        log.info("created the vector index %s in Redis", k.vector_index)
        return True

    async def _backfill(self) -> None:
        """Give the records stored before the index existed their vector fields."""
        done = 0
        for stream in sorted(s.decode() for s in await self._client.smembers(self.keys.streams)):
            members = await self._client.zrange(self.keys.timeline(stream), 0, -1)
            firsts = [self.keys.parse_member(m)[0] for m in members]
            for i in range(0, len(firsts), 500):
                chunk = firsts[i : i + 500]
                pipe = self._client.pipeline(transaction=False)
                for idx in chunk:
                    pipe.hmget(self.keys.record(stream, idx), [META, TOKENS])
                writes = self._client.pipeline(transaction=False)
                for idx, (meta_raw, tok) in zip(chunk, await pipe.execute(), strict=True):
                    if meta_raw is None or tok is None:
                        continue
                    meta = unpack_meta(meta_raw)
                    fields = vector_fields(stream, meta["s"], meta["e"], unpack_tokens(tok))  # type: ignore[arg-type]
                    args = [tok, *[x for kv in fields.items() for x in kv]]
                    key = self.keys.record(stream, idx)
                    await self._backfill_script(keys=[key], args=args, client=writes)
                    done += 1
                await writes.execute()
        await self._client.set(self.keys.vectors_filled, b"1")
        if done:
            log.info("gave %d stored records their vectors for the index", done)

    async def _engine_search(
        self,
        qvec: np.ndarray,
        query: str,
        stream: str | None,
        start: float | None,
        end: float | None,
        k: int,
    ) -> tuple[Lexical, dict[Key, float]]:
        """The lexical candidates (found here) and the exact cosines of the k nearest records
        (found by the query engine) and of the lexical candidates. The nearest are asked for
        first, so that Redis looks for them while the lexical side runs in a thread here."""
        near = asyncio.ensure_future(self._knn(qvec, stream, start, end, k))
        near.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen if left
        try:
            lexical = await asyncio.to_thread(
                self._local.lexical, query, stream=stream, start=start, end=end
            )
            named = await self._cosines(qvec, list(lexical.texts))
            return lexical, {**named, **await near}
        except self._aioredis.ResponseError as e:  # e.g. the index was dropped meanwhile
            raise LivesenseError(
                f"Redis at {shown_url(self.url)} could not search vectors ({e})."
            ) from None
        finally:
            near.cancel()  # no-op once done

    async def _knn(
        self, qvec: np.ndarray, stream: str | None, start: float | None, end: float | None, k: int
    ) -> dict[Key, float]:
        """The k records nearest to the query by pooled vector within the filters, with their
        exact cosine (the best of their tokens); within a stream, exactly the k nearest."""
        q = np.ascontiguousarray(qvec, np.float32)
        params: list[Any] = ["q", q.astype(np.float16).tobytes()]
        where = []
        if stream is not None:
            where.append("@stream:{$st}")
            params += ["st", stream]
        where += redis_window(start, end)
        # Within a stream, every one of its records is compared (no graph walk through other
        # streams' records), so which records come back depends on that stream alone.
        policy = " HYBRID_POLICY ADHOC_BF" if stream is not None else ""
        query = f"({' '.join(where) or '*'})=>[KNN {int(k)} @vec $q{policy} AS knn_d]"
        reply = await self._client.execute_command(
            "FT.SEARCH", self.keys.vector_index, query, "PARAMS", len(params), *params,
            "SORTBY", "knn_d", "RETURN", 1, TOKENS, "LIMIT", 0, int(k), "DIALECT", 2,
        )  # fmt: skip
        found = [
            (name, tok)
            for key, fields in _search_rows(reply)
            if (name := self.keys.parse_record(key)) is not None and (tok := fields.get(TOKENS))
        ]
        cosines = best_cosines([tok for _, tok in found], q)
        return {name: c for (name, _), c in zip(found, cosines.tolist(), strict=True)}

    async def _cosines(self, qvec: np.ndarray, names: list[Key]) -> dict[Key, float]:
        """Exact cosines (the best of their tokens) of the named records still stored. Their
        tokens come in one reply of the query engine (INKEYS), not one per record: a reply per
        record costs the client more than the query itself."""
        if not names:
            return {}
        keys = [self.keys.record(s, idx) for s, idx in names]
        reply = await self._client.execute_command(
            "FT.SEARCH", self.keys.vector_index, "*", "INKEYS", len(keys), *keys,
            "RETURN", 1, TOKENS, "LIMIT", 0, len(keys), "DIALECT", 2,
        )  # fmt: skip
        found = [
            (name, tok)
            for key, fields in _search_rows(reply)
            if (name := self.keys.parse_record(key)) is not None and (tok := fields.get(TOKENS))
        ]
        cosines = best_cosines([tok for _, tok in found], np.ascontiguousarray(qvec, np.float32))
        return {name: c for (name, _), c in zip(found, cosines.tolist(), strict=True)}

    async def _hits(self, ranked: list[tuple[str, int, float]]) -> list[Hit]:
        pipe = self._client.pipeline(transaction=False)
        for s, idx, _ in ranked:
            pipe.hmget(self.keys.record(s, idx), [META, EVIDENCE])
        for s in {s for s, _, _ in ranked}:
            pipe.sadd(self.keys.queried(s), *[idx for x, idx, _ in ranked if x == s])
            pipe.expire(self.keys.queried(s), QUERIED_TTL)
        values = await pipe.execute()
        hits: list[Hit] = []
        for (s, idx, score), (meta_raw, ev_raw) in zip(ranked, values, strict=False):
            if meta_raw is None:
                continue  # merged away since the index saw it
            meta = unpack_meta(meta_raw)
            hits.append(
                Hit(
                    stream=s,
                    start=float(meta["s"]),  # type: ignore[arg-type]
                    end=float(meta["e"]),  # type: ignore[arg-type]
                    score=score,
                    evidence=evidence_from_json(ev_raw.decode()),
                    index=idx,
                )
            )
        return hits

    def stream_ids(self) -> list[str]:
        raw = self._call(self._client.smembers(self.keys.streams), "list streams")
        return sorted(s.decode() for s in raw)

    def streams(self) -> list[dict[str, Any]]:
        """Per stream: stored records, covered span and snippets they stand for."""
        return list(self._call(self._streams(), "list streams"))

    async def _streams(self) -> list[dict[str, Any]]:
        names = sorted(s.decode() for s in await self._client.smembers(self.keys.streams))
        pipe = self._client.pipeline(transaction=False)
        for s in names:
            pipe.zcard(self.keys.timeline(s))
            pipe.hget(self.keys.meta(s), "summary")
        values = await pipe.execute()
        out = []
        for i, s in enumerate(names):
            records, raw = values[2 * i], values[2 * i + 1]
            if not records or raw is None:
                continue
            summary = StreamSummary.from_json(raw)
            out.append(
                {
                    "stream": s,
                    "records": int(records),
                    "start": float(summary.start or 0.0),
                    "end": float(summary.end),
                    "snippets": summary.snippets,
                }
            )
        return out

    def summary(self, stream: str) -> StreamSummary | None:
        """The stream's abstract tier."""
        raw = self._call(self._client.hget(self.keys.meta(check_stream(stream)), "summary"), "read")
        return None if raw is None else StreamSummary.from_json(raw)

    def timeline(self, stream: str) -> list[TimelineMoment]:
        """The stream's stored moments and gap markers in time order; they tile the stream
        without overlaps."""
        moments = list(self._call(self._timeline(check_stream(stream)), "read a timeline"))
        return with_gaps(moments, self.gaps(stream))

    async def _timeline(self, stream: str) -> list[TimelineMoment]:
        members = await self._client.zrange(self.keys.timeline(stream), 0, -1)
        firsts = [self.keys.parse_member(m)[0] for m in members]
        out: list[TimelineMoment] = []
        for i in range(0, len(firsts), 500):
            pipe = self._client.pipeline(transaction=False)
            for idx in firsts[i : i + 500]:
                pipe.hmget(self.keys.record(stream, idx), [META, TIER, EVIDENCE])
            for idx, (m, t, ev) in zip(firsts[i : i + 500], await pipe.execute(), strict=True):
                if m is not None:
                    item = unpack_record(stream, idx, {META: m, TIER: t, EVIDENCE: ev})
                    out.append(TimelineMoment.of(item))
        return out

    def get(self, stream: str, index: int) -> SnippetRecord | None:
        """The stored record that covers snippet `index` of `stream`, if any."""
        item = self._call(self._covering(check_stream(stream), int(index)), "read a moment")
        return None if item is None else item.record

    async def _covering(self, stream: str, index: int) -> Stored | None:
        prev = await self._client.zrevrangebyscore(
            self.keys.timeline(stream), index, "-inf", start=0, num=1
        )
        if not prev:
            return None
        first, last = self.keys.parse_member(prev[0])
        if last < index:
            return None
        fields = await self._client.hgetall(self.keys.record(stream, first))
        return unpack_record(stream, first, fields) if fields else None

    def _after(self, stream: str, index: int) -> SnippetRecord | None:
        return self._call(self._following(check_stream(stream), int(index)), "read a moment")  # type: ignore[no-any-return]

    async def _following(self, stream: str, index: int) -> SnippetRecord | None:
        nxt = await self._client.zrangebyscore(
            self.keys.timeline(stream), f"({index}", "+inf", start=0, num=1
        )
        if not nxt:
            return None
        first = self.keys.parse_member(nxt[0])[0]
        fields = await self._client.hgetall(self.keys.record(stream, first))
        return unpack_record(stream, first, fields).record if fields else None

    def recent(self, stream: str, n: int = 10) -> list[SnippetRecord]:
        """The newest `n` stored records of a stream, oldest first."""
        return list(self._call(self._recent(check_stream(stream), int(n)), "read moments"))

    async def _recent(self, stream: str, n: int) -> list[SnippetRecord]:
        members = await self._client.zrange(self.keys.timeline(stream), -max(1, n), -1)
        pipe = self._client.pipeline(transaction=False)
        firsts = [self.keys.parse_member(m)[0] for m in members]
        for idx in firsts:
            pipe.hgetall(self.keys.record(stream, idx))
        values = await pipe.execute()
        pairs = zip(firsts, values, strict=True)
        return [unpack_record(stream, i, f).record for i, f in pairs if f]

    def keyframe(self, stream: str, index: int) -> bytes | None:
        """The JPEG keyframe of snippet `index` (or of the moment that covers it), if stored."""
        return self._call(self._keyframe(check_stream(stream), int(index)), "read a keyframe")  # type: ignore[no-any-return]

    async def _keyframe(self, stream: str, index: int) -> bytes | None:
        data = await self._client.get(self.keys.keyframe(stream, index))
        if data is not None:
            return bytes(data)
        item = await self._covering(stream, index)
        ref = None if item is None else item.record.evidence.keyframe
        if not ref:
            return None
        name = ref.rsplit("/", 1)[-1].removesuffix(".jpg")
        if not name.isdigit():
            return None
        data = await self._client.get(self.keys.keyframe(stream, int(name)))
        return None if data is None else bytes(data)

    def next_index(self, stream: str) -> int:
        """The snippet index after the last one stored (0 for a new stream)."""
        members = self._call(
            self._client.zrange(self.keys.timeline(check_stream(stream)), -1, -1), "read"
        )
        return self.keys.parse_member(members[0])[1] + 1 if members else 0

    def count(self, stream: str | None = None) -> int:
        """Stored records, of one stream or of all."""
        names = [check_stream(stream)] if stream is not None else self.stream_ids()

        async def _count() -> int:
            pipe = self._client.pipeline(transaction=False)
            for s in names:
                pipe.zcard(self.keys.timeline(s))
            return sum(int(n) for n in await pipe.execute()) if names else 0

        return int(self._call(_count(), "count moments"))

    @property
    def local_size(self) -> int:
        """Records held in this process's query index."""
        return len(self._local)

    # -- lifetime --------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered (waiting up to `timeout`), give leases up and disconnect."""
        if self._closed:
            return
        if not self.readonly:
            try:
                self.flush(timeout)
            except LivesenseError as e:
                log.error("%s They are lost.", e)
            for stream in list(self._owned):
                with contextlib.suppress(LivesenseError):
                    self._call(
                        self._release(keys=[self.keys.lease(stream)], args=[self.token]),
                        "release a lease",
                    )
            self._owned.clear()
        self._closed = True
        with self._space:
            self._space.notify_all()

        async def _shutdown() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._client.aclose()

        with contextlib.suppress(Exception):
            self._io.run(_shutdown(), timeout=10)
        self._io.stop()
        self._local.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writer"
        return f"RedisStore({shown_url(self.url)!r}, {mode}, prefix={self.keys.prefix!r})"


def vector_fields(stream: str, start: float, end: float, tokens: np.ndarray) -> dict[bytes, bytes]:
    """What the query engine indexes of a record: its stream, time span and pooled vector (the
    normalised mean of its tokens; left out when they have none, so it is never searched)."""
    out = {VSTREAM: stream.encode(), VSTART: repr(float(start)).encode(),
           VEND: repr(float(end)).encode()}  # fmt: skip
    t = np.asarray(tokens, np.float32).reshape(-1, DIM)
    if len(t):
        v = t.mean(axis=0)
        n = float(np.linalg.norm(v))
        if n > 1e-6:
            out[VEC] = (v / n).astype(np.float16).tobytes()
    return out


def best_cosines(blobs: list[bytes], q: np.ndarray) -> np.ndarray:
    """The best cosine with the query of each record's stored tokens (FLOAT16 blobs), at once
    (0 for a record without tokens)."""
    lens = np.array([len(b) // (2 * DIM) for b in blobs], np.int64)
    out = np.zeros(len(blobs), np.float32)
    if lens.sum() == 0:
        return out
    tokens = np.frombuffer(b"".join(blobs), np.float16).reshape(-1, DIM)
    vals = matvec(to_float32(tokens), np.ascontiguousarray(q, np.float32))
    some = lens > 0
    out[some] = np.maximum.reduceat(vals, (np.cumsum(lens) - lens)[some])
    return out


def _search_rows(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """(key, returned fields) of each FT.SEARCH result (asked with RETURN), RESP3 or RESP2."""
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    if isinstance(reply, dict):  # RESP3: {results: [{id, extra_attributes}, ...], ...}
        for r in reply.get(b"results") or []:
            out.append((r[b"id"], dict(r.get(b"extra_attributes") or {})))
        return out
    for i in range(1, len(reply) - 1, 2):  # RESP2: total, then key, [field, value, ...]
        fields = reply[i + 1]
        out.append((reply[i], dict(zip(fields[::2], fields[1::2], strict=False))))
    return out


def _ints(raw: bytes) -> list[int]:
    return [int(x) for x in raw.split(b",") if x]


def _id_after(a: bytes, b: bytes) -> bool:
    """Whether stream entry id a comes after b."""
    ma, _, sa = a.partition(b"-")
    mb, _, sb = b.partition(b"-")
    return (int(ma), int(sa or 0)) > (int(mb), int(sb or 0))

"""Writer: the write buffer and its flusher. Each tier plan becomes one call of APPLY_LUA, which
applies it atomically in the stream's slot: it checks the lease (a process that lost it is
fenced off), skips a plan already applied (writer token + sequence number, so a retried write
is never doubled), refuses a snippet already stored, writes records, keyframes, the summary and
a change-log entry, and hands back the snippets that queries returned meanwhile. Writes wait in
a bounded buffer; while Redis is unreachable they are retried with backoff, and a full buffer
makes the writer wait. Deleting a stream's keys is here too."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livesense.errors import LivesenseError
from livesense.memory.record_codec import TIER, pack_record
from livesense.memory.redis.leases import Leases
from livesense.memory.redis.link import RedisLink, log
from livesense.memory.redis.pipelined import read
from livesense.memory.redis.vectors import vector_fields
from livesense.memory.tiers import Drop, Put, Retier, TierPlan

BATCH = 64  # writes sent in one round trip
FEED_KEPT = 100_000  # hint entries kept in the feed

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


@dataclass(slots=True)
class Write:
    """One plan, encoded for APPLY_LUA."""

    stream: str
    seq: int
    keys: list[str]
    args: list[Any]


@dataclass(slots=True)
class WriteHealth:
    """What the flusher has seen of the server."""

    connected: bool = True
    acked: int = 0
    retries: int = 0
    lost: int = 0  # writes refused (fenced) or failed for good
    last_error: str | None = None
    unreachable_since: float | None = None
    warned_at: float = 0.0


class Writer:
    """Buffers encoded plans and sends them in batches from the loop thread."""

    def __init__(
        self, link: RedisLink, leases: Leases, stored_elsewhere: Callable[[str], None]
    ) -> None:
        """stored_elsewhere(stream): another writer stored a snippet this one wrote; the
        stream's cached tiers must be reloaded."""
        self.link = link
        self.leases = leases
        self.stored_elsewhere = stored_elsewhere
        self.vectors = False  # records carry their vector fields (the server indexes them)
        self.health = WriteHealth()
        self.pending: deque[Write] = deque()
        self.queried: dict[str, set[int]] = {}  # snippets queries returned, per stream
        self._seq: dict[str, int] = {}
        self._idle = True
        self._space = threading.Condition()
        self._wake = asyncio.Event()

    def register(self) -> None:
        """Load the script (once connected)."""
        self._apply = self.link.client.register_script(APPLY_LUA)

    # -- the caller's side -----------------------------------------------------------------

    def put(self, plan: TierPlan, keyframe: bytes | None) -> None:
        """Buffer the plan's write, waiting while the buffer is full."""
        stream = plan.stream
        self._seq[stream] = seq = self._seq.get(stream, 0) + 1
        write = self.encode(stream, seq, plan.index, plan, keyframe)
        with self._space:
            while len(self.pending) >= self.link.settings.buffer and not self.link.closed:
                self._space.wait(1.0)
            self.pending.append(write)
            wake, self._idle = self._idle, False
        if wake:  # the flusher sleeps only when nothing is pending
            self.link.io.loop.call_soon_threadsafe(self._wake.set)

    def wait_for(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until `done()` holds of the buffer (False on timeout)."""
        with self._space:
            return bool(self._space.wait_for(done, timeout))

    def drain(self, stream: str, timeout: float) -> bool:
        """Wait until nothing of the stream is buffered."""
        return self.wait_for(lambda: not any(w.stream == stream for w in self.pending), timeout)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every buffered write has reached Redis."""
        if not self.wait_for(lambda: not self.pending, timeout):
            raise LivesenseError(
                f"{len(self.pending)} records could not be written to Redis at "
                f"{self.link.shown} within {timeout} s ({self.health.last_error})."
            )

    def wake_all(self) -> None:
        """Let writers waiting for space see that the store closed."""
        with self._space:
            self._space.notify_all()

    def report(self) -> dict[str, Any]:
        """The buffer's part of health()."""
        h = self.health
        return {
            "connected": h.connected,
            "buffered": len(self.pending),
            "acked": h.acked,
            "retries": h.retries,
            "lost": h.lost,
            "last_error": h.last_error,
            "unreachable_for": None
            if h.unreachable_since is None
            else round(time.monotonic() - h.unreachable_since, 1),
        }

    def encode(
        self, stream: str, seq: int, index: int, plan: TierPlan, keyframe: bytes | None
    ) -> Write:
        """The plan as one call of APPLY_LUA; every key it names is in the stream's slot."""
        k = self.link.keys
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
                if self.vectors:
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
        kept = self.link.settings.changes_kept
        op("XADD", k.changes(stream), "MAXLEN", "~", kept, "*", "new", index, "put", puts,
           "drop", drops)  # fmt: skip
        link = self.link
        return Write(stream, seq, keys, [link.token, seq, index, count, link.ttl_ms, *args])

    # -- the loop thread's side ------------------------------------------------------------

    async def flush_loop(self) -> None:
        """Send what is buffered, a batch per round trip; back off while Redis is away."""
        backoff = 0.1
        retry_max = self.link.settings.retry_max
        while True:
            with self._space:
                if not self.pending:
                    self._idle = True
                    self._wake.clear()
            if self._idle:
                await self._wake.wait()
                continue
            batch = list(self.pending)[:BATCH]
            try:
                results = await self._send(batch)
            except self.link.errors() as e:
                self._unreachable(e, len(self.pending), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, retry_max)
                continue
            backoff = 0.1
            self._reachable()
            for write, result in zip(batch, results, strict=True):
                self._settle(write, result)
            with self._space:
                for _ in batch:
                    self.pending.popleft()
                fenced = self.leases.fenced
                if fenced:
                    kept = [w for w in self.pending if w.stream not in fenced]
                    self.health.lost += len(self.pending) - len(kept)
                    self.pending = deque(kept)
                self._space.notify_all()

    async def _send(self, batch: list[Write]) -> list[Any]:
        k = self.link.keys
        pipe = self.link.client.pipeline(transaction=False)
        for w in batch:
            await self._apply(keys=w.keys, args=w.args, client=pipe)
        streams = sorted({w.stream for w in batch})
        pipe.sadd(k.streams, *streams)
        for s in streams:
            pipe.xadd(k.feed, {"s": s}, maxlen=FEED_KEPT, approximate=True)
        results = await pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, self.link.errors()):
                raise r
        return list(results[: len(batch)])

    def _settle(self, write: Write, result: Any) -> None:
        if isinstance(result, Exception):
            self.health.lost += 1
            self.health.last_error = str(result)
            log.error("a write of stream %s failed: %s", write.stream, result)
            return
        code = int(result[0])
        if code in (0, 1):
            self.health.acked += 1
            if code == 1 and len(result) > 1 and result[1]:
                inbox = self.queried.setdefault(write.stream, set())
                inbox.update(int(x) for x in result[1])
        elif code == -1:
            self.health.lost += 1
            holder = result[1].decode() if len(result) > 1 else "another process"
            self.leases.fence(write.stream, holder)
        else:  # the snippet is stored already: someone else wrote it; reload before going on
            log.warning("stream %s: snippet already stored by another writer", write.stream)
            self.stored_elsewhere(write.stream)

    def _unreachable(self, e: BaseException, buffered: int, wait: float) -> None:
        h = self.health
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
                self.link.shown, h.last_error, buffered, wait,
            )  # fmt: skip

    def _reachable(self) -> None:
        h = self.health
        if not h.connected:
            log.warning("Redis at %s is reachable again", self.link.shown)
        h.connected, h.unreachable_since = True, None


async def delete_keys(link: RedisLink, stream: str) -> dict[str, int]:
    """Delete every key of the stream but its lease (which the caller holds), take it off the
    registry and hint the query processes; how many moments, keyframes and gaps went."""
    k = link.keys
    client = link.client
    timeline, gaps = k.timeline(stream), k.gaps(stream)
    moments, marks = await read(client, lambda p: (p.zcard(timeline), p.zcard(gaps)))
    lease = k.lease(stream)
    keyframes = 0
    doomed: list[bytes] = []
    async for key in client.scan_iter(match=f"{k.tag(stream)}:*", count=1000):
        if key.decode() == lease:
            continue
        keyframes += ":kf:" in key.decode()
        doomed.append(key)
    for i in range(0, len(doomed), 500):
        await client.unlink(*doomed[i : i + 500])
    pipe = client.pipeline(transaction=False)
    pipe.srem(k.streams, stream)
    pipe.xadd(k.feed, {"s": stream}, maxlen=FEED_KEPT, approximate=True)
    await pipe.execute()
    return {"moments": int(moments), "keyframes": int(keyframes), "gaps": int(marks)}

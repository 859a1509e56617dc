"""Follower: keeps this process's LocalIndex (dense + lexical) in sync with every stream's
change log (a Redis Stream), incrementally. A hint feed wakes it as soon as a stream changes,
and a sweep every few seconds catches anything a hint missed. New moments seen there are
scored against this process's standing queries (watch), so a process ingesting stream A pushes
to a client connected to any other process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from livesense.memory.evidence_codec import evidence_from_json
from livesense.memory.local_index import LocalIndex
from livesense.memory.record_codec import EVIDENCE, LEX, META, TOKENS, unpack_meta, unpack_tokens
from livesense.memory.redis.link import RedisLink, log
from livesense.memory.redis.pipelined import pipelined, read
from livesense.records import SnippetRecord

if TYPE_CHECKING:
    from livesense.memory.watch import WatchHub

SWEEP_SECONDS = 5.0  # the follower checks every stream this often, hint or not...
SWEEP_SLICES = 5  # ...a slice of them at a time, so that a sweep never holds up searches
SWEEP_CHUNK = 200  # streams checked in one round trip
CHANGES_READ = 1000  # change-log entries read in one round trip


class Follower:
    """The local index and how far each stream's change log has been applied to it."""

    def __init__(self, link: RedisLink, hub: WatchHub | None) -> None:
        self.link = link
        self.hub = hub
        self.local = LocalIndex()
        self._chg: dict[str, bytes] = {}  # stream -> id of the last change applied
        self._lock = asyncio.Lock()
        self._feed_id = b"0-0"

    async def start(self) -> None:
        """Load every stream's index (before the first search) and note where the feed is."""
        feed = await self.link.client.xrevrange(self.link.keys.feed, count=1)
        self._feed_id = feed[0][0] if feed else b"0-0"
        await self.sweep(publish=False)
        if self.local.dense:  # the first searches run on fitted lists, not beside a fit
            await asyncio.to_thread(self.local.vectors.maybe_fit, wait=True)

    async def drop_stream(self, stream: str) -> None:
        """Forget a stream that was deleted."""
        async with self._lock:
            self.local.drop_stream(stream)
            self._chg.pop(stream, None)

    async def follow_loop(self) -> None:
        """Apply the streams the feed names as they change, and sweep a slice at a time."""
        client, feed = self.link.client, self.link.keys.feed
        last_sweep = time.monotonic()
        turn = 0
        backoff = 0.1
        while True:
            try:
                got = await client.xread({feed: self._feed_id}, count=1000, block=1000)
                touched: set[str] = set()
                for _, entries in got or []:
                    for entry_id, fields in entries:
                        self._feed_id = entry_id
                        touched.add(fields[b"s"].decode())
                for stream in sorted(touched):
                    await self.sync_stream(stream, publish=True)
                if time.monotonic() - last_sweep >= SWEEP_SECONDS / SWEEP_SLICES:
                    await self.sweep(publish=True, part=turn % SWEEP_SLICES, parts=SWEEP_SLICES)
                    turn += 1
                    last_sweep = time.monotonic()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except self.link.errors() as e:
                log.warning("following changes in Redis failed (%s); retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.link.settings.retry_max)
            except Exception:
                log.exception("following changes in Redis failed")
                await asyncio.sleep(1.0)

    async def sweep(self, *, publish: bool, part: int = 0, parts: int = 1) -> None:
        """Bring the local index up to date with every stream (with parts > 1: with the
        part-th slice of the known streams, and with every new one)."""
        client, k = self.link.client, self.link.keys
        streams = sorted(s.decode() for s in await client.smembers(k.streams))
        async with self._lock:
            for gone in set(self._chg) - set(streams):  # deleted meanwhile
                self.local.drop_stream(gone)
                self._chg.pop(gone, None)
        known = [s for s in streams[part::parts] if s in self._chg]

        def ask(pipe: Any, s: str) -> None:
            pipe.xrevrange(k.changes(s), count=1)

        async for chunk in pipelined(client, known, ask, chunk=SWEEP_CHUNK):
            for s, [last] in chunk:
                if last and last[0][0] != self._chg[s]:
                    await self.sync_stream(s, publish=publish)
        for s in streams:
            if s not in self._chg:
                await self.sync_stream(s, publish=False)

    async def sync_stream(self, stream: str, *, publish: bool) -> None:
        """Apply the stream's changes since the last one applied (reloading it when the log
        was trimmed past that, dropping it when the log is gone)."""
        changes = self.link.keys.changes(stream)
        async with self._lock:
            while True:
                last = self._chg.get(stream)
                if last is None:
                    await self._reload_stream(stream)
                    return

                def ask(pipe: Any, since: bytes = b"(" + last) -> None:
                    pipe.xrange(changes, min=since, count=CHANGES_READ)  # what came since
                    pipe.xrange(changes, count=1)  # the oldest change still logged

                entries, oldest = await read(self.link.client, ask)
                if oldest and id_after(oldest[0][0], last):  # trimmed past us
                    await self._reload_stream(stream)
                    return
                if not oldest:  # no change log: the stream was deleted
                    self.local.drop_stream(stream)
                    self._chg.pop(stream, None)
                    return
                if not entries:
                    return
                await self._apply_changes(stream, entries, publish)
                self._chg[stream] = entries[-1][0]
                if len(entries) < CHANGES_READ:
                    return

    async def _reload_stream(self, stream: str) -> None:
        client, k = self.link.client, self.link.keys
        newest = await client.xrevrange(k.changes(stream), count=1)
        members = await client.zrange(k.timeline(stream), 0, -1)
        firsts = [k.parse_member(m)[0] for m in members]
        self.local.drop_stream(stream)
        await self._fetch_into_index(stream, firsts, publish=())
        self._chg[stream] = newest[0][0] if newest else b"0-0"

    async def _apply_changes(self, stream: str, entries: list[Any], publish: bool) -> None:
        puts: dict[int, None] = {}
        new: set[int] = set()
        for _, fields in entries:
            for idx in ints(fields.get(b"drop", b"")):
                self.local.drop(stream, idx)
                puts.pop(idx, None)
            for idx in ints(fields.get(b"put", b"")):
                puts[idx] = None
            if publish and fields.get(b"new"):
                new.add(int(fields[b"new"]))
        await self._fetch_into_index(stream, list(puts), publish=new & set(puts))

    async def _fetch_into_index(
        self, stream: str, indices: list[int], publish: Iterable[int]
    ) -> None:
        """Read the records into the local index; tell the watchers of those in `publish`."""
        hub = self.hub
        watched = set(publish) if hub is not None and len(hub) else set()
        k = self.link.keys
        plain = [META, LEX] if not self.local.dense else [META, LEX, TOKENS]

        def ask(pipe: Any, idx: int) -> None:
            pipe.hmget(k.record(stream, idx), [META, LEX, TOKENS, EVIDENCE] if idx in watched
                       else plain)  # fmt: skip

        async for chunk in pipelined(self.link.client, indices, ask):
            published: list[SnippetRecord] = []
            rows = []
            for idx, [values] in chunk:
                if values[0] is None:
                    self.local.drop(stream, idx)  # merged away since
                    continue
                meta = unpack_meta(values[0])
                tokens = unpack_tokens(values[2] if len(values) > 2 else None)
                rows.append((idx, meta.start, meta.end, tokens, (values[1] or b"").decode()))
                if idx in watched:
                    published.append(SnippetRecord(
                        stream, idx, meta.start, meta.end, tokens, meta.modalities, meta.times,
                        evidence_from_json(values[3].decode()), count=meta.count,
                    ))  # fmt: skip
            self.local.put_many(stream, rows)
            if hub is None:
                continue
            for record in published:
                try:
                    hub.publish(record)
                except Exception:
                    log.exception("publishing moment %s/%s failed", stream, record.index)


def ints(raw: bytes) -> list[int]:
    """The indices of a change-log field ('3,7,12')."""
    return [int(x) for x in raw.split(b",") if x]


def id_after(a: bytes, b: bytes) -> bool:
    """Whether stream entry id a comes after b."""
    ma, _, sa = a.partition(b"-")
    mb, _, sb = b.partition(b"-")
    return (int(ma), int(sa or 0)) > (int(mb), int(sb or 0))

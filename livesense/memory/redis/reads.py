"""Reads: stored moments, stream listings, summaries, keyframes and counts, as coroutines for
the store's loop thread. Records of a stream are read by index from its timeline (a ZSET of
'first:last' members) in pipelined round trips."""

from __future__ import annotations

from typing import Any

from livesense.memory.consolidate import Stored
from livesense.memory.evidence_codec import evidence_from_json
from livesense.memory.record_codec import EVIDENCE, META, TIER, unpack_meta, unpack_record
from livesense.memory.redis.link import RedisLink
from livesense.memory.redis.pipelined import read_all
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import TimelineMoment
from livesense.records import Hit, SnippetRecord

QUERIED_TTL = 3600  # seconds a set of queried snippets waits for its stream's writer


class Reads:
    """What the store reads from Redis."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    async def _records(
        self, stream: str, firsts: list[int], fields: list[bytes] | None = None
    ) -> list[Stored]:
        """The records of `stream` that start at the given indices and are still stored: all
        their fields, or only `fields` (of FIELDS)."""
        record = self.link.keys.record

        def ask(pipe: Any, idx: int) -> None:
            if fields is None:
                pipe.hgetall(record(stream, idx))
            else:
                pipe.hmget(record(stream, idx), fields)

        out: list[Stored] = []
        for idx, [values] in await read_all(self.link.client, firsts, ask):
            got = (
                values
                if fields is None
                else {f: v for f, v in zip(fields, values, strict=True) if v is not None}
            )
            if META in got:
                out.append(unpack_record(stream, idx, got))
        return out

    async def _firsts(self, stream: str, start: int = 0, stop: int = -1) -> list[int]:
        """The first snippet indices of the stream's records, in time order (a rank range)."""
        k = self.link.keys
        members = await self.link.client.zrange(k.timeline(stream), start, stop)
        return [k.parse_member(m)[0] for m in members]

    async def load_stream(self, stream: str) -> tuple[list[Stored], StreamSummary | None]:
        """Every record of the stream and its summary: its tiers as stored."""
        items = await self._records(stream, await self._firsts(stream))
        return items, await self.summary(stream)

    async def hits(self, ranked: list[tuple[str, int, float]]) -> list[Hit]:
        """The ranked moments that are still stored, as hits; each stream's writer hears
        which of its snippets were returned (they become key moments)."""
        k = self.link.keys

        def queried(pipe: Any) -> None:
            for s in {s for s, _, _ in ranked}:
                pipe.sadd(k.queried(s), *[idx for x, idx, _ in ranked if x == s])
                pipe.expire(k.queried(s), QUERIED_TTL)

        replies = await read_all(
            self.link.client, ranked,
            lambda pipe, r: pipe.hmget(k.record(r[0], r[1]), [META, EVIDENCE]), also=queried,
        )  # fmt: skip
        hits: list[Hit] = []
        for (s, idx, score), [(meta_raw, ev_raw)] in replies:
            if meta_raw is None:
                continue  # merged away since the index saw it
            meta = unpack_meta(meta_raw)
            hits.append(Hit(s, meta.start, meta.end, score, evidence_from_json(ev_raw.decode()),
                            idx))  # fmt: skip
        return hits

    async def stream_ids(self) -> list[str]:
        return sorted(s.decode() for s in await self.link.client.smembers(self.link.keys.streams))

    async def streams(self) -> list[dict[str, Any]]:
        """Per stream: stored records, covered span and snippets they stand for."""
        k = self.link.keys
        out = []
        for s, (records, raw) in await read_all(
            self.link.client, await self.stream_ids(),
            lambda pipe, s: (pipe.zcard(k.timeline(s)), pipe.hget(k.meta(s), "summary")),
        ):  # fmt: skip
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

    async def summary(self, stream: str) -> StreamSummary | None:
        """The stream's abstract tier."""
        raw = await self.link.client.hget(self.link.keys.meta(stream), "summary")
        return None if raw is None else StreamSummary.from_json(raw)

    async def moments(self, stream: str) -> list[TimelineMoment]:
        """The stream's stored moments in time order (no tokens read)."""
        items = await self._records(stream, await self._firsts(stream), [META, TIER, EVIDENCE])
        return [TimelineMoment.of(item) for item in items]

    async def covering(self, stream: str, index: int) -> Stored | None:
        """The stored record that covers snippet `index`, if any."""
        k = self.link.keys
        prev = await self.link.client.zrevrangebyscore(
            k.timeline(stream), index, "-inf", start=0, num=1
        )
        if not prev:
            return None
        first, last = k.parse_member(prev[0])
        if last < index:
            return None
        return next(iter(await self._records(stream, [first])), None)

    async def following(self, stream: str, index: int) -> SnippetRecord | None:
        """The stored record after the one starting at snippet `index`, if any."""
        k = self.link.keys
        nxt = await self.link.client.zrangebyscore(
            k.timeline(stream), f"({index}", "+inf", start=0, num=1
        )
        if not nxt:
            return None
        found = await self._records(stream, [k.parse_member(nxt[0])[0]])
        return found[0].record if found else None

    async def recent(self, stream: str, n: int) -> list[SnippetRecord]:
        """The newest `n` stored records of a stream, oldest first."""
        items = await self._records(stream, await self._firsts(stream, -max(1, n), -1))
        return [item.record for item in items]

    async def keyframe(self, stream: str, index: int) -> bytes | None:
        """The JPEG of snippet `index`, or of the keyframe its covering moment refers to."""
        client, k = self.link.client, self.link.keys
        data = await client.get(k.keyframe(stream, index))
        if data is not None:
            return bytes(data)
        item = await self.covering(stream, index)
        ref = None if item is None else item.record.evidence.keyframe
        if not ref:
            return None
        name = ref.rsplit("/", 1)[-1].removesuffix(".jpg")
        if not name.isdigit():
            return None
        data = await client.get(k.keyframe(stream, int(name)))
        return None if data is None else bytes(data)

    async def next_index(self, stream: str) -> int:
        """The snippet index after the last one stored (0 for a new stream)."""
        k = self.link.keys
        members = await self.link.client.zrange(k.timeline(stream), -1, -1)
        return k.parse_member(members[0])[1] + 1 if members else 0

    async def count(self, streams: list[str]) -> int:
        """Stored records of the given streams."""
        k = self.link.keys
        counts = await read_all(
            self.link.client, streams, lambda pipe, s: pipe.zcard(k.timeline(s))
        )
        return sum(int(n) for _, [n] in counts)

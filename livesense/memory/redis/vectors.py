"""RecordVectors: the query engine's vector index over every record (Redis 8, or Redis Stack's
search module). Where the server has one, every record hash also carries its pooled token
vector (FLOAT16), its stream (TAG) and its time span (NUMERIC), and one HNSW index covers all
records; a search asks it for the nearest records within the stream and time filters (FT.SEARCH
KNN, DIALECT 2), re-scores them exactly from their tokens, and mixes them with the lexical
candidates of the local index, which then keeps no tokens at all."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from livesense.engines.text import DIM
from livesense.errors import LivesenseError
from livesense.memory.index import matvec, to_float32
from livesense.memory.local_index import Key, Lexical, LocalIndex
from livesense.memory.record_codec import META, TOKENS, unpack_meta, unpack_tokens
from livesense.memory.redis.link import RedisLink, log
from livesense.memory.redis.pipelined import pipelined
from livesense.memory.search import SearchQuery
from livesense.memory.time_window import redis_window

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


class RecordVectors:
    """Creates and fills the records' vector index, and finds the nearest records in it."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.engine = False  # the server has a query engine: records carry their vectors

    async def open(self, want: bool | None) -> str:
        """Find out whether the server has a query engine; if so, make sure the records' index
        exists (the process that creates it gives the records already stored their vectors).
        Returns where searches look for vectors: QUERY_ENGINE only when told to (want=True; one
        sentence if the server cannot), else LOCAL_INDEX: Redis's HNSW holds one pooled vector
        per record and finds far fewer of the exact best moments (bench.index_compare)."""
        link, aioredis = self.link, self.link.aioredis
        self._backfill_script = link.client.register_script(BACKFILL_LUA)
        try:
            await link.client.execute_command("FT._LIST")
            self.engine = True
        except aioredis.ResponseError:
            self.engine = False
        if want and not self.engine:
            await link.client.aclose()
            raise LivesenseError(
                f"Redis at {link.shown} has no query engine (Redis 8 or Redis Stack), "
                "so it cannot keep a vector index."
            )
        if self.engine:
            try:
                created = await self._create_index()
                if created or not await link.client.exists(link.keys.vectors_filled):
                    await self._backfill()
            except aioredis.ResponseError as e:
                if want:
                    await link.client.aclose()
                    raise LivesenseError(
                        f"Redis at {link.shown} refused the vector index ({e})."
                    ) from None
                log.warning("Redis refused the vector index (%s); vectors stay local", e)
                self.engine = False
        where = QUERY_ENGINE if self.engine and want else LOCAL_INDEX
        log.info(
            "Redis at %s: vector search in %s", link.shown,
            "Redis's query engine" if where == QUERY_ENGINE else "this process's index",
        )  # fmt: skip
        return where

    async def _create_index(self) -> bool:
        """Create the records' vector index (False: it exists already)."""
        k = self.link.keys
        vector = ["TYPE", "FLOAT16", "DIM", DIM, "DISTANCE_METRIC", "COSINE", *HNSW]
        try:
            await self.link.client.execute_command(
                "FT.CREATE", k.vector_index, "ON", "HASH", "PREFIX", 1, k.records_under,
                "FILTER", 'contains(@__key, ":r:")', "SCHEMA",
                VEC, "VECTOR", "HNSW", len(vector), *vector,
                VSTREAM, "TAG", "CASESENSITIVE", VSTART, "NUMERIC", VEND, "NUMERIC",
            )  # fmt: skip
        except self.link.aioredis.ResponseError as e:
            if "exists" in str(e).lower():
                return False
            raise
        log.info("created the vector index %s in Redis", k.vector_index)
        return True

    async def _backfill(self) -> None:
        """Give the records stored before the index existed their vector fields."""
        client, k = self.link.client, self.link.keys
        done = 0
        for stream in sorted(s.decode() for s in await client.smembers(k.streams)):
            members = await client.zrange(k.timeline(stream), 0, -1)
            firsts = [k.parse_member(m)[0] for m in members]

            def ask(pipe: Any, idx: int, stream: str = stream) -> None:
                pipe.hmget(k.record(stream, idx), [META, TOKENS])

            async for part in pipelined(client, firsts, ask):
                writes = client.pipeline(transaction=False)
                for idx, [(meta_raw, tok)] in part:
                    if meta_raw is None or tok is None:
                        continue
                    meta = unpack_meta(meta_raw)
                    fields = vector_fields(stream, meta.start, meta.end, unpack_tokens(tok))
                    args = [tok, *[x for kv in fields.items() for x in kv]]
                    key = k.record(stream, idx)
                    await self._backfill_script(keys=[key], args=args, client=writes)
                    done += 1
                await writes.execute()
        await client.set(k.vectors_filled, b"1")
        if done:
            log.info("gave %d stored records their vectors for the index", done)

    async def search(self, local: LocalIndex, q: SearchQuery) -> tuple[Lexical, dict[Key, float]]:
        """The lexical candidates (found in `local`) and the exact cosines of the query's
        dense candidates (the nearest records, found by the query engine) and of the lexical
        candidates. The nearest are asked for first, so that Redis looks for them while the
        lexical side runs in a thread here."""
        near = asyncio.ensure_future(
            self._knn(q.vector, q.stream, q.start, q.end, q.dense_candidates)
        )
        near.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen if left
        try:
            lexical = await asyncio.to_thread(
                local.lexical, q.text, stream=q.stream, start=q.start, end=q.end
            )
            named = await self._cosines(q.vector, list(lexical.texts))
            return lexical, {**named, **await near}
        except self.link.aioredis.ResponseError as e:  # e.g. the index was dropped meanwhile
            raise LivesenseError(
                f"Redis at {self.link.shown} could not search vectors ({e})."
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
        reply = await self.link.client.execute_command(
            "FT.SEARCH", self.link.keys.vector_index, query, "PARAMS", len(params), *params,
            "SORTBY", "knn_d", "RETURN", 1, TOKENS, "LIMIT", 0, int(k), "DIALECT", 2,
        )  # fmt: skip
        return self._scored(reply, q)

    async def _cosines(self, qvec: np.ndarray, names: list[Key]) -> dict[Key, float]:
        """Exact cosines (the best of their tokens) of the named records still stored. Their
        tokens come in one reply of the query engine (INKEYS), not one per record: a reply per
        record costs the client more than the query itself."""
        if not names:
            return {}
        k = self.link.keys
        keys = [k.record(s, idx) for s, idx in names]
        reply = await self.link.client.execute_command(
            "FT.SEARCH", k.vector_index, "*", "INKEYS", len(keys), *keys,
            "RETURN", 1, TOKENS, "LIMIT", 0, len(keys), "DIALECT", 2,
        )  # fmt: skip
        return self._scored(reply, np.ascontiguousarray(qvec, np.float32))

    def _scored(self, reply: Any, q: np.ndarray) -> dict[Key, float]:
        """Each record of an FT.SEARCH reply (RETURN tokens) with its exact cosine."""
        found = [
            (name, tok)
            for key, fields in search_rows(reply)
            if (name := self.link.keys.parse_record(key)) is not None
            and (tok := fields.get(TOKENS))
        ]
        cosines = best_cosines([tok for _, tok in found], q)
        return {name: c for (name, _), c in zip(found, cosines.tolist(), strict=True)}


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


def search_rows(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
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

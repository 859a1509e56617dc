"""What catching changed on-screen text costs: the vision stage on three clips, with OCR run
again on a whole-picture change only (`perception.ocr_region_change: 1`) and on a change in
any region too (the default), both in the same run.

    .venv/bin/python -m bench.ocr_change [--seconds 30]

Clips (1280x720, 25 fps, H.264, snippets of 2 s; speech, events and faces off, so the vision
stage is what is timed):
- slides: one still slide whose caption alone changes every 5 s, at snippet boundaries and
  between them (the case the region rule is for);
- corner: a still picture with a ball moving in one corner and no text change (the region
  rule's worst case: a local change in every snippet);
- cards: the main benchmark's title cards (background and text change together every 7.5 s).

Each clip is ingested `--repeat` times per rule, the rules alternating; times are the median
run's (the machine is shared); OCR reads are counted and do not vary.
Writes bench/results/ocr-change.json and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from statistics import median
from typing import Any

import av
import cv2
import numpy as np

from bench.run import scenes
from livesense.config import load_settings
from livesense.pipeline import metrics
from livesense.pipeline.stream_pipeline import StreamPipeline
from livesense.sample import make_sample
from livesense.service import open_services

RESULTS = Path(__file__).parent / "results"
SIZE = (1280, 720)
FPS = 25
CAPTIONS = [
    "GATE B-52 NOW BOARDING",
    "CAFE CLOSED EXIT LEFT",
    "PLATFORM 9 ROME 07:30",
    "LOST PROPERTY DESK A17",
    "TAXI RANK EXIT 3",
]
STEP = 5.0  # slides: seconds between caption changes (on a snippet boundary every other time)


def still(caption: str | None) -> np.ndarray:
    """The still picture of the slides and corner clips, with a caption bar if given."""
    w, h = SIZE
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 60, 110)
    cv2.circle(img, (w // 4, h // 3), h // 6, (200, 160, 40), -1)
    cv2.rectangle(img, (w * 5 // 8, h // 7), (w * 9 // 10, h * 5 // 9), (60, 140, 60), -1)
    cv2.rectangle(img, (0, h * 7 // 9), (w, h * 11 // 12), (15, 15, 15), -1)
    if caption:
        cv2.putText(
            img,
            caption,
            (w // 20, h * 7 // 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            h / 450,
            (255, 255, 255),
            3,
            cv2.LINE_AA,
        )
    return img


def caption_at(t: float) -> str:
    return CAPTIONS[int(t // STEP) % len(CAPTIONS)]


def write_clip(path: Path, seconds: float, frame: Callable[[float], np.ndarray]) -> Path:
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "23"})
        vs.width, vs.height = SIZE
        vs.pix_fmt = "yuv420p"
        for n in range(int(seconds * FPS)):
            vf = av.VideoFrame.from_ndarray(frame(n / FPS), format="rgb24")
            vf.pts = n
            vf.time_base = Fraction(1, FPS)
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
    return path


def corner(t: float) -> np.ndarray:
    img = still("GATE B-52 NOW BOARDING")
    w, h = SIZE
    x = int(w * 0.7 + 0.2 * w * (0.5 + 0.5 * np.sin(t * 1.3)))
    cv2.circle(img, (x, h // 6), h // 14, (230, 230, 230), -1)
    return img


def vision_ms() -> tuple[float, float]:
    """(sum, count) of the vision stage's timings so far."""
    total = count = 0.0
    for metric in metrics.STAGE_SECONDS.collect():
        for s in metric.samples:
            if s.labels.get("stage") == "vision":
                if s.name.endswith("_sum"):
                    total = s.value
                elif s.name.endswith("_count"):
                    count = s.value
    return total, count


async def ingest(clip: Path, memory: Path, region: float) -> dict[str, Any]:
    settings = load_settings(
        memory=memory,
        **{
            "perception.asr": False,
            "perception.events": False,
            "perception.faces": False,
            "perception.ocr_region_change": region,
        },
    )
    services = open_services(settings)
    store, perception = services.store, services.perception
    assert perception is not None
    await asyncio.to_thread(perception.load)
    reader: Any = perception._ocr
    calls0 = reader.calls
    sum0, n0 = vision_ms()
    pipeline = StreamPipeline("bench", str(clip), settings, store, perception)
    t0 = time.perf_counter()
    status = await pipeline.run()
    wall = time.perf_counter() - t0
    sum1, n1 = vision_ms()
    records = store.recent("bench", 1000)
    store.close()
    if status.error:
        raise SystemExit(f"ingest failed: {status.error}")
    return {
        "wall_s": wall,
        "snippets": status.snippets,
        "ocr_reads": reader.calls - calls0,
        "vision_ms": 1000 * (sum1 - sum0) / max(1.0, n1 - n0),
        "texts": [(r.start, r.end, " ".join(r.evidence.ocr_texts())) for r in records],
    }


def on_time(texts: list[tuple[float, float, str]]) -> float:
    """Share of slides snippets whose text holds every caption shown during them, and no other."""
    good = 0
    for start, end, text in texts:
        shown = {caption_at(t) for t in np.arange(start, end, 0.5)}
        words = "".join(text.split()).upper()
        first = {c: c.split()[0] for c in CAPTIONS}
        ok = all(first[c] in words for c in shown)
        ok = ok and not any(first[c] in words for c in set(CAPTIONS) - shown)
        good += ok
    return good / max(1, len(texts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=3, help="Runs per clip and rule (median kept).")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "load_1min_at_start": round(os.getloadavg()[0], 1),
        "clips": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = {
            "slides": write_clip(work / "slides.mp4", args.seconds, lambda t: still(caption_at(t))),
            "corner": write_clip(work / "corner.mp4", args.seconds, corner),
        }
        cards = work / "cards.mp4"
        make_sample(cards, scenes(args.seconds), size=SIZE, fps=FPS)
        clips["cards"] = cards
        for name, clip in clips.items():
            row: dict[str, Any] = {}
            runs: dict[str, list[dict[str, Any]]] = {"whole": [], "region": []}
            for k in range(args.repeat):  # alternating, so neither rule always runs cold
                for rule, region in (("whole", 1.0), ("region", 0.03)):
                    memory = work / f"m-{name}-{rule}-{k}"
                    runs[rule].append(asyncio.run(ingest(clip, memory, region)))
            for rule, done in runs.items():
                r = done[-1]
                row[rule] = {
                    "x_realtime": round(args.seconds / median([x["wall_s"] for x in done]), 2),
                    "ocr_reads_per_snippet": round(r["ocr_reads"] / max(1, r["snippets"]), 2),
                    "vision_ms_per_snippet": round(median([x["vision_ms"] for x in done]), 1),
                    "snippets": sorted({x["snippets"] for x in done}),
                }
                if name == "slides":
                    row[rule]["snippets_with_the_right_text"] = round(on_time(r["texts"]), 3)
            row["vision_cost_ratio"] = round(
                row["region"]["vision_ms_per_snippet"]
                / max(1e-9, row["whole"]["vision_ms_per_snippet"]),
                2,
            )
            result["clips"][name] = row
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ocr-change.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    rows = [
        "| clip | rule | OCR reads / snippet | vision ms / snippet | right text | x real time |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in r["clips"].items():
        for rule in ("whole", "region"):
            x = row[rule]
            right = x.get("snippets_with_the_right_text")
            rows.append(
                f"| {name} | {rule} | {x['ocr_reads_per_snippet']} | "
                f"{x['vision_ms_per_snippet']} | {'' if right is None else f'{right:.0%}'} | "
                f"{x['x_realtime']} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

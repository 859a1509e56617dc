"""Vision models' benchmark: what the object detector and the scene classifier cost.

    .venv/bin/python -m bench.vision [--seconds 60] [--webrtc 4] [--webrtc-seconds 30]

In one run, on the Foundation benchmark's 720p30 clip (speech and on-screen text, a new
picture every 7.5 s) and on a busy 720p30 clip (a new picture every 2 s snippet, so the models
run on every snippet): bare `ffmpeg` decoding, then ingest with every default model but the
two vision models, then with them (the default). Ingest speed is reported as x real time and
as a ratio to bare ffmpeg in the same run, since the machine may be shared. The detector's
and the classifier's cost per snippet and per call come from their own counters. With
--webrtc N, N WebRTC publishers are run (bench.webrtc) with the vision models off and on.
Writes bench/results/vision.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import SENTENCES, ffmpeg_decode_seconds, run_to_end, scenes
from livesense.config import load_settings
from livesense.pipeline.stream_pipeline import StreamPipeline
from livesense.sample import Scene, make_sample
from livesense.service import open_services

RESULTS = Path(__file__).parent / "results"
VISION_OFF = {"perception.objects": False, "perception.scenes": False}


async def ingest(clip: Path, memory: Path, vision: bool) -> dict[str, Any]:
    settings = load_settings(memory=memory, **({} if vision else VISION_OFF))
    services = open_services(settings)
    store, perception = services.store, services.perception
    assert perception is not None
    await asyncio.to_thread(perception.load)
    pipeline = StreamPipeline("bench", str(clip), settings, store, perception)
    detector: Any = getattr(perception, "_detector", None)
    classifier: Any = getattr(perception, "_scenes", None)
    before = [(m.calls, m.seconds) if m is not None else (0, 0.0) for m in (detector, classifier)]
    status, wall = await run_to_end(pipeline, store)
    out: dict[str, Any] = {"wall_s": round(wall, 2), "snippets": status.snippets}
    for name, model, (calls0, seconds0) in zip(
        ("detector", "classifier"), (detector, classifier), before, strict=True
    ):
        if model is None:
            continue
        calls, seconds = model.calls - calls0, model.seconds - seconds0
        out[name] = {
            "calls": calls,
            "ms_per_call": round(1000 * seconds / max(1, calls), 1),
            "ms_per_snippet": round(1000 * seconds / max(1, status.snippets), 1),
        }
    return out


def busy_scenes(seconds: float) -> list[Scene]:
    """A new picture every snippet (2 s): the detector and the classifier run on each one."""
    out = []
    for i in range(int(seconds // 2)):
        a, b, said = SENTENCES[i % len(SENTENCES)]
        colour = ((37 * i) % 200 + 20, (91 * i) % 200 + 20, (53 * i) % 200 + 20)
        out.append(Scene(2.0, [a, b], said, colour))
    return out


def compare(clip: Path, duration: float, work: Path) -> dict[str, Any]:
    """Bare ffmpeg, ingest with the vision models off, then on, then ffmpeg again."""
    bare = ffmpeg_decode_seconds(clip) or float("nan")
    off = asyncio.run(ingest(clip, work / f"{clip.stem}-off", vision=False))
    on = asyncio.run(ingest(clip, work / f"{clip.stem}-on", vision=True))
    bare_after = ffmpeg_decode_seconds(clip) or float("nan")
    ffmpeg_x = duration / ((bare + bare_after) / 2)
    for run in (off, on):
        run["x_realtime"] = round(duration / run["wall_s"], 2)
        run["ratio_to_ffmpeg"] = round(run["x_realtime"] / ffmpeg_x, 3)
    return {
        "ffmpeg_decode_x_realtime": round(ffmpeg_x, 1),
        "vision_off": off,
        "vision_on": on,
        "on_vs_off": round(on["x_realtime"] / off["x_realtime"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="Length of the 720p clip.")
    ap.add_argument("--webrtc", type=int, default=0, help="Also run this many publishers.")
    ap.add_argument("--webrtc-seconds", type=float, default=30.0)
    args = ap.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = work / "bench720p.mp4"
        duration = make_sample(clip, scenes(args.seconds), size=(1280, 720), fps=30)
        result["clip"] = {"seconds": duration, "size": "1280x720", "fps": 30}
        result["ingest"] = compare(clip, duration, work)
        busy = work / "busy720p.mp4"
        busy_seconds = make_sample(busy, busy_scenes(args.seconds / 2), size=(1280, 720), fps=30)
        result["ingest_busy"] = {"seconds": busy_seconds, **compare(busy, busy_seconds, work)}
        if args.webrtc:
            from bench import webrtc

            n, secs = args.webrtc, args.webrtc_seconds
            result["webrtc"] = [
                webrtc.run(n, secs, work, extra=VISION_OFF, label="default, vision off"),
                webrtc.run(n, secs, work, label="default"),
            ]
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vision.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

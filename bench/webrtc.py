"""WebRTC benchmark: glass-to-memory latency and concurrent publishers held in real time.

    .venv/bin/python -m bench.webrtc [--quick] [--publishers 1,2,4] [--seconds 40]

The service (default models) runs in this process behind uvicorn; the publishers run in a
child process (aiortc, 640x480 VP8 + Opus at 15 fps; the video is encoded once beforehand, so
publishers cost almost nothing and the server's CPU is measured alone). Each frame carries its
capture time (ms from its publisher's start, a bar of blocks along the bottom) and shows a
caption while a voice reads a sentence. Glass-to-memory latency of a frame = the time the
snippet holding it was stored (searchable) minus the frame's capture time. A run is "held in
real time" when nothing was dropped, the snippets kept coming, latency did not drift upward
and its p99 stayed within 2 snippets + the live ASR hold-back (asr_max_utterance).
Writes bench/results/webrtc.json and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
SIZE = (640, 480)
FPS = 15
BITS = 24  # capture time in ms since the run's reference: 4.6 hours of range
SCENE_SECONDS = 7.5
CAPTIONS = [
    (("PLATFORM 9", "ROME 07:30"), "The train to Rome leaves from platform nine at seven thirty."),
    (("CAFE", "OPEN UNTIL 22:00"), "The cafe on the upper level is open until ten tonight."),
    (("GATE B52", "BOARDING"), "Passengers for Berlin please go to gate B fifty two now."),
    (("EXIT 3", "TAXI RANK"), "Taxis wait outside exit three on the east side of the hall."),
]


def percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(xs), q)), 3) if xs else None


# ---- the capture-time bar ----------------------------------------------------------------


def draw_time(img: np.ndarray, ms: int) -> None:
    """Write `ms` into the bottom eighth of the picture as BITS black/white blocks."""
    h, w = img.shape[:2]
    bar = h // 8
    img[h - bar :] = 0
    for i in range(BITS):
        if (ms >> (BITS - 1 - i)) & 1:
            img[h - bar :, w * i // BITS : w * (i + 1) // BITS] = 255


def read_time(img: np.ndarray) -> int:
    """The capture time (ms) a picture's bar says (from a decoded keyframe)."""
    h, w = img.shape[:2]
    gray = img.mean(axis=2)
    y0, y1 = int(h - h / 8 * 0.75), int(h - h / 8 * 0.25)
    value = 0
    for i in range(BITS):
        x0 = int(w * (i + 0.3) / BITS)
        x1 = max(x0 + 1, int(w * (i + 0.7) / BITS))
        value = (value << 1) | int(float(gray[y0:y1, x0:x1].mean()) > 128)
    return value


# ---- publishers (child process) ----------------------------------------------------------


def encode_clip(seconds: float) -> list[bytes]:
    """The publishers' video, encoded once (VP8, 1 s keyframes): the scenes' captions, and in
    every frame its time from the clip's start (ms) in the bar. Sending pre-encoded frames keeps
    the publishers' CPU out of the way of the service being measured."""
    import av

    from livesense.sample import render_card

    cards = [
        render_card(list(lines), SIZE, (20 + 30 * i, 40, 90), 0.0)
        for i, (lines, _) in enumerate(CAPTIONS)
    ]
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
    enc.time_base = fractions.Fraction(1, FPS)
    enc.bit_rate = 1_200_000
    enc.gop_size = FPS
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[bytes] = []
    for n in range(int(seconds * FPS)):
        t = n / FPS
        img = cards[int(t / SCENE_SECONDS) % len(CAPTIONS)].copy()
        x = (n * 6) % (SIZE[0] - 40)
        img[SIZE[1] // 2 - 110 : SIZE[1] // 2 - 100, x : x + 40] = (250, 200, 0)
        draw_time(img, n * 1000 // FPS)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = n
        out.append(b"".join(bytes(p) for p in enc.encode(frame)))
    return out


async def publish_all(url: str, streams: list[str], seconds: float) -> dict[str, Any]:
    import httpx
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from av import AudioFrame, Packet

    from livesense.sample import speak

    clip = encode_clip(seconds + 10.0)
    rate = 48_000
    voice = np.zeros(int(SCENE_SECONDS * len(CAPTIONS) * rate), np.float32)
    for i, (_, said) in enumerate(CAPTIONS):
        speech = speak(said, rate)[: int((SCENE_SECONDS - 1.0) * rate)]
        at = int((i * SCENE_SECONDS + 0.5) * rate)
        voice[at : at + len(speech)] = speech
    pcm = (np.clip(voice, -1, 1) * 32767).astype(np.int16)
    captured: dict[str, list[float]] = {s: [] for s in streams}
    starts: dict[str, float] = {}

    class Camera(MediaStreamTrack):
        """Sends the clip's frame n at start + n / FPS: that is its capture time."""

        kind = "video"

        def __init__(self, stream: str) -> None:
            super().__init__()
            self.stream, self.n, self.start = stream, 0, 0.0

        async def recv(self) -> Any:
            if self.n == 0:
                self.start = starts[self.stream] = time.time()
            due = self.start + self.n / FPS
            await asyncio.sleep(max(0.0, due - time.time()))
            packet = Packet(clip[min(self.n, len(clip) - 1)])
            packet.pts, packet.time_base = self.n * (90_000 // FPS), fractions.Fraction(1, 90_000)
            captured[self.stream].append(due)
            self.n += 1
            return packet

    class Microphone(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.n, self.start = 0, 0.0

        async def recv(self) -> Any:
            samples = rate // 50
            if self.n == 0:
                self.start = time.time()
            due = self.start + self.n / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            i = self.n % (len(pcm) - samples)
            frame = AudioFrame.from_ndarray(
                pcm[i : i + samples].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, self.n
            frame.time_base = fractions.Fraction(1, rate)
            self.n += samples
            return frame

    pcs: list[Any] = []
    locations: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for stream in streams:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver(Camera(stream), direction="sendonly")
            pc.addTransceiver(Microphone(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            r = await client.post(
                f"/whip/{stream}",
                content=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            )
            if r.status_code != 201:
                raise SystemExit(f"publishing {stream} failed: {r.status_code} {r.text}")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
            pcs.append(pc)
            locations.append(r.headers["location"])
        await asyncio.sleep(seconds)
        for where in locations:
            await client.delete(where)
    await asyncio.gather(*(pc.close() for pc in pcs))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"captured": captured, "starts": starts, "cpu_s": usage.ru_utime + usage.ru_stime}


def child_main(args: argparse.Namespace) -> None:
    result = asyncio.run(publish_all(args.url, args.streams.split(","), args.seconds))
    Path(args.out).write_text(json.dumps(result))


# ---- the service and one measured run ----------------------------------------------------


MODELS_OFF = {
    "perception.asr": False,
    "perception.ocr": False,
    "perception.faces": False,
    "perception.events": False,
    "perception.objects": False,
    "perception.scenes": False,
}


def run(
    publishers: int,
    seconds: float,
    work: Path,
    *,
    models: bool = True,
    extra: dict[str, Any] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """One measured run; `extra` settings (e.g. the vision models off) and its `label`."""
    import uvicorn
    from PIL import Image

    from livesense.api.app import create_app
    from livesense.config import load_settings
    from livesense.service import open_services
    from livesense.stream.webrtc import WebRTCSource

    memory = work / f"memory-{publishers}-{label or ('models' if models else 'bare')}"
    overrides: dict[str, Any] = {"webrtc.max_publishers": max(8, publishers)}
    if not models:
        overrides.update(MODELS_OFF)
    overrides.update(extra or {})
    settings = load_settings(memory=memory, **overrides)
    services = open_services(settings, max_streams=max(16, publishers))
    store, manager = services.store, services.manager
    assert services.perception is not None and manager is not None
    services.perception.load()
    app = create_app(services)
    stored: list[tuple[str, int, float, float, float, bytes | None]] = []
    add = store.add

    def add_and_note(record: Any, keyframe: bytes | None = None) -> None:
        add(record, keyframe)
        at = time.time()
        stored.append((record.stream, record.index, record.start, record.end, at, keyframe))

    store.add = add_and_note  # type: ignore[method-assign]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    streams = [f"pub{i}" for i in range(publishers)]
    out = work / f"captured-{publishers}.json"
    command = [sys.executable, "-m", "bench.webrtc", "--child", "--url", f"http://127.0.0.1:{port}"]
    command += ["--streams", ",".join(streams), "--seconds", str(seconds)]
    child = subprocess.Popen([*command, "--out", str(out)])
    # The steady window: from a few seconds after every publisher is up to the end of media.
    warmup = 6.0
    deadline = time.time() + 60
    while len(manager.running()) < publishers and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(warmup)
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    lags: list[float] = []
    while child.poll() is None:
        for status in manager.statuses():
            if status.state == "running" and status.snippets:
                lags.append(status.lag)
        time.sleep(0.5)
        if time.time() - w0 > seconds - warmup + 1.0 and not lags:
            break
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    child.wait(120)
    anchors = {}
    statuses = {}
    for sid in streams:
        pipeline = manager.pipelines.get(sid)
        if pipeline is not None and isinstance(pipeline.source, WebRTCSource):
            anchors[sid] = pipeline.source.timeline.anchor
    deadline = time.time() + 120
    while manager.running() and time.time() < deadline:
        time.sleep(0.5)
    for status in manager.statuses():
        statuses[status.stream] = status.to_json()
    server.should_exit = True
    thread.join(30)
    store.close()
    published = json.loads(out.read_text())
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    bound = 2 * settings.snippet.seconds + settings.perception.asr_max_utterance
    result = summarise(
        publishers, seconds, settings.snippet.seconds, bound, published, stored, anchors,
        statuses, cpu / max(1e-6, w1 - w0), lags, Image,
    )
    name = label or ("default" if models else "none (ingest path only)")
    return {"models": name, **result}


def summarise(
    publishers: int,
    seconds: float,
    snippet: float,
    bound: float,
    published: dict[str, Any],
    stored: list[tuple[str, int, float, float, float, bytes | None]],
    anchors: dict[str, float],
    statuses: dict[str, dict[str, Any]],
    server_cores: float,
    lags: list[float],
    image_module: Any,
) -> dict[str, Any]:
    when = {(s, i): at for s, i, _, _, at, _ in stored}
    latencies: list[float] = []
    early: list[float] = []
    late: list[float] = []
    missing = 0
    for stream, times in published["captured"].items():
        anchor = anchors.get(stream)
        if anchor is None:
            continue
        first, last = times[0], times[-1]
        for c in times[:: max(1, FPS // 2)]:  # every sampled frame (2 per second)
            at = when.get((stream, math.floor((c - anchor) / snippet + 1e-9)))
            if at is None:
                missing += 1
                continue
            latencies.append(at - c)
            if c < first + (last - first) / 3:
                early.append(at - c)
            elif c > last - (last - first) / 3:
                late.append(at - c)
    # The capture time in each stored keyframe against the stream time it was filed under.
    agree, errors = 0, []
    for stream, _, start, end, _, jpeg in stored:
        if jpeg is None or stream not in anchors:
            continue
        ms = read_time(np.asarray(image_module.open(io.BytesIO(jpeg)).convert("RGB")))
        t = published["starts"][stream] + ms / 1000 - anchors[stream]
        errors.append(max(0.0, start - t, t - end))
        agree += int(start - 0.1 <= t <= end + 0.1)
    after_end = [at - anchors[s] - end for s, _, _, end, at, _ in stored if s in anchors]
    drops = sum(s["drops"] for s in statuses.values())
    shed = sum(s["shed"] for s in statuses.values())
    expected = publishers * seconds / snippet
    snippets = sum(s["snippets"] for s in statuses.values())
    p50 = percentile(latencies, 50)
    drift = (percentile(late, 50) or 0.0) - (percentile(early, 50) or 0.0)
    p99 = percentile(latencies, 99)
    held = bool(
        p99 is not None and p99 <= bound and drops == 0 and snippets >= 0.85 * expected
        and drift < 1.0
    )
    return {
        "publishers": publishers,
        "seconds": seconds,
        "glass_to_memory_s": {
            "p50": p50,
            "p90": percentile(latencies, 90),
            "p99": p99,
            "frames": len(latencies),
        },
        "stored_after_snippet_end_s": {
            "p50": percentile(after_end, 50),
            "p99": percentile(after_end, 99),
        },
        "latency_drift_s": round(drift, 3),
        "target_p50_s": snippet + 1.5,
        "held_p99_bound_s": bound,
        "meets_target": p50 is not None and p50 < snippet + 1.5,
        "frames_without_moment": missing,
        "snippets": snippets,
        "snippets_expected": round(expected, 1),
        "drops": drops,
        "shed": shed,
        "status_lag_s": {"p50": percentile(lags, 50), "max": percentile(lags, 100)},
        "keyframe_clock_agreement": round(agree / len(errors), 3) if errors else None,
        "keyframe_clock_error_max_s": round(max(errors), 3) if errors else None,
        "server_cpu_cores": round(server_cores, 2),
        "server_cpu_cores_per_publisher": round(server_cores / publishers, 2),
        "publisher_process_cpu_s": round(published["cpu_s"], 1),
        "held_in_real_time": held,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 and 4 publishers, 30 s each.")
    ap.add_argument("--publishers", default=None, help="Comma-separated counts (default 1,2,4,6).")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument(
        "--bare", default=None,
        help="Comma-separated counts to also run with every model off (default: the largest).",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--streams", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    counts = [int(x) for x in (args.publishers or ("1,4" if args.quick else "1,2,4,6")).split(",")]
    seconds = args.seconds or (30.0 if args.quick else 45.0)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        bare = [int(x) for x in (args.bare or str(max(counts))).split(",") if x]
        plan = [(n, True) for n in counts] + [(n, False) for n in bare]
        for n, models in plan:
            what = "default models" if models else "models off"
            print(f"{n} publisher(s), {seconds:g} s, {what} …", flush=True)
            runs.append(run(n, seconds, Path(tmp), models=models))
            print(json.dumps(runs[-1]), flush=True)
    held = [r["publishers"] for r in runs if r["held_in_real_time"] and r["models"] == "default"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "publisher": f"aiortc, {SIZE[0]}x{SIZE[1]} VP8 (pre-encoded) at {FPS} fps + Opus, "
        "in a child process",
        "models": "defaults (Whisper tiny.en, VAD, audio events, OCR, faces, objects, scenes)",
        "max_publishers_held_default_models": max(held) if held else 0,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "webrtc.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    rows = [
        "| publishers | models | glass-to-memory p50 | p99 | server CPU / publisher | drops | shed "
        "| held in real time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        g = r["glass_to_memory_s"]
        rows.append(
            f"| {r['publishers']} | {r['models'].split(' ')[0]} | {g['p50']} s | {g['p99']} s | "
            f"{r['server_cpu_cores_per_publisher']} cores | {r['drops']} | {r['shed']} | "
            f"{'yes' if r['held_in_real_time'] else 'no'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

"""Streams per GPU: how many live streams one machine holds in real time, and what it costs.

    .venv/bin/python -m bench.gpu_streams --streams 2 --seconds 12            (CPU, small N)
    python3 -m bench.gpu_streams --streams 16 --streams 64 --streams 128 --device auto --procs auto

One real clip (tests/data/speech.wav as its voice, text cards as its picture, H.264 at 10 fps)
is replayed as N live streams, each started at a different offset. Every 2 s each stream
closes a snippet and runs it, as the service does, on the models all streams share:
decode (PyAV, the stream's own thread) -> voice activity (silero, batched) -> OCR on frames
that changed (text detector per canvas and recogniser per line width, batched across
streams) -> any other vision model of the pipeline (an object detector, a scene classifier:
fed the keyframe at its fixed size) -> Whisper on snippets with speech (batched across
streams at a fixed 4 s window) -> text embedding of what was heard and read (batched) ->
the in-process memory. Neural models go where the engine factory places them (the GPU where
it is faster); Whisper on CTranslate2 on the GPU when it loads there, else the CPU.

A snippet's latency is from the moment its last sample arrived (its end on the live clock)
to its record being in memory. A stream is held in real time when its p99 latency stays
under one snippet (2 s), so work never piles up; one that falls 6 s behind is stopped there
(lost), so an overloaded N ends soon. Reports snippets' latency p50/p99, how many streams
were held, CPU and GPU use (nvidia-smi, where there is one) and where time went (seconds per
stage, per snippet and in total; each batcher's mean batch), after every N.

One Python process runs every stream's per-snippet work under one interpreter lock, so past
some N it, not the GPU, is the limit. `--procs P` spreads the N streams over P processes
(spawned, each with its own models and batchers on the shared GPU, as `livesense worker`
processes share a machine); they start together, and one report merges theirs: latency over
every snippet, CPU cores used by all of them, batchers summed. Each run also reports every
model's calls and seconds inside the runtime (`engines`: a batcher's run_seconds less these is
the work around the model on its one thread) and how late a thread that sleeps 5 ms wakes
(`wake_lag_ms`: what each hand-off between threads waits for the interpreter lock and a core).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

SNIPPET = 2.0  # seconds
FPS = 2  # frames per second the pipeline looks at
CLIP_FPS = 10  # frames per second in the clip (decoded, every fifth kept)
RATE = 16_000
WHISPER_WINDOW = 4.0  # seconds: the fixed encoder window of a batched snippet
SPEECH = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech.wav"
CARDS = [
    (["PLATFORM 9", "ROME 07:30"], (20, 40, 90)),
    (["CAFE", "OPEN UNTIL 22:00"], (90, 30, 30)),
]
STAGES = ("decode", "vad", "ocr", "vision", "asr", "text", "memory")
LOST_AFTER = 3 * SNIPPET  # a stream this far behind live is not held: it stops there


def percentile(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 4) if xs else float("nan")


# -- the clip ---------------------------------------------------------------------------------


def speech_16k(path: Path = SPEECH) -> np.ndarray:
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    n = int(round(len(pcm) * RATE / rate))
    return np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm).astype(np.float32)


def make_clip(path: Path, scene: float = 8.0) -> float:
    """Two 8 s scenes, each a text card with the recorded voice in it; returns the length."""
    import av

    from livesense.sample import render_card

    voice = speech_16k()[: int((scene - 1.0) * RATE)]
    total = scene * len(CARDS)
    audio = np.zeros(int(total * RATE), np.float32)
    for k in range(len(CARDS)):
        at = int((k * scene + 0.5) * RATE)
        audio[at : at + voice.size] = voice
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=CLIP_FPS)
        vs.width, vs.height = 640, 360
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23", "g": str(CLIP_FPS)}
        aus = out.add_stream("aac", rate=RATE)
        aus.layout = "mono"
        for i in range(int(total * CLIP_FPS)):
            t = i / CLIP_FPS
            lines, bg = CARDS[min(len(CARDS) - 1, int(t // scene))]
            frame = av.VideoFrame.from_ndarray(render_card(lines, (640, 360), bg, t), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, CLIP_FPS)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        for i in range(0, audio.size, 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i : i + 1024], format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = RATE, i, Fraction(1, RATE)
            out.mux(aus.encode(af))
        out.mux(aus.encode())
    return total


class ClipReader:
    """One stream's decoder: the clip decoded in order, looped, cut into 2 s snippets."""

    def __init__(self, path: Path, length: float) -> None:
        self.path = path
        self.length = length
        self._media = self._decode()

    def _decode(self) -> Iterator[tuple[str, float, Any]]:
        import av

        loop = 0
        while True:
            with av.open(str(self.path)) as c:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
                for frame in c.decode(video=0, audio=0):
                    if isinstance(frame, av.VideoFrame):
                        yield "video", float(frame.time or 0.0) + loop * self.length, frame
                    elif isinstance(frame, av.AudioFrame):
                        t = float(frame.time or 0.0) + loop * self.length
                        for r in resampler.resample(frame):
                            yield "audio", t, r.to_ndarray().reshape(-1)
            loop += 1

    def snippet(self, end: float) -> tuple[list[np.ndarray], np.ndarray]:
        """Frames (RGB, 2 per second) and 16 kHz audio up to `end` (clip time, looped)."""
        frames: list[np.ndarray] = []
        audio: list[np.ndarray] = []
        for kind, t, data in self._media:
            if kind == "video":
                if round(t * CLIP_FPS) % (CLIP_FPS // FPS) == 0:
                    frames.append(data.to_ndarray(format="rgb24"))
            else:
                audio.append(data)
            if t >= end - 1e-6:
                break
        return frames, np.concatenate(audio) if audio else np.zeros(0, np.float32)


# -- the models -------------------------------------------------------------------------------


@dataclass
class Models:
    """The shared models and their batchers; `notes` says where each runs and why."""

    factory: Any
    vad_engine: Any
    vad_batcher: Any
    ocr: Any
    embedder: Any
    transcriber: Any
    whisper: Any  # a Batcher of clips -> text
    whisper_device: str
    vision: list[tuple[str, Any, Any]] = field(default_factory=list)  # name, prepare, batcher
    notes: dict[str, str] = field(default_factory=dict)


def load_models(
    device: str,
    whisper_device: str,
    threads: int,
    procs: int = 1,
    backends: dict[str, str] | None = None,
) -> Models:
    """The shared models; `backends` fixes each model's backend (else placed by measurement)."""
    from livesense.config import load_settings
    from livesense.engines.batcher import Batcher
    from livesense.engines.engine_factory import EngineFactory
    from livesense.engines.model_registry import pipeline_specs
    from livesense.engines.model_spec import CLIP_IMAGE, CLIP_TEXT, OCR_DET, OCR_REC, TEXT, VAD
    from livesense.engines.ocr import OcrReader
    from livesense.engines.text import TextEmbedder
    from livesense.engines.vad import vad_batcher

    settings = load_settings(
        None, device=device, **{"engines.threads": threads, "engines.backends": backends}
    )
    factory = EngineFactory(settings.engines, settings.device)
    vad_engine = factory.engine(_spec(VAD), threads=1)  # as the service runs it
    models = Models(
        factory=factory,
        vad_engine=vad_engine,
        vad_batcher=vad_batcher(factory),
        ocr=OcrReader(factory=factory, threads=threads),
        embedder=TextEmbedder(factory=factory),
        transcriber=None,
        whisper=None,
        whisper_device="",
    )
    known = {TEXT, VAD, OCR_DET, OCR_REC, CLIP_IMAGE, CLIP_TEXT}
    for spec in pipeline_specs(settings):
        if spec.name in known:
            continue
        engine = factory.engine(spec)
        buckets = spec.buckets_for(engine.inputs())
        if buckets is None:
            models.notes[spec.name] = "not run: no fixed input size"
            continue
        prepare, run_batch = _vision_run(engine)
        models.vision.append((spec.name, prepare, factory.batcher(spec.name, run_batch)))
    models.transcriber, models.whisper_device, why = load_whisper(whisper_device, threads, procs)
    models.notes["whisper"] = why
    t = models.transcriber
    models.whisper = Batcher(
        "whisper",
        lambda clips: t.transcribe_batch(list(clips), WHISPER_WINDOW),
        max_batch=settings.engines.batch_max_size,
        max_delay=None,
        queue_size=4096,
        stream_queue=4,
    )
    for e in factory.engines():
        models.notes[e.name] = e.placement
    return models


def _spec(name: str) -> Any:
    from livesense.engines import model_spec

    return {model_spec.VAD: model_spec.vad_spec}[name]()


def _vision_run(engine: Any) -> tuple[Any, Any]:
    """(prepare, run) for a vision model fed keyframes at its fixed size: `prepare` makes one
    frame the model's input on the calling stream's thread, `run` stacks a batch and runs it,
    so the batcher's one thread does no per-item work (pre-processing only as far as the
    shape: the load on the model is what is measured, not its labels)."""
    import cv2

    info = engine.inputs()[0]
    buckets = engine.buckets
    shape = buckets.shapes[0][info.name] if buckets is not None else tuple(info.shape)
    h, w = int(shape[2]), int(shape[3])

    def prepare(frame: np.ndarray) -> np.ndarray:
        small = cv2.resize(frame, (w, h))
        return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32) * (1 / 255)

    def run(inputs: list[np.ndarray]) -> list[Any]:
        out = engine.run({info.name: np.stack(inputs)})
        return [[np.asarray(o)[i] for o in out] for i in range(len(inputs))]

    return prepare, run


def load_whisper(device: str, threads: int, procs: int = 1) -> tuple[Any, str, str]:
    """Whisper on `device` ('auto': the GPU when CTranslate2 runs there), tried on a second
    of speech; else the CPU, on half of this process's share of the cores (`procs` processes
    share the machine). Returns (transcriber, device, why)."""
    from livesense.engines.whisper import Transcriber

    tried = ""
    if device in ("auto", "cuda"):
        try:
            t = Transcriber(device="cuda", threads=threads)
            t.transcribe_batch([speech_16k()[:RATE]], WHISPER_WINDOW)
            return t, "cuda", "cuda: CTranslate2 ran on the GPU"
        except Exception as e:  # no CUDA build, no GPU, or CUDA 12's cuBLAS missing
            tried = f"cuda failed ({str(e).strip().splitlines()[0][:160]}); "
            if device == "cuda":
                raise
    cores = max(2, (os.cpu_count() or 2) // max(1, procs) // 2)  # the rest: decode, others
    t = Transcriber(device="cpu", threads=cores)
    return t, "cpu", f"{tried}cpu ({cores} threads)"


# -- one stream -------------------------------------------------------------------------------


@dataclass
class StreamResult:
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    snippets: int = 0
    words: int = 0
    ocr_lines: int = 0
    errors: list[str] = field(default_factory=list)
    lost: bool = False  # fell more than LOST_AFTER behind live and was stopped


def run_stream(
    i: int,
    models: Models,
    store: Any,
    clip: Path,
    length: float,
    go: Starter,
    snippets: int,
    out: StreamResult,
) -> None:
    """Stream i: snippet k is due when its last sample is live, at start + 2 (k + 1); the
    stream opens its decoder and seeks to its place in the clip before the common start."""
    from livesense.engines.vad import SileroVad
    from livesense.records import Evidence, OcrLine, SnippetRecord, Word

    name = f"cam{i}"
    offset = (i * 0.37) % length  # each stream is at another point of the clip
    try:
        reader = ClipReader(clip, length)
        vad = SileroVad(engine=models.vad_engine, batcher=models.vad_batcher)
        reader.snippet(offset)  # skip to this stream's offset
    except Exception as e:  # counted; the others start without this stream
        out.errors.append(f"{type(e).__name__}: {e}")
        go.wait()
        return
    last_read: np.ndarray | None = None
    lines: list[OcrLine] = []
    start = go.wait() + (i % 20) * 0.1  # streams' snippets end at 20 different moments
    for k in range(snippets):
        due = start + SNIPPET * (k + 1)
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        clock: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            frames, audio = reader.snippet(offset + SNIPPET * (k + 1))
            clock["decode"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            probs = vad.probs(audio)
            speech = float(np.mean(probs > 0.5)) if probs.size else 0.0
            clock["vad"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            key = frames[len(frames) // 2] if frames else None
            if key is not None and (
                last_read is None or float(np.mean(np.abs(key[::8, ::8] - last_read))) > 4
            ):
                lines = models.ocr.read(key, SNIPPET * k, stream=name)
                last_read = key[::8, ::8].astype(np.float32)
            clock["ocr"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            if key is not None:  # every model's request at once: the stage waits for the slowest
                pending = [b.submit([prepare(key)], name) for _, prepare, b in models.vision]
                for f in pending:
                    f.result()
            clock["vision"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            text = ""
            if speech > 0.1:
                text = models.whisper([audio[-int(WHISPER_WINDOW * RATE) :]], name)[0]
            clock["asr"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            said = " ".join([text] + [ln.text for ln in lines]).strip()
            vec = models.embedder.embed([said or "nothing"], name)
            clock["text"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            start_t = SNIPPET * k
            words = [Word(w, start_t, start_t + SNIPPET) for w in text.split()]
            store.add(
                SnippetRecord(
                    stream=name,
                    index=k,
                    start=start_t,
                    end=start_t + SNIPPET,
                    tokens=vec.astype(np.float32),
                    token_modalities=["speech"],
                    token_times=[start_t + SNIPPET / 2],
                    evidence=Evidence(
                        transcript=text, words=words, ocr=list(lines), speech_ratio=speech
                    ),
                )
            )
            clock["memory"] = time.perf_counter() - t0
        except Exception as e:  # counted and shown; the stream goes on
            out.errors.append(f"{type(e).__name__}: {e}")
            continue
        out.latencies.append(time.perf_counter() - due)
        if out.latencies[-1] > LOST_AFTER:  # it cannot catch up: stop, so the run ends soon
            out.lost = True
        out.snippets += 1
        out.words += len(words)
        out.ocr_lines += len(lines)
        for s, v in clock.items():
            out.stages[s] += v
        if out.lost:
            break


class Starter:
    """Every stream ready (decoder open, clip position found), then one common start time."""

    def __init__(self, n: int) -> None:
        self._ready = threading.Barrier(n + 1)
        self._go = threading.Event()
        self.start = 0.0

    def wait(self) -> float:
        with contextlib.suppress(threading.BrokenBarrierError):
            self._ready.wait()
        self._go.wait()
        return self.start

    def release(self, timeout: float, agree: Callable[[], float] | None = None) -> None:
        """Start when every stream is ready, or after `timeout` with those that are: half a
        second later, or at the time `agree()` gives (the other processes' common start)."""
        with contextlib.suppress(threading.BrokenBarrierError):
            self._ready.wait(timeout)
        self.start = agree() if agree is not None else time.perf_counter() + 0.5
        self._go.set()


# -- machine use ------------------------------------------------------------------------------


class GpuSampler:
    """GPU utilisation and memory from nvidia-smi twice a second (nothing without one)."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") and self._thread is None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        query = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ]
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                line = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(x) for x in line.splitlines()[0].split(","))
                self.util.append(util)
                self.mem.append(mem)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)

    def as_json(self) -> dict[str, Any] | None:
        if not self.util:
            return None
        return {
            "util_mean_pct": round(float(np.mean(self.util)), 1),
            "util_max_pct": round(float(np.max(self.util)), 1),
            "memory_max_mib": round(float(np.max(self.mem)), 0),
        }


# -- one run of N streams ---------------------------------------------------------------------


def run_part(
    models: Models,
    clip: Path,
    length: float,
    first: int,
    count: int,
    seconds: float,
    agree: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Streams first..first+count-1 of a run, in this process, for `seconds` of live time,
    from a start that `agree()` gives once they are ready (default: half a second later).
    What each stream saw, this process's CPU seconds and the wall time from the start."""
    from livesense.config import load_settings
    from livesense.service import open_store

    snippets = max(2, int(seconds / SNIPPET))
    with tempfile.TemporaryDirectory() as root:
        settings = load_settings(None, memory=Path(root))
        store = open_store(settings)
        results = [StreamResult() for _ in range(count)]
        batchers = _batchers(models)
        before = {k: dict(b.stats.as_json()) for k, b in batchers.items()}
        engines_before = _engine_counts(models)
        go = Starter(count)
        threads = [
            threading.Thread(
                target=run_stream,
                args=(first + i, models, store, clip, length, go, snippets, results[i]),
                daemon=True,
            )
            for i in range(count)
        ]
        for t in threads:
            t.start()
        go.release(timeout=120, agree=agree)
        wait = go.start - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        cpu0, wall0 = os.times(), time.perf_counter()
        with WakeProbe() as lag:
            for t in threads:
                t.join(timeout=seconds * 20 + 120)
        cpu1, wall = os.times(), time.perf_counter() - wall0
        stored = store.count()
        store.close()
    return {
        "streams": [r.__dict__ for r in results],
        "snippets_each": snippets,
        "cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "wall_seconds": wall,
        "batchers": {k: _delta(before.get(k, {}), b.stats.as_json()) for k, b in batchers.items()},
        "engines": _engine_delta(engines_before, _engine_counts(models)),
        "wake_lags": lag.lags,
        "stored": stored,
        "pid": os.getpid(),
    }


class WakeProbe:
    """A thread that sleeps 5 ms over and over and records how late it wakes (s): the wait
    for the interpreter lock and a core, which every hand-off between threads also pays."""

    PERIOD = 0.005

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="wake-probe", daemon=True)

    def _probe(self) -> None:
        while not self._stop.is_set() and len(self.lags) < 100_000:
            t0 = time.perf_counter()
            time.sleep(self.PERIOD)
            self.lags.append(max(0.0, time.perf_counter() - t0 - self.PERIOD))

    def __enter__(self) -> WakeProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _engine_counts(models: Models) -> dict[str, dict[str, float]]:
    out = {}
    for e in models.factory.engines():
        out[e.name] = {
            "calls": e.timing.calls,
            "items": e.timing.items,
            "seconds": e.timing.seconds,
            "unbucketed": e.shape_stats.unbucketed,
        }
    return out


def _engine_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Each model's calls, rows and seconds inside Engine.run during the run (the runtime and
    its padding: the batcher's run_seconds less these is the work around the model), and
    calls at a shape outside its buckets (on a GPU, each may search its algorithms)."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        out[name] = {k: a[k] - b.get(k, 0) for k in a}
    return out


def merge(parts: list[dict[str, Any]], gpu: dict[str, Any] | None) -> dict[str, Any]:
    """One run's report from its processes' parts: latency over every snippet of every
    stream, CPU seconds of all processes over the longest wall time, batchers summed."""
    results = [StreamResult(**r) for part in parts for r in part["streams"]]
    n = len(results)
    snippets = max(part["snippets_each"] for part in parts)
    wall = max(part["wall_seconds"] for part in parts)
    cpu = sum(part["cpu_seconds"] for part in parts)
    lat = [x for r in results for x in r.latencies[1:]]
    held = sum(
        1
        for r in results
        if not r.lost and len(r.latencies) > 1 and percentile(r.latencies[1:], 99) < SNIPPET
    )
    done = sum(r.snippets for r in results)
    stages = {s: sum(r.stages[s] for r in results) for s in STAGES}
    errors = [e for r in results for e in r.errors]
    batchers: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, b in part["batchers"].items():
            into = batchers.setdefault(name, dict.fromkeys(("batches", "items", "drops"), 0))
            for k in ("batches", "items", "drops"):
                into[k] += b[k]
            into["run_seconds"] = round(into.get("run_seconds", 0.0) + b["run_seconds"], 3)
    for b in batchers.values():
        b["mean_batch"] = round(b["items"] / b["batches"], 2) if b["batches"] else 0.0
    engines: dict[str, dict[str, float]] = {}
    for part in parts:
        for name, e in part["engines"].items():
            into = engines.setdefault(name, dict.fromkeys(e, 0))
            for k, v in e.items():
                into[k] += v
    for e in engines.values():
        e["seconds"] = round(e["seconds"], 3)
        e["ms_per_call"] = round(1000 * e["seconds"] / e["calls"], 2) if e["calls"] else 0.0
    lags = [x for part in parts for x in part["wake_lags"]]
    return {
        "streams": n,
        "snippets": done,
        "snippets_expected": n * snippets,
        "held_real_time": held,
        "lost": sum(1 for r in results if r.lost),
        "all_held": held == n and done == n * snippets,
        "latency_p50_s": percentile(lat, 50),
        "latency_p99_s": percentile(lat, 99),
        "latency_max_s": round(max(lat), 4) if lat else None,
        "cpu_cores_used": round(cpu / wall, 2) if wall > 0 else 0.0,
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "stage_seconds": {s: round(v, 3) for s, v in stages.items()},
        "stage_ms_per_snippet": {s: round(1000 * v / max(1, done), 2) for s, v in stages.items()},
        "batchers": {
            k: {f: b[f] for f in ("batches", "items", "mean_batch", "drops", "run_seconds")}
            for k, b in batchers.items()
        },
        "engines": engines,
        "wake_lag_ms": {
            "p50": round(1000 * percentile(lags, 50), 2) if lags else None,
            "p99": round(1000 * percentile(lags, 99), 2) if lags else None,
        },
        "words": sum(r.words for r in results),
        "ocr_lines": sum(r.ocr_lines for r in results),
        "errors": len(errors),
        "first_errors": errors[:3],
        "stored": sum(part["stored"] for part in parts),
        "procs": len(parts),
        "streams_per_proc": [len(part["streams"]) for part in parts],
    }


def run(models: Models, clip: Path, length: float, n: int, seconds: float) -> dict[str, Any]:
    """N streams in this process for `seconds` of live time; the first snippet of each is
    not counted (its models' first calls and the stream's start)."""
    gpu = GpuSampler()

    def agree() -> float:
        gpu.__enter__()
        return time.perf_counter() + 0.5

    try:
        part = run_part(models, clip, length, 0, n, seconds, agree)
    finally:
        gpu.__exit__()
    return merge([part], gpu.as_json())


# -- several processes ------------------------------------------------------------------------


def split(n: int, procs: int) -> list[tuple[int, int]]:
    """(first stream, count) of each process: N streams as evenly as they go, none empty."""
    out: list[tuple[int, int]] = []
    first = 0
    for k in range(min(procs, n)):
        count = n // procs + (1 if k < n % procs else 0)
        out.append((first, count))
        first += count
    return out


def _worker(
    conn: Any,
    device: str,
    whisper_device: str,
    threads: int,
    procs: int,
    backends: dict[str, str] | None,
    clip: str,
    length: float,
) -> None:
    """One process of a `--procs` run: loads the models, then runs the parts it is sent."""
    try:
        t0 = time.perf_counter()
        models = load_models(device, whisper_device, threads, procs, backends)
        chosen = {e.name: e.backend for e in models.factory.engines()}
        loaded = time.perf_counter() - t0
        conn.send(("loaded", models.notes, models.whisper_device, chosen, loaded))
    except Exception as e:  # reported to the parent, which ends the benchmark with it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    try:
        while True:
            msg = conn.recv()
            if msg[0] != "run":
                break
            _, first, count, seconds = msg

            def agree() -> float:
                conn.send(("ready",))
                at = float(conn.recv())  # the common start on the wall clock
                return time.perf_counter() + (at - time.time())

            try:
                conn.send(
                    ("part", run_part(models, Path(clip), length, first, count, seconds, agree))
                )
            except Exception as e:
                conn.send(("error", f"{type(e).__name__}: {e}"))
    except (EOFError, OSError):  # the parent has gone
        pass
    finally:
        close_models(models)


class Pool:
    """P worker processes (spawned: a fresh interpreter each, CUDA-safe), each with its own
    models and batchers on the shared GPU, and each process's part of every run. The first
    loads alone and places the models by measurement; the others load together with its
    placement (and its Whisper device), so that all run alike and none times a model while
    the others load."""

    def __init__(
        self, procs: int, device: str, whisper_device: str, threads: int, clip: Path, length: float
    ) -> None:
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        self.notes: dict[str, str] = {}
        self.whisper_device = ""
        args = (device, whisper_device, threads, procs)
        self._start(1, args, None, clip, length)
        backends = self._loaded(self.conns[:1], first=True)
        args = (device, self.whisper_device, threads, procs)
        self._start(procs - 1, args, backends, clip, length)
        self._loaded(self.conns[1:], first=False)

    def _start(
        self,
        count: int,
        args: tuple[str, str, int, int],
        backends: dict[str, str] | None,
        clip: Path,
        length: float,
    ) -> None:
        for _ in range(count):
            mine, theirs = self._ctx.Pipe()
            p = self._ctx.Process(
                target=_worker, args=(theirs, *args, backends, str(clip), length), daemon=True
            )
            p.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(p)

    def _loaded(self, conns: list[Any], first: bool) -> dict[str, str]:
        backends: dict[str, str] = {}
        for conn in conns:
            kind, *rest = self._recv(conn, 600)
            if kind != "loaded":
                self.close()
                raise RuntimeError(f"A benchmark process could not load the models: {rest[0]}")
            if first:
                self.notes, self.whisper_device, backends = rest[0], rest[1], rest[2]
        return backends

    def _recv(self, conn: Any, timeout: float) -> tuple[Any, ...]:
        if not conn.poll(timeout):
            return ("error", f"no answer in {timeout:.0f} s")
        try:
            return tuple(conn.recv())
        except EOFError:
            return ("error", "the process ended")

    def run(self, n: int, seconds: float) -> dict[str, Any]:
        """N streams over the processes, started together on the wall clock."""
        parts_of = split(n, len(self.conns))
        active = self.conns[: len(parts_of)]
        for conn, (first, count) in zip(active, parts_of, strict=True):
            conn.send(("run", first, count, seconds))
        for conn in active:
            kind, *rest = self._recv(conn, 180)
            if kind != "ready":
                raise RuntimeError(f"A benchmark process failed before the start: {rest[0]}")
        at = time.time() + 0.5
        for conn in active:
            conn.send(at)
        parts: list[dict[str, Any]] = []
        with GpuSampler() as gpu:
            for conn in active:
                kind, *rest = self._recv(conn, seconds * 20 + 240)
                if kind != "part":
                    raise RuntimeError(f"A benchmark process failed: {rest[0]}")
                parts.append(rest[0])
        return merge(parts, gpu.as_json())

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def _batchers(models: Models) -> dict[str, Any]:
    out = dict(models.factory.batchers())
    out["whisper"] = models.whisper
    return out


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    batches = after["batches"] - before.get("batches", 0)
    items = after["items"] - before.get("items", 0)
    return {
        "batches": batches,
        "items": items,
        "mean_batch": round(items / batches, 2) if batches else 0.0,
        "drops": after["drops"] - before.get("drops", 0),
        "run_seconds": round(after["seconds"] - before.get("seconds", 0.0), 3),
    }


def close_models(models: Models) -> None:
    for b in _batchers(models).values():
        b.close()
    models.factory.close()


def procs_of(value: str) -> int:
    """--procs: a count, or 'auto': a process for every 4 cores (at least one)."""
    if value == "auto":
        return max(1, (os.cpu_count() or 1) // 4)
    try:
        procs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or 'auto': {value!r}") from None
    if procs < 1:
        raise argparse.ArgumentTypeError("at least 1 process")
    return procs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, action="append", help="N (repeatable: a sweep)")
    parser.add_argument("--seconds", type=float, default=20.0, help="live time per N")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (neural models)")
    parser.add_argument("--whisper-device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per model")
    parser.add_argument(
        "--procs",
        type=procs_of,
        default=1,
        help="processes sharing the streams (and the GPU), each with its own models and "
        "batchers; 'auto': one per 4 cores",
    )
    parser.add_argument(
        "--stop-when-lost", action="store_true", help="end the sweep at the first N not held"
    )
    parser.add_argument(
        "--budget", type=float, default=0.0, help="stop the sweep after this many seconds"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    sweep = args.streams or [2]
    procs: int = args.procs
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        length = make_clip(clip)
        t0 = time.perf_counter()
        pool: Pool | None = None
        models: Models | None = None
        if procs > 1:
            pool = Pool(procs, args.device, args.whisper_device, args.threads, clip, length)
            notes, whisper_device = pool.notes, pool.whisper_device
        else:
            models = load_models(args.device, args.whisper_device, args.threads)
            notes, whisper_device = models.notes, models.whisper_device
        load_s = time.perf_counter() - t0
        print(
            f"models loaded in {load_s:.1f} s ({procs} process(es)): {json.dumps(notes)}",
            flush=True,
        )
        runs: list[dict[str, Any]] = []

        def report() -> dict[str, Any]:
            held = [r["streams"] for r in runs if r["all_held"] and r["latency_p99_s"] < 1.0]
            out = {
                "clip_seconds": length,
                "snippet_seconds": SNIPPET,
                "fps": FPS,
                "whisper_device": whisper_device,
                "whisper_window_s": WHISPER_WINDOW,
                "placement": notes,
                "load_seconds": round(load_s, 2),
                "procs": procs,
                "runs": runs,
                "most_streams_held_p99_under_1s": max(held) if held else 0,
            }
            if args.json is not None:  # after every N: a run cut short keeps what it has
                args.json.write_text(json.dumps(out, indent=1))
            return out

        try:
            for n in sweep:
                spent = time.perf_counter() - began
                if args.budget and spent + args.seconds * 1.5 + 10 > args.budget:
                    print(f"N={n}: skipped, the time budget is spent", flush=True)
                    break
                if pool is not None:
                    r = pool.run(n, args.seconds)
                else:
                    assert models is not None
                    r = run(models, clip, length, n, args.seconds)
                runs.append(r)
                report()
                print(json.dumps(r), flush=True)
                if args.stop_when_lost and not r["all_held"]:
                    break
            final = report()
        finally:
            if pool is not None:
                pool.close()
            if models is not None:
                close_models(models)
    print(
        f"held in real time with p99 < 1 s: {final['most_streams_held_p99_under_1s']} streams "
        f"(of {', '.join(str(r['streams']) for r in runs)})",
        flush=True,
    )
    return final


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a process that could not load or run: one sentence
        raise SystemExit(str(e)) from None

"""`livesense bench engines`: items per second per model, bare runtime vs engines/ vs batcher.

Per model, on the same single-item inputs (made here: rendered text lines and frames,
sentences, audio windows): `raw_per_s` calls the bare onnxruntime session (for the native
TensorRT backend, the engine's own run without the wrapper), `engine_per_s` the engine
interface, and `batched_per_s` 1, 4 and 16 concurrent streams each submitting one item at a
time through the cross-stream batcher. raw and engine are timed call by call, in
alternation on the same items (`seconds` each), so the wrapper's overhead shows even on a
busy machine; each batched figure runs at least `seconds` and three full batches. Where the
engine runs fixed shapes, raw runs the item already padded to its bucket, on the session
the engine would use.

Where the time goes (`phases`, ms per item, for each batched figure): `wait` in the batcher's
queue, `collate` (stacking items into a batch), `pad` (the engine padding to its bucket and
batch size), `run` (inside the runtime), `engine` (the rest of the engine wrapper), `split`
(outputs back per item); `pre` and `post` are the model adapter's own work per item (image
resize and normalisation, CTC decoding, box extraction, NMS), timed apart, as the benchmark
feeds prepared inputs. `switches` counts runtime calls whose session last ran another input
shape (each one re-plans every convolution on ORT's CUDA provider), `shapes_run` the
distinct input shapes after warm-up.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from livesense.engines.batcher import Batcher, bucket, groups
from livesense.engines.engine import Engine, shape_key
from livesense.engines.engine_factory import EngineFactory, best_seconds
from livesense.engines.model_spec import (
    CLIP_IMAGE,
    CLIP_TEXT,
    DETECT,
    OCR_DET,
    OCR_REC,
    SCENE,
    TEXT,
    VAD,
    ModelSpec,
)
from livesense.engines.onnx import OnnxEngine
from livesense.errors import LivesenseError

STREAMS = (1, 4, 16)
Feeds = dict[str, np.ndarray]

SENTENCE = (
    "the train to rome leaves from platform nine at seven thirty please have your tickets "
    "ready the cafe on the upper level is open until ten tonight passengers for berlin go to "
    "gate b fifty two now taxis wait outside exit three on the east side of the hall"
)
WORDS = SENTENCE.split(" ")
LINES = [
    "PLATFORM 9",
    "ROME 07:30",
    "ARRIVALS FROM ROME",
    "CAFE",
    "OPEN UNTIL 22:00",
    "GATE B52 BOARDING",
    "EXIT 3",
    "TAXI RANK",
    "LOST PROPERTY DESK A17",
    "DELAYED",
    "MILAN 08:15 PLATFORM 4",
    "TICKETS",
]


@dataclass(slots=True)
class Workload:
    """Single-item feeds of one model and how a batch of them is run and split."""

    items: list[Feeds]
    batch_axis: dict[str, int] = field(default_factory=dict)  # input -> axis (default 0)
    out_axis: dict[int, int] = field(default_factory=dict)  # output index -> axis (default 0)
    group_key: Callable[[Feeds], Any] | None = None
    pre_s: float | None = None  # the adapter's pre-processing, seconds per item
    post: Callable[[Engine, Feeds], Callable[[], Any]] | None = None  # the adapter's post


class Phases:
    """Seconds spent per phase of the batched path, and the items they served."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds = {"wait": 0.0, "collate": 0.0, "engine": 0.0, "split": 0.0}
        self.items = 0

    def add(self, items: int, **seconds: float) -> None:
        with self.lock:
            self.items += items
            for k, v in seconds.items():
                self.seconds[k] += v

    def per_item_ms(self, pad: float, run: float) -> dict[str, float]:
        """ms per item of each phase; `engine` less what padding and the runtime took."""
        n = max(1, self.items)
        out = dict(self.seconds)
        out["engine"] = max(0.0, out["engine"] - pad - run)
        out["pad"], out["run"] = pad, run
        order = ("wait", "collate", "pad", "run", "engine", "split")
        return {k: round(1000.0 * out[k] / n, 4) for k in order}


@dataclass(slots=True)
class BenchResult:
    model: str
    backend: str
    raw_per_s: float
    engine_per_s: float
    batched_per_s: dict[str, float]
    mean_batch: dict[str, float]
    shapes: dict[str, Any] = field(default_factory=dict)  # fixed shapes: calls per bucket...
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # streams -> ms/item
    switches: dict[str, int] = field(default_factory=dict)  # streams -> session shape switches

    def as_json(self) -> dict[str, Any]:
        overhead = 1.0 - self.engine_per_s / self.raw_per_s if self.raw_per_s else 0.0
        base = self.engine_per_s or 1.0
        return {
            "model": self.model,
            "backend": self.backend,
            "raw_per_s": round(self.raw_per_s, 2),
            "engine_per_s": round(self.engine_per_s, 2),
            "batched_per_s": {k: round(v, 2) for k, v in self.batched_per_s.items()},
            "overhead_pct": round(100.0 * overhead, 2),
            "gain_16": round(self.batched_per_s.get("16", 0.0) / base, 2),
            "mean_batch": self.mean_batch,
            "shapes": self.shapes,
            "phases": self.phases,
            "switches": self.switches,
        }


class EngineBench:
    """Measures every model of `specs` on the backends the factory chooses."""

    def __init__(self, factory: EngineFactory, seconds: float = 2.0) -> None:
        self.factory = factory
        self.seconds = seconds
        self.errors: list[dict[str, str]] = []

    def run(
        self, specs: list[ModelSpec], log: Callable[[str], None] | None = None
    ) -> list[BenchResult]:
        """Measure each model; one that cannot load is skipped and named in `errors`."""
        out = []
        self.errors = []
        for spec in specs:
            try:
                engine = self.factory.load(spec)
            except LivesenseError as e:
                self.errors.append({"model": spec.name, "error": str(e)})
                if log is not None:
                    log(f"{spec.name}: not measured: {e}")
                continue
            try:
                out.append(self.measure(spec.name, engine, workload(spec.name, engine)))
            finally:
                engine.close()
            if log is not None:
                log(f"{spec.name}: {out[-1].as_json()}")
        return out

    def measure(self, name: str, engine: Engine, work: Workload) -> BenchResult:
        at_shape = [at_engine_shape(engine, work, f) for f in work.items]
        raw = self._bare(engine)
        for fixed, feeds in list(zip(at_shape, work.items, strict=True))[:3]:  # warm up both
            raw(fixed)
            engine.run(feeds)
        raw_rate, engine_rate = self._paired(raw, engine.run, at_shape, work.items)
        batched: dict[str, float] = {}
        mean_batch: dict[str, float] = {}
        phases: dict[str, dict[str, float]] = {}
        switches: dict[str, int] = {}
        s = self.factory.settings
        group = work.group_key
        for n in STREAMS:
            spent = Phases()
            batcher: Batcher[Stamped, list[np.ndarray]] = Batcher(
                f"bench-{name}",
                lambda items, spent=spent: run_collated(engine, work, items, spent),  # type: ignore[misc]
                max_batch=max(1, min(s.batch_max_size, s.batch_sizes.get(name, 1 << 30))),
                max_delay=None if s.batch_max_delay_ms is None else s.batch_max_delay_ms / 1000.0,
                queue_size=s.batch_queue,
                stream_queue=s.batch_stream_queue,
                key=None if group is None else (lambda it: group(it[1])),
            )
            before = _stat_copy(engine)
            try:
                batched[str(n)] = self._streams(batcher, work.items, n)
                mean_batch[str(n)] = batcher.stats.as_json()["mean_batch"]
            finally:
                batcher.close()
            after = _stat_copy(engine)
            phases[str(n)] = spent.per_item_ms(
                after["pad_seconds"] - before["pad_seconds"],
                after["run_seconds"] - before["run_seconds"],
            )
            switches[str(n)] = int(after["switches"] - before["switches"])
        adapter: dict[str, float | None] = {"pre": None, "post": None}
        if work.pre_s is not None:
            adapter["pre"] = round(1000.0 * work.pre_s, 4)
        if work.post is not None:
            adapter["post"] = round(1000.0 * best_seconds(work.post(engine, work.items[0]), 5), 4)
        for figures in phases.values():
            figures.update(adapter)  # type: ignore[arg-type]
        shapes: dict[str, Any] = {"buckets": 0, **_stat_json(engine)}
        if engine.buckets is not None:
            shapes = {
                "buckets": len(engine.buckets.shapes),
                "batch_sizes": list(engine.batch_sizes),
                "sessions": getattr(engine, "sessions", 1),
                **engine.shape_stats.as_json(),
            }
        return BenchResult(
            name,
            engine.backend,
            raw_rate,
            engine_rate,
            batched,
            mean_batch,
            shapes,
            phases,
            switches,
        )

    def _bare(self, engine: Engine) -> Callable[[Feeds], Any]:
        """The same model without the wrapper: its onnxruntime session called directly (the
        session the engine runs that shape on, so no cache or thread-pool difference), or
        TensorRT's run."""
        if isinstance(engine, OnnxEngine):
            return lambda feeds: engine.session_for(shape_key(feeds)).run(None, feeds)
        return lambda feeds: engine._run(feeds, None)

    def _paired(
        self,
        a: Callable[[Feeds], Any],
        b: Callable[[Feeds], Any],
        items_a: list[Feeds],
        items_b: list[Feeds],
    ) -> tuple[float, float]:
        """Items/s of `a` and `b`, timed call by call in alternation on the same items (for
        `a` as the runtime takes them, for `b` as the engine's callers give them).

        Each item runs through both, in alternating order, and only the calls themselves are
        timed: a load change on a shared machine hits both alike.
        """
        spent = [0.0, 0.0]
        done = 0
        end = time.perf_counter() + 2 * self.seconds
        while done < len(items_b) or time.perf_counter() < end:
            k = done % len(items_b)
            order = ((0, a), (1, b)) if done % 2 == 0 else ((1, b), (0, a))
            for slot, fn in order:
                feeds = items_a[k] if slot == 0 else items_b[k]
                t0 = time.perf_counter()
                fn(feeds)
                spent[slot] += time.perf_counter() - t0
            done += 1
        return done / spent[0], done / spent[1]

    def _streams(self, batcher: Batcher[Stamped, Any], items: list[Feeds], n: int) -> float:
        counts = [0] * n
        start = threading.Barrier(n + 1)
        stop = threading.Event()

        def stream(i: int) -> None:
            start.wait()
            k = i
            while not stop.is_set():
                batcher([(time.perf_counter(), items[k % len(items)])], stream=i)
                counts[i] += 1
                k += 1

        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for item in items[:2]:  # warm up the batch path (as stream 0: no stranger)
            batcher([(time.perf_counter(), item)], stream=0)
        start.wait()
        t0 = time.perf_counter()
        base = sum(counts)
        while True:  # at least `seconds`, and enough items for a few full batches
            time.sleep(0.02)
            done = sum(counts) - base
            elapsed = time.perf_counter() - t0
            if elapsed >= self.seconds and done >= 3 * n or elapsed >= 20 * self.seconds:
                break
        stop.set()
        for t in threads:
            t.join(timeout=30)
        return done / elapsed


Stamped = tuple[float, Feeds]
"""An item as the benchmark's streams submit it: (when submitted, its feeds)."""


def run_collated(
    engine: Engine, work: Workload, stamped: list[Stamped], spent: Phases | None = None
) -> list[list[np.ndarray]]:
    """Run single-item feeds as batches (one per shape group); split the outputs per item
    (views, not copies). Where the engine runs fixed shapes, a batch is built at its bucket's
    shape directly, so the engine need not pad it again. `spent` gets each phase's time."""
    t0 = time.perf_counter()
    wait = sum(t0 - t for t, _ in stamped)
    items = [f for _, f in stamped]
    collating = running = 0.0
    if len(items) == 1:  # nothing to stack or split
        out = [list(engine.run(items[0]))]
        running = time.perf_counter() - t0
    else:
        out = [[] for _ in items]
        keys = [work.group_key(f) if work.group_key else 0 for f in items]
        for group in groups(keys):
            members = [items[i] for i in group]
            t1 = time.perf_counter()
            rows = {k: [f[k] for f in members] for k, v in members[0].items() if v.ndim}
            constants = {k: v for k, v in members[0].items() if not v.ndim}
            t2 = time.perf_counter()
            ran = engine.run_rows(rows, None, constants, work.batch_axis)
            results = [np.asarray(r) for r in ran]
            collating += t2 - t1
            running += time.perf_counter() - t2
            for r, i in enumerate(group):
                out[i] = [_row(res, work.out_axis.get(j, 0), r) for j, res in enumerate(results)]
    if spent is not None:
        total = time.perf_counter() - t0
        split = max(0.0, total - collating - running)
        spent.add(len(items), wait=wait, collate=collating, engine=running, split=split)
    return out


def at_engine_shape(engine: Engine, work: Workload, item: Feeds) -> Feeds:
    """One item padded as the engine would pad it (its bucket, batch size 1), or as it is."""
    floor = bucket_shapes(engine, item)
    return collate([item], work.batch_axis, floor) if floor else item


def _stat_copy(engine: Engine) -> dict[str, float]:
    st = engine.shape_stats
    return {"pad_seconds": st.pad_seconds, "run_seconds": st.run_seconds, "switches": st.switches}


def _stat_json(engine: Engine) -> dict[str, Any]:
    j = engine.shape_stats.as_json()
    return {k: j[k] for k in ("runs", "shapes_run", "switches")}


def bucket_shapes(engine: Engine, item: Feeds) -> dict[str, tuple[int, ...]]:
    """The bucket shape (batch axis 1) of each input of `item`, where the engine has buckets."""
    buckets = engine.buckets
    if buckets is None:
        return {}
    k = buckets.fit({n: tuple(np.shape(v)) for n, v in item.items()})
    return {} if k is None else dict(buckets.shapes[k])


def _row(value: np.ndarray, axis: int, r: int) -> np.ndarray:
    index: list[slice] = [slice(None)] * value.ndim
    index[axis] = slice(r, r + 1)
    return value[tuple(index)]


def collate(
    items: list[Feeds],
    batch_axis: dict[str, int],
    at_least: dict[str, tuple[int, ...]] | None = None,
) -> Feeds:
    """Stack single-item feeds along their batch axis, zero-padding other axes to the longest
    (or to `at_least`'s shape of that input, a bucket's)."""
    feeds: Feeds = {}
    for name, first in items[0].items():
        arrays = [np.asarray(f[name]) for f in items]
        if first.ndim == 0:
            feeds[name] = first
            continue
        axis = batch_axis.get(name, 0)
        shape = [max(a.shape[d] for a in arrays) for d in range(first.ndim)]
        floor = (at_least or {}).get(name)
        if floor is not None and len(floor) == len(shape):
            shape = [max(x, y) for x, y in zip(shape, floor, strict=True)]
        shape[axis] = sum(a.shape[axis] for a in arrays)
        batch = np.zeros(shape, first.dtype)
        at = 0
        for a in arrays:
            index = [slice(0, d) for d in a.shape]
            index[axis] = slice(at, at + a.shape[axis])
            batch[tuple(index)] = a
            at += a.shape[axis]
        feeds[name] = batch
    return feeds


def workload(name: str, engine: Engine) -> Workload:
    """Realistic single-item inputs for the packaged models (and the CLIP slot)."""
    if name == TEXT:
        return _text_work(engine)
    if name == VAD:
        return _vad_work()
    if name == OCR_REC:
        return _rec_work()
    if name == OCR_DET:
        return _det_work()
    if name in (DETECT, SCENE):
        return _picture_work(name)
    if name == CLIP_IMAGE:
        info = engine.inputs()[0]
        h, w = (d if isinstance(d, int) and d > 0 else 224 for d in info.shape[2:4])
        rng = np.random.default_rng(0)
        pictures: list[Feeds] = [
            {info.name: rng.standard_normal((1, 3, h, w)).astype(np.float32)} for _ in range(4)
        ]
        return Workload(pictures)
    if name == CLIP_TEXT:
        names = [i.name for i in engine.inputs()]
        rng = np.random.default_rng(0)
        texts: list[Feeds] = []
        for n in (5, 9, 14, 20):
            ids: np.ndarray = rng.integers(1, 1000, (1, n)).astype(np.int64)
            texts.append({k: (ids if k == "input_ids" else np.ones_like(ids)) for k in names})
        edges = (8, 16, 32, 77)
        return Workload(texts, group_key=lambda f: bucket(f["input_ids"].shape[1], edges))
    raise ValueError(f"no benchmark workload for {name}")


def _picture_work(name: str) -> Workload:
    """Camera-like frames (a street of coloured blocks and a face-sized disc, 640x360, each a
    little different) as the detector or the scene classifier takes them."""
    from livesense.engines.detector import letterbox
    from livesense.engines.scene import scene_input

    rng = np.random.default_rng(0)
    items: list[Feeds] = []
    pre = 0.0
    for k in range(8):
        img = np.full((360, 640, 3), 90 + 10 * k, np.uint8)
        for _ in range(6):
            x, y = int(rng.integers(0, 560)), int(rng.integers(0, 280))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(img, (x, y), (x + 80, y + 80), color, -1)
        cv2.circle(img, (320, 180), 40, (200, 170, 150), -1)
        t0 = time.perf_counter()
        picture = letterbox(img)[0] if name == DETECT else scene_input(img)
        pre += time.perf_counter() - t0
        items.append({"image": picture[None]})
    post = _detect_post if name == DETECT else _scene_post
    return Workload(items, pre_s=pre / len(items), post=post)


def _detect_post(engine: Engine, feeds: Feeds) -> Callable[[], Any]:
    from livesense.engines.detector import OUTPUTS, decode

    outputs = [np.asarray(r)[0] for r in engine.run(feeds, list(OUTPUTS))]
    return lambda: decode(outputs, 1.0, (360, 640), 0.3)


def _scene_post(engine: Engine, feeds: Feeds) -> Callable[[], Any]:
    probs = np.asarray(engine.run(feeds)[0])[0]
    return lambda: [(int(i), float(probs[i])) for i in np.argsort(-probs)[:5]]


def _text_work(engine: Engine) -> Workload:
    from tokenizers import Tokenizer

    from livesense.engines.models import minilm_tokenizer
    from livesense.engines.text import BUCKETS

    tok = Tokenizer.from_file(str(minilm_tokenizer()))
    tok.no_padding()  # the file pads to 128 tokens; single items carry their own length
    tok.enable_truncation(max_length=128)
    rng = np.random.default_rng(0)
    names = {i.name for i in engine.inputs()}
    items = []
    pre = 0.0
    for _ in range(48):
        n = int(rng.integers(2, 13))  # a caption, a query, a snippet's words: 2 to 12
        start = int(rng.integers(0, len(WORDS) - n))
        t0 = time.perf_counter()
        ids = np.array([tok.encode(" ".join(WORDS[start : start + n])).ids], np.int64)
        pre += time.perf_counter() - t0
        feeds: Feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        items.append(feeds)
    return Workload(
        items,
        group_key=lambda f: bucket(f["input_ids"].shape[1], BUCKETS),
        pre_s=pre / len(items),
    )


def _vad_work() -> Workload:
    rng = np.random.default_rng(0)
    items: list[Feeds] = [
        {
            "input": (rng.standard_normal((1, 576)) * 0.1).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
        for _ in range(32)
    ]
    return Workload(items, batch_axis={"state": 1}, out_axis={1: 1})


def _line_image(text: str, scale: float = 1.0) -> np.ndarray:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    img = np.full((h + base + 12, w + 16, 3), 235, np.uint8)
    cv2.putText(img, text, (8, h + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 2)
    return img


def _rec_work() -> Workload:
    from livesense.engines.ocr import crop, rec_input, rec_width

    items = []
    pre = 0.0
    for k, text in enumerate(LINES):
        line = _line_image(text, 0.8 + 0.1 * (k % 4))
        h, w = line.shape[:2]
        box = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
        t0 = time.perf_counter()
        straight = crop(line, box)
        items.append({"x": rec_input(straight, rec_width(straight))[None]})
        pre += time.perf_counter() - t0
    return Workload(
        items, group_key=lambda f: f["x"].shape[3], pre_s=pre / len(items), post=_rec_post
    )


def _rec_post(engine: Engine, feeds: Feeds) -> Callable[[], Any]:
    from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

    decode = CTCLabelDecode(character=engine.metadata().get("character", "").splitlines())
    preds = np.asarray(engine.run(feeds)[0])
    return lambda: decode(preds)


def _det_work() -> Workload:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    pre = DetPreProcess(960, "max", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    items = []
    spent = 0.0
    for k in range(4):
        img = np.full((360, 640, 3), 230 - 20 * k, np.uint8)
        for j, text in enumerate(LINES[k * 3 : k * 3 + 3]):
            cv2.putText(
                img, text, (30, 90 + 100 * j), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (20, 20, 20), 3
            )
        t0 = time.perf_counter()
        prep = pre(img)
        spent += time.perf_counter() - t0
        assert prep is not None
        items.append({"x": prep})
    return Workload(
        items, group_key=lambda f: f["x"].shape, pre_s=spent / len(items), post=_det_post
    )


def _det_post(engine: Engine, feeds: Feeds) -> Callable[[], Any]:
    from livesense.engines.ocr import db_postprocess

    post = db_postprocess()
    h, w = feeds["x"].shape[2:]
    pred = np.asarray(engine.run(feeds)[0])[:, :, :h, :w]
    return lambda: post(pred, (360, 640))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from livesense.engines.gpu import detect_gpu

    gpu = detect_gpu()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": f"{gpu.name} (sm {gpu.compute_capability})" if gpu else None,
        "python": platform.python_version(),
    }


def markdown(results: list[dict[str, Any]], where: dict[str, Any]) -> str:
    """The README table of a run."""
    head = (
        "| model | backend | raw/s | engine/s | overhead | batched 1 | batched 4 | batched 16 "
        "| 16 vs engine |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = "".join(
        f"| {r['model']} | {r['backend']} | {r['raw_per_s']:.0f} | {r['engine_per_s']:.0f} | "
        f"{r['overhead_pct']:+.1f}% | {r['batched_per_s']['1']:.0f} | "
        f"{r['batched_per_s']['4']:.0f} | {r['batched_per_s']['16']:.0f} | {r['gain_16']:.2f}x |\n"
        for r in results
    )
    gpu = f", {where['gpu']}" if where.get("gpu") else ", no GPU"
    return (
        f"{head}{rows}\n{phases_table(results)}\n"
        f"Machine: {where['cpu']}, {where['cores']} cores{gpu}.\n"
    )


PHASES = ("pre", "wait", "collate", "pad", "run", "engine", "split", "post")


def phases_table(results: list[dict[str, Any]], streams: str = "16") -> str:
    """Where the time of the batched figure at `streams` streams goes, ms per item."""
    head = (
        f"| model ({streams} streams, ms/item) | "
        + " | ".join(PHASES)
        + " | switches | shapes run |\n|---|"
        + "---|" * (len(PHASES) + 2)
        + "\n"
    )
    rows = []
    for r in results:
        ph = r.get("phases", {}).get(streams)
        if not ph:
            continue
        cells = " | ".join("-" if ph.get(k) is None else f"{ph[k]:.3g}" for k in PHASES)
        shapes = r.get("shapes", {}).get("shapes_run", "-")
        rows.append(
            f"| {r['model']} | {cells} | {r.get('switches', {}).get(streams, '-')} | {shapes} |\n"
        )
    return head + "".join(rows)

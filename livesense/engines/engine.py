"""The one interface every neural model runs behind: load, describe, run a batch, time.

Backends (ONNX Runtime with the CPU, CUDA or TensorRT provider; native TensorRT) subclass
`Engine` and implement `_run`; the base class does the timing, the optional recording of
inputs for INT8 calibration and the description shown by `livesense engines list`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from livesense.errors import ModelMissingError

if TYPE_CHECKING:
    from livesense.engines.model_spec import Buckets


class EngineError(ModelMissingError):
    """A model could not be run on the backend asked for (one sentence for the user)."""


class BackendUnavailableError(EngineError):
    """The backend's runtime or device is not there (a package, a GPU)."""


class EngineBuildError(EngineError):
    """TensorRT could not build an engine from the ONNX file."""


class EngineMissingError(EngineError):
    """No cached engine, and the settings say not to build one on first use."""


@dataclass(slots=True)
class TensorInfo:
    """One input or output: name, shape (ints, or names/None for dynamic axes) and dtype."""

    name: str
    shape: list[int | str | None]
    dtype: str


@dataclass(slots=True)
class EngineTiming:
    """Calls, items (batch rows) and seconds spent inside a model's runtime."""

    calls: int = 0
    items: int = 0
    seconds: float = 0.0

    def add(self, items: int, seconds: float) -> None:
        self.calls += 1
        self.items += items
        self.seconds += seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "items": self.items,
            "seconds": round(self.seconds, 6),
            "items_per_s": round(self.items / self.seconds, 2) if self.seconds > 0 else None,
        }


@dataclass(slots=True)
class ShapeStats:
    """How a fixed-shape engine's calls fit its buckets (padding is the price of no search)."""

    bucketed: int = 0  # calls that ran at a bucket's shape
    unbucketed: int = 0  # calls no bucket could hold (ran at their own shape)
    rows: int = 0  # real batch rows
    padded_rows: int = 0  # rows added to reach a batch size
    warm_runs: int = 0
    warm_seconds: float = 0.0
    runs: int = 0  # runtime calls after warm-up (a chunked batch makes several)
    run_seconds: float = 0.0  # inside the runtime (session.run), after warm-up
    pad_seconds: float = 0.0  # padding inputs to their bucket and batch size
    switches: int = 0  # runtime calls whose session last ran another input shape
    shapes: set[Hashable] = field(default_factory=set)  # distinct input shapes after warm-up

    def as_json(self) -> dict[str, Any]:
        return {
            "bucketed": self.bucketed,
            "unbucketed": self.unbucketed,
            "rows": self.rows,
            "padded_rows": self.padded_rows,
            "warm_runs": self.warm_runs,
            "warm_seconds": round(self.warm_seconds, 3),
            "runs": self.runs,
            "run_seconds": round(self.run_seconds, 6),
            "pad_seconds": round(self.pad_seconds, 6),
            "shapes_run": len(self.shapes),
            "switches": self.switches,
        }


MAX_SHAPES_KEPT = 256
"""Distinct input shapes ShapeStats remembers (a model fed free shapes stops counting there)."""


def shape_key(feeds: dict[str, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The input shapes of one runtime call, as a hashable key (names sorted)."""
    return tuple(sorted((k, tuple(np.shape(v))) for k, v in feeds.items()))


class BufferPool:
    """Reusable input buffers per (shape, dtype): padding a batch writes into one of them
    instead of a fresh allocation (large fresh arrays cost a page fault per 4 KiB, and a GPU
    batch of 16 camera frames is 100 MB). A buffer is taken for one runtime call and given
    back after it; at most `keep` idle buffers stay per shape."""

    def __init__(self, keep: int = 2, max_bytes: int = 512 << 20) -> None:
        self.keep = keep
        self.max_bytes = max_bytes  # idle buffers beyond this are let go
        self._free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._idle = 0
        self.allocated = 0

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            free = self._free.get(key)
            if free:
                arr = free.pop()
                self._idle -= arr.nbytes
                if not free:
                    del self._free[key]
                return arr
            self.allocated += 1
        return np.empty(shape, dtype)

    def give(self, arr: np.ndarray) -> None:
        key = (tuple(arr.shape), arr.dtype.str)
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self.keep and self._idle + arr.nbytes <= self.max_bytes:
                free.append(arr)
                self._idle += arr.nbytes
            elif not free:
                del self._free[key]


@dataclass(slots=True)
class EngineInfo:
    """What `livesense engines list --json` shows for one model."""

    model: str
    backend: str
    providers: list[str]
    precision: str
    cache: str | None
    placement: str = ""  # why this backend: measured times, a setting, the only one there
    buckets: int = 0  # fixed input shapes (0: the model runs at whatever shape it is given)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "providers": list(self.providers),
            "precision": self.precision,
            "cache": self.cache,
            "placement": self.placement,
            "buckets": self.buckets,
        }


class Engine(ABC):
    """One loaded model. `run` is thread-safe; batch rows are axis 0 of every input."""

    path: Path
    name: str
    backend: str
    precision: str
    cache: str | None
    timing: EngineTiming
    recorder: Any  # a CalibrationRecorder, or None

    def _init_engine(
        self, path: Path, name: str, backend: str, precision: str, cache: str | None
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.backend = backend
        self.precision = precision
        self.cache = cache
        self.timing = EngineTiming()
        self.recorder = None
        self._timing_lock = threading.Lock()
        self.buckets: Buckets | None = None
        self.batch_sizes: tuple[int, ...] = ()
        self.shape_stats = ShapeStats()
        self.placement = ""
        self._last_shape: dict[Hashable, Hashable] = {}  # session -> the shape it last ran
        self._pool = BufferPool()

    @property
    def fixed_shapes(self) -> bool:
        """Inputs are padded to the model's buckets and batch sizes (see `set_buckets`)."""
        return self.buckets is not None

    def set_buckets(self, buckets: Buckets | None, batch_sizes: tuple[int, ...]) -> None:
        """Run every call at one of `buckets`' shapes and one of `batch_sizes` from now on."""
        self.buckets = buckets
        self.batch_sizes = tuple(sorted(set(batch_sizes))) or (1,)

    def warm(self) -> int:
        """Run every bucket at every batch size once (zeros), so that the runtime has chosen
        its kernels for each before real inputs come; returns the number of runs."""
        if self.buckets is None:
            return 0
        buckets = self.buckets
        kinds = {t.name: t.dtype for t in self.inputs()}
        t0 = time.perf_counter()

        def once(k: int, size: int) -> None:
            feeds = {
                name: np.zeros(buckets.shape_at(k, name, size), _dtype(kinds[name]))
                for name in buckets.inputs
                if name in kinds
            }
            for name, value in buckets.constants.items():
                feeds[name] = np.array(value, _dtype(kinds.get(name, "float")))
            self._run(feeds, None)
            key = shape_key(feeds)
            with self._timing_lock:
                self._last_shape[self._session_of(key)] = key

        shapes = [(k, size) for k in range(len(buckets.shapes)) for size in self.batch_sizes]
        workers = min(self.warm_workers(), len(shapes))
        if workers > 1:  # one session per shape: their first runs are independent
            with ThreadPoolExecutor(workers, thread_name_prefix=f"warm-{self.name}") as pool:
                list(pool.map(lambda ks: once(*ks), shapes))
        else:
            for k, size in shapes:
                once(k, size)
        self.shape_stats.warm_runs += len(shapes)
        self.shape_stats.warm_seconds += time.perf_counter() - t0
        return len(shapes)

    def warm_workers(self) -> int:
        """Threads that warm shapes at once (1 where all shapes share one runtime state)."""
        return 1

    def _session_of(self, key: Hashable) -> Hashable:
        """Which runtime state (session) runs inputs of these shapes; one for all by default."""
        return 0

    def _run_counted(self, feeds: dict[str, Any], outputs: list[str] | None) -> list[Any]:
        """`_run`, timed, with the shapes it ran at and whether its session switched shape
        (ONNX Runtime's CUDA convolutions rebuild their cuDNN plans on every switch)."""
        key = shape_key(feeds)
        t0 = time.perf_counter()
        result = self._run(feeds, outputs)
        seconds = time.perf_counter() - t0
        session = self._session_of(key)
        with self._timing_lock:
            stats = self.shape_stats
            stats.runs += 1
            stats.run_seconds += seconds
            if len(stats.shapes) < MAX_SHAPES_KEPT:
                stats.shapes.add(key)
            last = self._last_shape.get(session)
            if last is not None and last != key:
                stats.switches += 1
            self._last_shape[session] = key
        return result

    @property
    @abstractmethod
    def providers(self) -> list[str]:
        """The runtimes that execute the model, best first (ORT providers, or TensorRT)."""

    @abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> list[Any]: ...

    def metadata(self) -> dict[str, str]:
        """The ONNX file's custom metadata (e.g. the OCR recogniser's character list)."""
        return onnx_metadata(self.path)

    @property
    def max_batch(self) -> int | None:
        """The largest batch the engine takes (a TensorRT profile's bound), None: any."""
        return None

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[Any]:
        """Run one batch; returns the outputs (all, or those named) in order.

        With buckets set, the batch is padded to a bucket's shape and a batch size first
        (outputs come back with the caller's batch size; other output axes stay at the
        bucket's size, which the model's adapter crops where it matters).
        """
        t0 = time.perf_counter()
        if self.buckets is not None:
            result = self._run_fixed(self.buckets, feeds, outputs)
        else:
            result = self._run_counted(feeds, outputs)
        seconds = time.perf_counter() - t0
        batch = _batch_of(feeds, self.buckets)
        with self._timing_lock:
            self.timing.add(batch, seconds)
        if self.recorder is not None:
            self.recorder.offer(feeds)
        return result

    def run_rows(
        self,
        rows: Mapping[str, Sequence[np.ndarray]],
        outputs: list[str] | None = None,
        constants: Mapping[str, np.ndarray] | None = None,
        axes: Mapping[str, int] | None = None,
    ) -> list[Any]:
        """Run a batch given as its rows, one list per input (each row an item's array, with
        or without its batch axis of size 1); outputs come back with one row per item.

        The rows are written straight into a reused buffer at the batch's shape (with fixed
        shapes: the bucket's shape and batch size; padding: zeros beyond each row, extra rows
        repeating the last), so a batch costs one copy of its rows and no fresh allocation,
        where stacking and then padding cost two copies into new memory (without fixed
        shapes the batch is a fresh array, written the same way). `constants` are
        inputs passed as they are (a scalar sample rate); `axes` the batch axis of inputs
        where it is not 0 (the buckets' own, where the engine has them)."""
        names = list(rows)
        n = len(rows[names[0]]) if names else 0
        buckets = self.buckets
        ranks = {t.name: len(t.shape) for t in self.inputs()}
        if n == 0:
            raise ValueError("run_rows needs at least one row")
        if buckets is not None and n > self.batch_sizes[-1]:
            stacked = {k: stack_rows(v, self._axis(k, axes), ranks[k]) for k, v in rows.items()}
            return self.run({**stacked, **(constants or {})}, outputs)
        t0 = time.perf_counter()
        taken: list[np.ndarray] = []
        feeds: dict[str, np.ndarray] = dict(constants or {})
        size = n if buckets is None else next(s for s in self.batch_sizes if s >= n)
        k = None
        if buckets is not None:
            k = buckets.fit(
                {n: _rows_shape(v, self._axis(n, axes), ranks[n]) for n, v in rows.items()}
            )
        for name, items in rows.items():
            axis = self._axis(name, axes)
            if buckets is not None and k is not None and name in buckets.shapes[0]:
                target = list(buckets.shape_at(k, name, size))
            else:
                target = list(_rows_shape(items, axis, ranks[name]))
                target[axis] = size
            dtype = np.asarray(items[0]).dtype
            if buckets is not None:  # a bounded set of shapes: their buffers are reused
                buf = self._pool.take(tuple(target), dtype)
                taken.append(buf)
            else:  # shapes as they come: a fresh array, as stacking made
                buf = np.empty(tuple(target), dtype)
            fill_rows(buf, items, axis)
            feeds[name] = buf
        pad_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            result = self._run_counted(feeds, outputs)
        finally:
            for buf in taken:
                self._pool.give(buf)
        seconds = time.perf_counter() - t1
        with self._timing_lock:
            self.timing.add(n, seconds + pad_seconds)
            stats = self.shape_stats
            stats.pad_seconds += pad_seconds
            if buckets is not None:
                stats.rows += n
                stats.padded_rows += size - n
                if k is None:
                    stats.unbucketed += 1
                else:
                    stats.bucketed += 1
        if self.recorder is not None:
            self.recorder.offer({k: v[:n] if v.ndim else v for k, v in feeds.items()})
        if size == n:
            return list(result)
        names_out = outputs or [t.name for t in self.outputs()]
        return [
            _take(np.asarray(r), self._axis(o, axes), 0, n)
            for r, o in zip(result, names_out, strict=False)
        ]

    def _axis(self, name: str, axes: Mapping[str, int] | None = None) -> int:
        if self.buckets is not None:
            return self.buckets.batch_axis(name)
        return (axes or {}).get(name, 0)

    def _run_fixed(
        self, buckets: Buckets, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> list[Any]:
        batch = _batch_of(feeds, buckets)
        if batch == 0:  # nothing to pad from
            return list(self._run_counted(feeds, outputs))
        largest = self.batch_sizes[-1]
        names = outputs or [t.name for t in self.outputs()]
        if batch > largest:  # in chunks of the largest batch size, joined again
            parts = []
            for start in range(0, batch, largest):
                chunk = {
                    k: _take(v, buckets.batch_axis(k), start, start + largest)
                    for k, v in feeds.items()
                }
                parts.append(self._run_fixed(buckets, chunk, outputs))
            return [
                np.concatenate([np.asarray(p[j]) for p in parts], axis=buckets.batch_axis(n))
                for j, n in enumerate(names)
            ]
        size = next(s for s in self.batch_sizes if s >= batch)
        t0 = time.perf_counter()
        k = buckets.fit({n: tuple(np.shape(v)) for n, v in feeds.items()})
        padded: dict[str, np.ndarray] = {}
        taken: list[np.ndarray] = []
        for name, value in feeds.items():
            arr = np.asarray(value)
            if arr.ndim == 0 or name not in buckets.shapes[0]:
                padded[name] = arr
                continue
            axis = buckets.batch_axis(name)
            target = list(buckets.shape_at(k, name, size) if k is not None else arr.shape)
            target[axis] = size
            if tuple(target) != arr.shape:
                buf = self._pool.take(tuple(target), arr.dtype)
                taken.append(buf)
                pad_into(buf, arr, axis)
                arr = buf
            padded[name] = arr
        pad_seconds = time.perf_counter() - t0
        try:
            result = self._run_counted(padded, outputs)
        finally:
            for buf in taken:
                self._pool.give(buf)
        with self._timing_lock:
            stats = self.shape_stats
            stats.pad_seconds += pad_seconds
            stats.rows += batch
            stats.padded_rows += size - batch
            if k is None:
                stats.unbucketed += 1
            else:
                stats.bucketed += 1
        if size == batch:
            return list(result)
        return [
            _take(np.asarray(r), buckets.batch_axis(n), 0, batch)
            for r, n in zip(result, names, strict=False)
        ]

    def info(self) -> EngineInfo:
        return EngineInfo(
            self.name,
            self.backend,
            self.providers,
            self.precision,
            self.cache,
            self.placement,
            len(self.buckets.shapes) if self.buckets is not None else 0,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **self.info().as_json(),
            "path": str(self.path),
            "inputs": [vars_of(t) for t in self.inputs()],
            "outputs": [vars_of(t) for t in self.outputs()],
            "max_batch": self.max_batch,
            "timing": self.timing.as_json(),
            "batch_sizes": list(self.batch_sizes),
            "sessions": getattr(self, "sessions", 1),
            "shapes": self.shape_stats.as_json(),
        }

    def close(self) -> None:  # noqa: B027  (most backends hold nothing to free)
        """Free the runtime's resources (GPU memory); the engine is unusable afterwards."""


def vars_of(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "shape": t.shape, "dtype": t.dtype}


def _batch_of(feeds: dict[str, np.ndarray], buckets: Buckets | None = None) -> int:
    for name, value in feeds.items():
        shape: tuple[int, ...] = tuple(getattr(value, "shape", ()))
        if len(shape) >= 1:
            axis = buckets.batch_axis(name) if buckets is not None else 0
            return int(shape[axis])
    return 1 if feeds else 0


def _row(value: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """An item's array with its batch axis (of size 1) where it came without."""
    arr = np.asarray(value)
    return np.expand_dims(arr, axis) if arr.ndim == ndim - 1 else arr


def _rows_shape(rows: Sequence[np.ndarray], axis: int, ndim: int) -> tuple[int, ...]:
    """The shape that holds every row (largest per axis), with the batch axis at 1."""
    shapes = [np.shape(_row(r, ndim, axis)) for r in rows]
    out = [max(sh[d] for sh in shapes) for d in range(ndim)]
    out[axis] = 1
    return tuple(out)


def stack_rows(rows: Sequence[np.ndarray], axis: int, ndim: int) -> np.ndarray:
    """Rows stacked along the batch axis, zero-padded to the largest (a fresh array)."""
    target = list(_rows_shape(rows, axis, ndim))
    target[axis] = len(rows)
    buf = np.empty(target, np.asarray(rows[0]).dtype)
    fill_rows(buf, rows, axis)
    return buf


def fill_rows(buf: np.ndarray, rows: Sequence[np.ndarray], axis: int) -> None:
    """Write each row into its place along `axis` of `buf`: zeros beyond a row that is
    smaller than `buf` on other axes, and rows beyond the last repeating it."""
    n = len(rows)
    for r, value in enumerate(rows):
        row = _row(value, buf.ndim, axis)
        place: list[slice] = [slice(0, d) for d in row.shape]
        place[axis] = slice(r, r + 1)
        buf[tuple(place)] = row
        for d in range(buf.ndim):
            if d != axis and buf.shape[d] > row.shape[d]:
                beyond: list[slice] = [slice(None)] * buf.ndim
                beyond[axis] = slice(r, r + 1)
                beyond[d] = slice(row.shape[d], None)
                buf[tuple(beyond)] = 0
    _repeat_last(buf, axis, n)


def pad_into(buf: np.ndarray, arr: np.ndarray, axis: int) -> None:
    """Write `arr` into the corner of `buf` (at least as large on every axis): zeros beyond
    it on the other axes, and rows beyond its batch along `axis` repeating its last row
    (always a valid input, e.g. a recurrent state)."""
    real = tuple(slice(0, d) for d in arr.shape)
    buf[real] = arr
    rows = arr.shape[axis]
    for d in range(arr.ndim):
        if d != axis and buf.shape[d] > arr.shape[d]:
            index = [slice(None)] * arr.ndim
            index[axis] = slice(0, rows)
            index[d] = slice(arr.shape[d], None)
            buf[tuple(index)] = 0
    _repeat_last(buf, axis, rows)


def _repeat_last(buf: np.ndarray, axis: int, n: int) -> None:
    """Rows of `buf` beyond the first `n` along `axis` repeat row n - 1 (a valid input)."""
    if buf.shape[axis] > n:
        extra: list[slice] = [slice(None)] * buf.ndim
        extra[axis] = slice(n, None)
        last: list[slice] = [slice(None)] * buf.ndim
        last[axis] = slice(n - 1, n)
        buf[tuple(extra)] = buf[tuple(last)]


def _take(value: Any, axis: int, start: int, stop: int) -> Any:
    """Rows start..stop of `value` along `axis` (scalars pass as they are)."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        return value
    index: list[slice] = [slice(None)] * arr.ndim
    index[axis] = slice(start, stop)
    return arr[tuple(index)]


def _dtype(onnx_type: str) -> Any:
    for key, dtype in (("int64", np.int64), ("int32", np.int32), ("float16", np.float16)):
        if key in onnx_type:
            return dtype
    return np.float32


_METADATA: dict[tuple[str, float], dict[str, str]] = {}
_METADATA_LOCK = threading.Lock()


def onnx_metadata(path: Path) -> dict[str, str]:
    """Custom metadata of an ONNX file, read without building an optimised session."""
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime)
    with _METADATA_LOCK:
        if key in _METADATA:
            return dict(_METADATA[key])
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
    except ImportError:  # onnx is optional at run time: onnxruntime reads it too
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = dict(session.get_modelmeta().custom_metadata_map)
    with _METADATA_LOCK:
        _METADATA[key] = meta
    return dict(meta)


def onnx_inputs(path: Path) -> list[TensorInfo]:
    """The graph inputs of an ONNX file (names, shapes with dynamic axes as names, dtypes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [TensorInfo(i.name, list(i.shape), i.type) for i in session.get_inputs()]

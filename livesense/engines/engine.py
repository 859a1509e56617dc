"""The one interface every neural model runs behind: load, describe, run a batch, time.

Backends (ONNX Runtime with the CPU, CUDA or TensorRT provider; native TensorRT) subclass
`Engine` and implement `_run`; the base class does the timing, the optional recording of
inputs for INT8 calibration and the description shown by `livesense engines list`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
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

    def as_json(self) -> dict[str, Any]:
        return {
            "bucketed": self.bucketed,
            "unbucketed": self.unbucketed,
            "rows": self.rows,
            "padded_rows": self.padded_rows,
            "warm_runs": self.warm_runs,
            "warm_seconds": round(self.warm_seconds, 3),
        }


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
        kinds = {t.name: t.dtype for t in self.inputs()}
        runs = 0
        t0 = time.perf_counter()
        for k in range(len(self.buckets.shapes)):
            for size in self.batch_sizes:
                feeds = {
                    name: np.zeros(self.buckets.shape_at(k, name, size), _dtype(kinds[name]))
                    for name in self.buckets.inputs
                    if name in kinds
                }
                for name, value in self.buckets.constants.items():
                    feeds[name] = np.array(value, _dtype(kinds.get(name, "float")))
                self._run(feeds, None)
                runs += 1
        self.shape_stats.warm_runs += runs
        self.shape_stats.warm_seconds += time.perf_counter() - t0
        return runs

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
            result = self._run(feeds, outputs)
        seconds = time.perf_counter() - t0
        batch = _batch_of(feeds, self.buckets)
        with self._timing_lock:
            self.timing.add(batch, seconds)
        if self.recorder is not None:
            self.recorder.offer(feeds)
        return result

    def _run_fixed(
        self, buckets: Buckets, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> list[Any]:
        batch = _batch_of(feeds, buckets)
        if batch == 0:  # nothing to pad from
            return list(self._run(feeds, outputs))
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
        k = buckets.fit({n: tuple(np.shape(v)) for n, v in feeds.items()})
        padded: dict[str, np.ndarray] = {}
        for name, value in feeds.items():
            arr = np.asarray(value)
            if arr.ndim == 0 or name not in buckets.shapes[0]:
                padded[name] = arr
                continue
            axis = buckets.batch_axis(name)
            target = list(buckets.shape_at(k, name, size) if k is not None else arr.shape)
            target[axis] = size
            pad = [(0, target[d] - arr.shape[d]) for d in range(arr.ndim)]
            if any(p[1] for p in pad):
                batch_pad = pad[axis]
                pad[axis] = (0, 0)
                if any(p[1] for p in pad):
                    arr = np.pad(arr, pad)
                if batch_pad[1]:  # extra rows repeat the last one: always a valid input
                    edge = [(0, 0)] * arr.ndim
                    edge[axis] = batch_pad
                    arr = np.pad(arr, edge, mode="edge")
            padded[name] = arr
        result = self._run(padded, outputs)
        with self._timing_lock:
            stats = self.shape_stats
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

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
from typing import Any

import numpy as np

from livesense.errors import ModelMissingError


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
class EngineInfo:
    """What `livesense engines list --json` shows for one model."""

    model: str
    backend: str
    providers: list[str]
    precision: str
    cache: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "providers": list(self.providers),
            "precision": self.precision,
            "cache": self.cache,
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
        """Run one batch; returns the outputs (all, or those named) in order."""
        t0 = time.perf_counter()
        result = self._run(feeds, outputs)
        seconds = time.perf_counter() - t0
        batch = _batch_of(feeds)
        with self._timing_lock:
            self.timing.add(batch, seconds)
        if self.recorder is not None:
            self.recorder.offer(feeds)
        return result

    def info(self) -> EngineInfo:
        return EngineInfo(self.name, self.backend, self.providers, self.precision, self.cache)

    def describe(self) -> dict[str, Any]:
        return {
            **self.info().as_json(),
            "path": str(self.path),
            "inputs": [vars_of(t) for t in self.inputs()],
            "outputs": [vars_of(t) for t in self.outputs()],
            "max_batch": self.max_batch,
            "timing": self.timing.as_json(),
        }

    def close(self) -> None:  # noqa: B027  (most backends hold nothing to free)
        """Free the runtime's resources (GPU memory); the engine is unusable afterwards."""


def vars_of(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "shape": t.shape, "dtype": t.dtype}


def _batch_of(feeds: dict[str, np.ndarray]) -> int:
    for value in feeds.values():
        shape: tuple[int, ...] = tuple(getattr(value, "shape", ()))
        if len(shape) >= 1:
            return int(shape[0])
    return 1 if feeds else 0


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

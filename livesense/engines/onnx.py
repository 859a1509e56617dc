"""ONNX Runtime sessions behind one small interface: load, describe, run, time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livesense.errors import ModelMissingError


@dataclass(slots=True)
class TensorInfo:
    name: str
    shape: list[int | str | None]
    dtype: str


@dataclass(slots=True)
class EngineTiming:
    calls: int = 0
    items: int = 0
    seconds: float = 0.0

    def add(self, items: int, seconds: float) -> None:
        self.calls += 1
        self.items += items
        self.seconds += seconds


@dataclass
class OnnxEngine:
    """One ONNX model on onnxruntime. Thread-safe: ORT sessions allow concurrent run()."""

    path: Path
    name: str = ""
    threads: int = 0  # 0: onnxruntime's choice
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    timing: EngineTiming = field(default_factory=EngineTiming)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        if not self.path.exists():
            raise ModelMissingError(f"The model file {self.path} does not exist.")
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = set(ort.get_available_providers())
        providers = [p for p in self.providers if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        self.name = self.name or self.path.stem
        self._lock = threading.Lock()

    @property
    def active_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(i.name, list(i.shape), i.type) for i in self.session.get_inputs()]

    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(o.name, list(o.shape), o.type) for o in self.session.get_outputs()]

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "path": str(self.path),
            "providers": self.active_providers,
            "inputs": [vars_of(t) for t in self.inputs()],
            "outputs": [vars_of(t) for t in self.outputs()],
        }

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[Any]:
        t0 = time.perf_counter()
        result = self.session.run(outputs, feeds)
        batch = next(iter(feeds.values())).shape[0] if feeds else 0
        with self._lock:
            self.timing.add(int(batch), time.perf_counter() - t0)
        return list(result)


def vars_of(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "shape": t.shape, "dtype": t.dtype}

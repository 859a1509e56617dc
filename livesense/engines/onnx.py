"""ONNX Runtime sessions behind the engine interface: CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livesense.engines.engine import (
    BackendUnavailableError,
    Engine,
    EngineTiming,
    TensorInfo,
    shape_key,
    vars_of,
)
from livesense.errors import ModelMissingError

__all__ = ["EngineTiming", "OnnxEngine", "TensorInfo", "available_providers", "vars_of"]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
BACKEND_OF_PROVIDER = {TENSORRT: "ort-tensorrt", CUDA: "ort-cuda", CPU: "ort-cpu"}

ProviderSpec = str | tuple[str, dict[str, Any]]


@functools.lru_cache(maxsize=1)
def available_providers() -> tuple[str, ...]:
    """The execution providers this onnxruntime build has (not proof that a GPU is there)."""
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


@functools.lru_cache(maxsize=1)
def tensorrt_libraries() -> bool:
    """Whether TensorRT's runtime library can be loaded (ORT's TensorRT provider needs it;
    onnxruntime-gpu lists the provider whether or not TensorRT is installed)."""
    import ctypes
    import importlib.util

    _preload_gpu_libraries()
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    spec = importlib.util.find_spec("tensorrt_libs")
    return spec is not None and bool(spec.submodule_search_locations)


MAX_SESSIONS = 128
"""Sessions one engine holds with `session_per_shape` (shapes beyond run on the first)."""


class OnnxEngine(Engine):
    """One ONNX model on onnxruntime. Thread-safe: ORT sessions allow concurrent run().

    `providers` are tried in order by onnxruntime; names this build lacks are left out. With
    `require` set, the session must end up with that provider first, else the load fails
    with BackendUnavailableError (ORT would otherwise fall back to the CPU silently).

    `session_per_shape`: once the engine has buckets, each input shape (bucket x batch size)
    runs on a session of its own. ORT's CUDA convolution keeps the cuDNN plan of the last
    shape it ran and rebuilds it whenever the shape changes (tens of ms per call on a model
    like the recogniser), so one session fed alternating buckets re-plans on nearly every
    call; a session per shape plans once, at warm-up.
    """

    def __init__(
        self,
        path: Path | str,
        name: str = "",
        threads: int = 0,
        providers: Sequence[ProviderSpec] | None = None,
        *,
        require: str | None = None,
        precision: str = "fp32",
        cache: str | None = None,
        backend: str | None = None,
        session_per_shape: bool = False,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise ModelMissingError(f"The model file {path} does not exist.")
        self.threads = threads
        opts = session_options(threads)
        available = set(available_providers())
        wanted: list[ProviderSpec] = list(providers or [CPU])
        chosen = [p for p in wanted if _provider_name(p) in available] or [CPU]
        if require is not None and require not in [_provider_name(p) for p in chosen]:
            raise BackendUnavailableError(
                f"{require} is not in this onnxruntime build (install the gpu extra: "
                "pip install 'livesense[gpu]')."
            )
        if any(_provider_name(p) in (CUDA, TENSORRT) for p in chosen):
            _preload_gpu_libraries()
        self.session = ort.InferenceSession(str(path), opts, providers=chosen)
        # On a GPU the CPU threads of a session only run the few nodes left on the CPU:
        # the sessions per shape (up to a hundred per model) get one each.
        on_gpu = _provider_name(chosen[0]) in (CUDA, TENSORRT)
        shape_opts = session_options(1) if on_gpu and threads != 1 else opts
        self._new_session = lambda: ort.InferenceSession(str(path), shape_opts, providers=chosen)
        self.session_per_shape = session_per_shape
        self._sessions: dict[Hashable, Any] = {}
        self._sessions_lock = threading.Lock()
        active = list(self.session.get_providers())
        if require is not None and (not active or active[0] != require):
            raise BackendUnavailableError(
                f"{require} could not start for {path.name} (onnxruntime fell back to "
                f"{active[0] if active else 'nothing'}; is an NVIDIA GPU with its driver there?)."
            )
        self.providers_asked = [_provider_name(p) for p in wanted]
        first = active[0] if active else CPU
        self._init_engine(
            path, name, backend or BACKEND_OF_PROVIDER.get(first, "ort-cpu"), precision, cache
        )
        self._inputs = [
            TensorInfo(i.name, list(i.shape), i.type) for i in self.session.get_inputs()
        ]
        self._outputs = [
            TensorInfo(o.name, list(o.shape), o.type) for o in self.session.get_outputs()
        ]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def active_providers(self) -> list[str]:
        return self.providers

    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> list[Any]:
        if not self.session_per_shape or self.buckets is None:
            return list(self.session.run(outputs, feeds))
        return list(self.session_for(shape_key(feeds)).run(outputs, feeds))

    def session_for(self, key: Hashable) -> Any:
        """The session that runs inputs of these shapes (see `session_per_shape`)."""
        if not self.session_per_shape or self.buckets is None:
            return self.session
        session = self._sessions.get(key)
        if session is not None:
            return session
        with self._sessions_lock:
            full = len(self._sessions) >= MAX_SESSIONS
        if full:
            return self.session
        made = self._new_session()  # outside the lock: warm-up makes several at once
        with self._sessions_lock:
            return self._sessions.setdefault(key, made)

    @property
    def sessions(self) -> int:
        """Sessions this engine holds (1, or one per input shape run so far)."""
        return max(1, len(self._sessions))

    def _session_of(self, key: Hashable) -> Hashable:
        if not self.session_per_shape or self.buckets is None:
            return 0
        return key if key in self._sessions else 0

    def warm_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.session_per_shape else 1

    def close(self) -> None:
        with self._sessions_lock:
            self._sessions.clear()


def session_options(threads: int) -> Any:
    """livesense's ORT session options: `threads` intra-op threads that do not spin.

    Many threads share few cores here (one per stream stage, one per batcher), and ORT's
    spinning workers took CPU from them: on 2 cores, 16 streams of text embedding ran 1.7x
    slower with spinning on.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def _provider_name(p: ProviderSpec) -> str:
    return p if isinstance(p, str) else p[0]


@functools.lru_cache(maxsize=1)
def _preload_gpu_libraries() -> None:
    """Load CUDA/cuDNN (and TensorRT) from pip packages so ORT's GPU providers find them."""
    with contextlib.suppress(Exception):
        import tensorrt  # noqa: F401  (loads libnvinfer for the TensorRT provider)
    with contextlib.suppress(Exception):  # pip's tensorrt_libs: the parser ORT's provider links
        import ctypes
        import importlib.util

        spec = importlib.util.find_spec("tensorrt_libs")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0])
            for pattern in ("libnvinfer.so.*", "libnvinfer_plugin.so.*", "libnvonnxparser.so.*"):
                for lib in sorted(folder.glob(pattern))[:1]:
                    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    try:
        import onnxruntime as ort

        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            preload()
    except Exception as e:  # system CUDA libraries may still be found by the loader
        log.debug("onnxruntime.preload_dlls failed: %s", e)

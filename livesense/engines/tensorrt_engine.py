"""A serialised TensorRT engine run through TensorRT's Python API (the `gpu` extra).

Memory: device buffers (cudaMalloc) and page-locked host buffers (cudaMallocHost) are sized
once for the profile's largest shapes, then reused by every call on one CUDA stream; CUDA is
reached through NVIDIA's cuda-python bindings, so neither torch nor cupy is needed. One
execution context serves all callers under a lock (the cross-stream batcher gives it full
batches, which is where a GPU's throughput comes from).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livesense.engines.engine import Engine, EngineBuildError, EngineError, TensorInfo
from livesense.engines.gpu import check, cudart, detect_gpu, import_tensorrt

log = logging.getLogger(__name__)

ORT_DTYPES = {
    np.dtype(np.float32): "tensor(float)",
    np.dtype(np.float16): "tensor(float16)",
    np.dtype(np.int64): "tensor(int64)",
    np.dtype(np.int32): "tensor(int32)",
    np.dtype(np.int8): "tensor(int8)",
    np.dtype(np.uint8): "tensor(uint8)",
    np.dtype(np.bool_): "tensor(bool)",
}


@dataclass(slots=True)
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 for dynamic axes
    max_shape: tuple[int, ...]
    device: int = 0
    host: int = 0
    nbytes: int = 0

    def host_view(self, nbytes: int) -> np.ndarray:
        raw = (ctypes.c_uint8 * nbytes).from_address(self.host)
        return np.ctypeslib.as_array(raw)


class TensorRTEngine(Engine):
    """Runs a TensorRT engine (bytes from EngineBuilder/EngineCache) on GPU 0."""

    def __init__(
        self,
        data: bytes,
        path: Path,
        *,
        name: str = "",
        precision: str = "fp16",
        cache: str | None = None,
    ) -> None:
        trt = import_tensorrt()
        self._rt = cudart()
        if detect_gpu() is None:
            raise EngineError("The TensorRT backend needs an NVIDIA GPU, and none was found.")
        self._init_engine(path, name, "tensorrt", precision, cache)
        self._trt_version = str(trt.__version__)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise EngineBuildError(
                f"The TensorRT engine for {self.name} could not be deserialised; rebuild it "
                "with 'livesense engines build'."
            )
        self._context = self._engine.create_execution_context()
        self._stream = check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        self._tensors: list[_Tensor] = []
        self._closed = False
        try:
            self._allocate(trt)
        except Exception:
            self.close()
            raise

    def _allocate(self, trt: Any) -> None:
        engine, ctx = self._engine, self._context
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            max_shape = shape
            if is_input and any(d < 0 for d in shape):
                max_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
            self._tensors.append(_Tensor(name, is_input, dtype, shape, max_shape))
        for t in self._tensors:
            if t.is_input:
                ctx.set_input_shape(t.name, t.max_shape)
        for t in self._tensors:
            if not t.is_input:
                t.max_shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
                if any(d < 0 for d in t.max_shape):
                    raise EngineBuildError(
                        f"{self.name}: the output {t.name} has a data-dependent shape, which "
                        "the TensorRT backend does not support; use an ONNX Runtime backend."
                    )
        for t in self._tensors:
            t.nbytes = max(1, int(np.prod(t.max_shape, dtype=np.int64)) * t.dtype.itemsize)
            t.device = int(check(self._rt.cudaMalloc(t.nbytes), "cudaMalloc"))
            t.host = int(check(self._rt.cudaMallocHost(t.nbytes), "cudaMallocHost"))
            if not ctx.set_tensor_address(t.name, t.device):
                raise EngineBuildError(f"{self.name}: TensorRT refused the buffer of {t.name}.")

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {self._trt_version}"]

    @property
    def max_batch(self) -> int | None:
        # Axis 0 of the first input is the batch (VAD's state batches on axis 1).
        first = next((t for t in self._tensors if t.is_input and t.max_shape), None)
        return first.max_shape[0] if first is not None else None

    def inputs(self) -> list[TensorInfo]:
        return [self._info(t) for t in self._tensors if t.is_input]

    def outputs(self) -> list[TensorInfo]:
        return [self._info(t) for t in self._tensors if not t.is_input]

    @staticmethod
    def _info(t: _Tensor) -> TensorInfo:
        shape: list[int | str | None] = [d if d >= 0 else None for d in t.shape]
        return TensorInfo(t.name, shape, ORT_DTYPES.get(t.dtype, str(t.dtype)))

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> list[Any]:
        rt = self._rt
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            if self._closed:
                raise EngineError(f"The TensorRT engine for {self.name} is closed.")
            for t in self._tensors:
                if not t.is_input:
                    continue
                if t.name not in feeds:
                    raise EngineError(f"{self.name}: the input {t.name} is missing.")
                arr = np.ascontiguousarray(feeds[t.name], dtype=t.dtype)
                self._check_shape(t, arr.shape)
                self._context.set_input_shape(t.name, arr.shape)
                n = arr.nbytes
                if n:
                    t.host_view(n)[:] = arr.reshape(-1).view(np.uint8)
                    check(rt.cudaMemcpyAsync(t.device, t.host, n, h2d, self._stream), "H2D copy")
            if not self._context.execute_async_v3(int(self._stream)):
                raise EngineError(f"TensorRT failed to run {self.name}.")
            shapes: dict[str, tuple[int, ...]] = {}
            for t in self._tensors:
                if t.is_input:
                    continue
                shape = tuple(int(d) for d in self._context.get_tensor_shape(t.name))
                shapes[t.name] = shape
                n = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
                if n:
                    check(rt.cudaMemcpyAsync(t.host, t.device, n, d2h, self._stream), "D2H copy")
            check(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            result: dict[str, np.ndarray] = {}
            for t in self._tensors:
                if t.is_input:
                    continue
                shape = shapes[t.name]
                n = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
                result[t.name] = t.host_view(n).view(t.dtype).reshape(shape).copy()
        names = outputs or [t.name for t in self._tensors if not t.is_input]
        return [result[n] for n in names]

    def _check_shape(self, t: _Tensor, shape: tuple[int, ...]) -> None:
        ok = len(shape) == len(t.shape) and all(
            (want < 0 or want == got) and got <= top
            for want, got, top in zip(t.shape, shape, t.max_shape, strict=True)
        )
        if not ok:
            raise EngineError(
                f"{self.name}: input {t.name} of shape {shape} is outside the engine's profile "
                f"(up to {t.max_shape}); rebuild with a larger profile or use smaller batches."
            )

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        with self._lock:
            self._closed = True
            for t in self._tensors:
                if t.device:
                    self._rt.cudaFree(t.device)
                if t.host:
                    self._rt.cudaFreeHost(t.host)
                t.device = t.host = 0
            self._rt.cudaStreamDestroy(self._stream)
            self._context = None
            self._engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

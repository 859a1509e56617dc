"""Which NVIDIA GPU is here, and the CUDA runtime calls the native TensorRT backend needs.

CUDA is reached through NVIDIA's `cuda-python` bindings (the `gpu` extra): plain
cudaMalloc/cudaMemcpyAsync/streams, no torch, no cupy. `nvidia-smi` is the fallback for
naming the GPU when the bindings are not installed.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from livesense.engines.engine import BackendUnavailableError


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU's identity as engine cache keys need it."""

    name: str
    compute_capability: str  # "9.0"

    @property
    def slug(self) -> str:
        clean = "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")
        return f"{'-'.join(p for p in clean.split('-') if p)}-sm{self.compute_capability}"


def cudart() -> Any:
    """The CUDA runtime bindings module, or one clear error naming the gpu extra."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # older cuda-python

        return runtime
    except ImportError:
        raise BackendUnavailableError(
            "The native TensorRT backend needs the package 'cuda-python', which is not "
            "installed: pip install 'livesense[gpu]'."
        ) from None


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's (error, value...) tuple; raise on a CUDA error."""
    if not isinstance(result, tuple):
        result = (result,)
    err, rest = result[0], result[1:]
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA failed in {what}: {_error_name(err)}.")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def _error_name(err: Any) -> str:
    name = getattr(err, "name", None)
    return str(name) if name else f"error {int(err)}"


@functools.lru_cache(maxsize=1)
def detect_gpu() -> GpuInfo | None:
    """GPU 0's name and compute capability, or None where there is no usable NVIDIA GPU."""
    try:
        rt = cudart()
        count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            return None
        props = check(rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        raw = props.name
        name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return GpuInfo(name.split("\x00")[0].strip(), f"{props.major}.{props.minor}")
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, cc = out.splitlines()[0].partition(",")
    return GpuInfo(name.strip(), cc.strip() or "0.0")


def tensorrt_version() -> str | None:
    """The installed TensorRT version, None where the `tensorrt` package is not there."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def import_tensorrt() -> Any:
    """The tensorrt module, or one clear error naming the gpu extra."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(
            "The TensorRT backend needs the package 'tensorrt', which is not installed: "
            "pip install 'livesense[gpu]'."
        ) from None
    return trt

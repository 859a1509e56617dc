"""TensorRT engines on disk, keyed so that a stale or foreign engine is never loaded.

The key holds everything an engine depends on: the ONNX file's sha256, the TensorRT
version, the GPU's name and compute capability, the precision and the optimisation
profile (and, for ONNX Runtime's TensorRT provider, the onnxruntime version). Each engine
file has a JSON sidecar with its key and its own sha256; a file whose sidecar does not match
the key asked for, or whose bytes do not match the sidecar, is never deserialised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything a built engine depends on."""

    model: str
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    profile: str
    runtime: str = "tensorrt"  # or "onnxruntime-<version>" for ORT's TensorRT provider

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def stem(self) -> str:
        """A readable, unique file name stem (Savant-style, plus the hashes)."""
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu.lower()).strip("-")
        gpu = "-".join(p for p in gpu.split("-") if p)[:32]
        trt = self.tensorrt.replace(".", "_")
        return (
            f"{self.model}_{self.precision}_{gpu}_sm{self.compute_capability.replace('.', '')}"
            f"_trt{trt}_{self.onnx_sha256[:12]}_{self.digest[:12]}"
        )


class EngineCache:
    """A directory of engines (`trt/`), ORT TensorRT caches (`ort-trt/`) and calibration data."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / "trt" / f"{key.stem}.engine"

    def meta_path(self, key: EngineKey) -> Path:
        return self.root / "trt" / f"{key.stem}.json"

    def failed_path(self, key: EngineKey) -> Path:
        return self.root / "trt" / f"{key.stem}.failed"

    def ort_dir(self, key: EngineKey) -> Path:
        """Where ONNX Runtime's TensorRT provider keeps this model's engines and timing cache."""
        return self.root / "ort-trt" / key.stem

    def calibration_dir(self, model: str) -> Path:
        """Recorded model inputs (npz) for INT8 calibration."""
        return self.root / "calibration" / model

    def calibration_cache(self, model: str, onnx_sha256: str) -> Path:
        """TensorRT's calibration table for a model (kept; shared with ORT's provider)."""
        return self.root / "calibration" / f"{model}_{onnx_sha256[:16]}.cache"

    def timing_cache(self) -> Path:
        return self.root / "trt" / "timing.cache"

    def load(self, key: EngineKey) -> bytes | None:
        """The engine's bytes if cached under exactly this key and intact, else None."""
        path, meta_path = self.engine_path(key), self.meta_path(key)
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = path.read_bytes()
        except (OSError, ValueError) as e:
            log.warning("engine cache entry %s is unreadable (%s): ignored", path.name, e)
            return None
        if meta.get("key") != asdict(key):
            log.warning("engine %s was built for another key: ignored", path.name)
            return None
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            log.warning("engine %s does not match its recorded sha256: ignored", path.name)
            return None
        return data

    def store(self, key: EngineKey, data: bytes, build_seconds: float) -> Path:
        """Write an engine and its sidecar atomically; returns the engine's path."""
        path = self.engine_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "key": asdict(key),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "build_seconds": round(build_seconds, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _atomic_write(path, data)
        _atomic_write(self.meta_path(key), json.dumps(meta, indent=1).encode())
        self.failed_path(key).unlink(missing_ok=True)
        return path

    def mark_failed(self, key: EngineKey, reason: str) -> None:
        """Remember that this exact key cannot be built, so starts do not retry every time."""
        path = self.failed_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, reason.encode())

    def failure(self, key: EngineKey) -> str | None:
        path = self.failed_path(key)
        return path.read_text() if path.is_file() else None

    def entries(self) -> list[dict[str, Any]]:
        """Sidecars of every cached engine."""
        out = []
        for meta in sorted((self.root / "trt").glob("*.json")):
            try:
                entry = json.loads(meta.read_text())
                out.append({"file": str(meta.with_suffix(".engine")), **entry})
            except (OSError, ValueError):
                continue
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

"""Model inputs recorded from real streams, for INT8 calibration of TensorRT engines.

With `engines.record_calibration` on, every engine saves a sample of the batches it runs
(every STRIDE-th call, up to `calibration_samples` files and MAX_BYTES per model) as .npz
files under the cache's calibration folder. `livesense engines build --precision int8`
then calibrates on them: on what the cameras and microphones really show and say.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STRIDE = 4
MAX_BYTES = 256 << 20


class CalibrationRecorder:
    """Saves a bounded sample of one model's input batches to a folder."""

    def __init__(self, folder: Path, samples: int, stride: int = STRIDE) -> None:
        self.folder = Path(folder)
        self.samples = samples
        self.stride = max(1, stride)
        self._lock = threading.Lock()
        self._calls = 0
        self.saved = len(list(self.folder.glob("*.npz"))) if self.folder.is_dir() else 0
        self.bytes = sum(p.stat().st_size for p in self.folder.glob("*.npz")) if self.saved else 0

    @property
    def full(self) -> bool:
        return self.saved >= self.samples or self.bytes >= MAX_BYTES

    def offer(self, feeds: dict[str, np.ndarray]) -> bool:
        """Maybe save this batch; returns whether it was saved."""
        with self._lock:
            self._calls += 1
            if self.full or (self._calls - 1) % self.stride:
                return False
            index = self.saved
            self.saved += 1
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{int(time.time() * 1000)}_{index:05d}.npz"
            arrays = {k: np.asarray(v) for k, v in feeds.items()}
            np.savez(path, **arrays)  # type: ignore[arg-type]
            with self._lock:
                self.bytes += path.stat().st_size
        except OSError as e:
            log.warning("calibration sample not saved in %s: %s", self.folder, e)
            return False
        return True


def load_feeds(folder: Path, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """The recorded batches in a folder, oldest first."""
    files = sorted(Path(folder).glob("*.npz"))[:limit]
    out = []
    for path in files:
        with np.load(path) as data:
            out.append({k: np.array(data[k]) for k in data.files})
    return out


def fit(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop or zero-pad every axis of `array` to `shape`; a batch axis is filled by repeating.

    Calibration runs at one fixed shape (the profile's opt), while recorded batches vary.
    """
    a = np.asarray(array)
    if a.ndim != len(shape):
        raise ValueError(f"cannot fit an array of shape {a.shape} to {shape}")
    if a.ndim == 0:
        return a
    if a.shape[0] and a.shape[0] < shape[0]:
        reps = -(-shape[0] // a.shape[0])
        a = np.concatenate([a] * reps, axis=0)
    a = a[tuple(slice(0, n) for n in shape)]
    pad = [(0, n - m) for n, m in zip(shape, a.shape, strict=True)]
    if any(p[1] for p in pad):
        a = np.pad(a, pad)
    return np.ascontiguousarray(a)

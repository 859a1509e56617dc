"""Scene and image labels with EfficientNet-Lite0 (ImageNet-1k, 224x224) behind the engine
interface: what a detector has no class for (a rocket, a pagoda, an espresso, a flower).

The frame is squeezed to 224x224 RGB (the whole picture counts for a scene); the model
normalises it itself and returns softmax probabilities. Frames of every stream are batched
together through the shared batcher.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence

import cv2
import numpy as np

from livesense.engines.batcher import Batcher
from livesense.engines.engine import Engine
from livesense.engines.engine_factory import EngineFactory, shared_factory
from livesense.engines.model_spec import SCENE, SCENE_SIDE, scene_spec
from livesense.engines.models import imagenet_labels
from livesense.errors import ModelMissingError

MIN_PROB = 0.05  # labels less likely than this are not kept


def scene_input(image_rgb: np.ndarray) -> np.ndarray:
    """The classifier's input (3, 224, 224) float32 RGB in 0..255 for an RGB or grey frame."""
    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    small = cv2.resize(
        np.ascontiguousarray(img), (SCENE_SIDE, SCENE_SIDE), interpolation=cv2.INTER_AREA
    )
    return np.ascontiguousarray(small.transpose(2, 0, 1), np.float32)


class SceneClassifier:
    """Top ImageNet labels of RGB frames of any size. Thread-safe; one serves every stream."""

    def __init__(
        self,
        *,
        top: int = 3,
        threads: int = 2,
        factory: EngineFactory | None = None,
        batch: bool = True,
    ) -> None:
        factory = factory or shared_factory()
        self.top = top
        self.labels = imagenet_labels().read_text().splitlines()
        if len(self.labels) != 1000:
            raise ModelMissingError(
                f"{imagenet_labels()} should hold 1000 class names, it holds {len(self.labels)}."
            )
        self.engine: Engine = factory.engine(scene_spec(), threads=threads)
        self._input = self.engine.inputs()[0].name
        self.batcher: Batcher[np.ndarray, np.ndarray] | None = (
            factory.batcher(SCENE, self.run_now) if batch else None
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0

    def classify(self, image_rgb: np.ndarray, stream: Hashable | None = None) -> dict[str, float]:
        """{label: probability} of the most likely labels (at most `top`), best first."""
        return self.classify_many([image_rgb], stream)[0]

    def classify_many(
        self, images: Sequence[np.ndarray], stream: Hashable | None = None
    ) -> list[dict[str, float]]:
        t0 = time.perf_counter()
        out: list[dict[str, float]] = [{} for _ in images]
        rows = [i for i, im in enumerate(images) if min(np.asarray(im).shape[:2]) >= 1]
        if rows:
            inputs = [scene_input(images[i]) for i in rows]
            probs = self.batcher(inputs, stream) if self.batcher else self.run_now(inputs)
            for i, p in zip(rows, probs, strict=True):
                out[i] = self._top(np.asarray(p, np.float32))
        with self._lock:
            self.calls += 1
            self.seconds += time.perf_counter() - t0
        return out

    def _top(self, probs: np.ndarray) -> dict[str, float]:
        labels: dict[str, float] = {}
        for i in np.argsort(-probs):
            p = float(probs[i])
            if p < MIN_PROB or len(labels) >= self.top:
                break
            name = self.labels[int(i)]
            labels[name] = round(labels.get(name, 0.0) + p, 4)  # a few names repeat
        return labels

    def run_now(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run prepared inputs on the calling thread (the batcher's function)."""
        step = self.engine.max_batch or len(inputs)
        out: list[np.ndarray] = []
        for k in range(0, len(inputs), step):
            probs = self.engine.run_rows({self._input: inputs[k : k + step]})[0]
            out.extend(np.asarray(probs))
        return out

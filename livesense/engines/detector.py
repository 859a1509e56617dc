"""COCO-80 objects with NanoDet-m (416x416), run behind the engine interface.

A frame is letterboxed into the fixed 416x416 input (kept aspect, padded with the mean
colour: squashing a 16:9 frame made a cat look like a person to this model), converted to
BGR and normalised with NanoDet's mean and std. The model gives, per stride 8/16/32, the 80
class scores (sigmoid) and for each side of the box a distribution over 11 distance bins
(GFL); the expected bin times the stride is the distance from the cell to that side. Boxes
are kept above `min_score`, then per-class non-maximum suppression. Frames of every stream
are batched together through the shared batcher.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from livesense.engines.batcher import Batcher
from livesense.engines.engine import Engine
from livesense.engines.engine_factory import EngineFactory, shared_factory
from livesense.engines.model_spec import DETECT, DETECT_SIDE, detect_spec

COCO = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip
"""NanoDet's 80 COCO classes, in output order."""

MEAN = np.array([103.53, 116.28, 123.675], np.float32)  # BGR
STD = np.array([57.375, 57.12, 58.395], np.float32)
STRIDES = (8, 16, 32)
OUTPUTS = ("cls8", "cls16", "cls32", "box8", "box16", "box32")
BINS = 11  # distance bins per box side (reg_max 10)
NMS_IOU = 0.5
MAX_OBJECTS = 20
MIN_SIDE = 8  # frames smaller than this on a side carry nothing to detect


@dataclass(slots=True)
class Found:
    """One detection: COCO class index, score and box (x1, y1, x2, y2) in frame pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def _cell_centres() -> list[np.ndarray]:
    out = []
    for s in STRIDES:
        n = DETECT_SIDE // s
        ys, xs = np.mgrid[0:n, 0:n]
        out.append(np.stack([xs.ravel() * s, ys.ravel() * s], axis=1).astype(np.float32))
    return out


_CENTRES = _cell_centres()
_BIN_VALUES = np.arange(BINS, dtype=np.float32)


def letterbox(image_rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The detector's input (3, 416, 416) float32 for an RGB or grey frame, and the scale."""
    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    scale = DETECT_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA)
    # (BGR value - MEAN) / STD through a table per channel: one pass, straight into the
    # planar layout; the padding (MEAN before normalising) is exactly 0
    canvas = np.zeros((3, DETECT_SIDE, DETECT_SIDE), np.float32)
    for c in range(3):
        canvas[c, : size[1], : size[0]] = _NORMALISED[c][small[:, :, 2 - c]]  # RGB -> BGR
    return canvas, scale


_NORMALISED = [(np.arange(256, dtype=np.float32) - MEAN[c]) / STD[c] for c in range(3)]
"""Each uint8 value of BGR channel c normalised as the detector wants it (float32)."""


def decode(
    outputs: Sequence[np.ndarray], scale: float, size: tuple[int, int], min_score: float
) -> list[Found]:
    """Detections of one image from its six outputs (cls8, cls16, cls32, box8, box16, box32)."""
    h, w = size
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for level, stride in enumerate(STRIDES):
        cls = np.asarray(outputs[level], np.float32).reshape(-1, len(COCO))
        best = cls.argmax(axis=1)
        score = cls[np.arange(len(cls)), best]
        keep = np.nonzero(score >= min_score)[0]
        if not len(keep):
            continue
        dist = np.asarray(outputs[3 + level], np.float32).reshape(-1, 4, BINS)[keep]
        dist = np.exp(dist - dist.max(axis=2, keepdims=True))
        dist /= dist.sum(axis=2, keepdims=True)
        ltrb = (dist @ _BIN_VALUES) * stride
        c = _CENTRES[level][keep]
        xyxy = np.concatenate([c - ltrb[:, :2], c + ltrb[:, 2:]], axis=1) / scale
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
        boxes.append(xyxy)
        scores.append(score[keep])
        labels.append(best[keep])
    if not boxes:
        return []
    b, s, k = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    found: list[Found] = []
    for cls_index in np.unique(k):
        rows = np.nonzero(k == cls_index)[0]
        xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b[rows].tolist()]
        kept = cv2.dnn.NMSBoxes(xywh, s[rows].tolist(), min_score, NMS_IOU)
        for i in np.asarray(kept).reshape(-1):
            r = rows[int(i)]
            x1, y1, x2, y2 = (float(v) for v in b[r])
            if x2 - x1 >= 2 and y2 - y1 >= 2:
                found.append(Found(COCO[int(cls_index)], float(s[r]), (x1, y1, x2, y2)))
    found.sort(key=lambda f: -f.score)
    return found[:MAX_OBJECTS]


class ObjectDetector:
    """Finds COCO objects in RGB frames of any size. Thread-safe; one serves every stream."""

    def __init__(
        self,
        *,
        min_score: float = 0.3,
        threads: int = 2,
        factory: EngineFactory | None = None,
        batch: bool = True,
    ) -> None:
        factory = factory or shared_factory()
        self.min_score = min_score
        self.engine: Engine = factory.engine(detect_spec(), threads=threads)
        self._input = self.engine.inputs()[0].name
        self.batcher: Batcher[np.ndarray, list[np.ndarray]] | None = (
            factory.batcher(DETECT, self.run_now) if batch else None
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0

    def detect(self, image_rgb: np.ndarray, stream: Hashable | None = None) -> list[Found]:
        """The objects in one frame (H, W, 3 or H, W), best first; [] for a degenerate frame."""
        return self.detect_many([image_rgb], stream)[0]

    def detect_many(
        self, images: Sequence[np.ndarray], stream: Hashable | None = None
    ) -> list[list[Found]]:
        """The objects of each frame, in one batch (through the shared batcher if any)."""
        t0 = time.perf_counter()
        out: list[list[Found]] = [[] for _ in images]
        rows = [i for i, im in enumerate(images) if min(np.asarray(im).shape[:2]) >= MIN_SIDE]
        if rows:
            prepared = [letterbox(images[i]) for i in rows]
            inputs = [x for x, _ in prepared]
            results = self.batcher(inputs, stream) if self.batcher else self.run_now(inputs)
            for i, (_, scale), outputs in zip(rows, prepared, results, strict=True):
                size = np.asarray(images[i]).shape[:2]
                out[i] = decode(outputs, scale, (int(size[0]), int(size[1])), self.min_score)
        with self._lock:
            self.calls += 1
            self.seconds += time.perf_counter() - t0
        return out

    def run_now(self, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Run prepared inputs on the calling thread (the batcher's function): per item, its
        six outputs."""
        step = self.engine.max_batch or len(inputs)
        out: list[list[np.ndarray]] = []
        for k in range(0, len(inputs), step):
            chunk = inputs[k : k + step]
            res = self.engine.run_rows({self._input: chunk}, list(OUTPUTS))
            out.extend([np.asarray(r[j]) for r in res] for j in range(len(chunk)))
        return out

"""On-screen text with PP-OCRv4 (rapidocr-onnxruntime's models): detection + recognition.

Both models run behind the engine interface (so on TensorRT where there is one); rapidocr's
pre/post-processing helpers (detector resize/normalise, DB box extraction, CTC decoding) are
reused, the rest is here. The recogniser is batched: the lines of one frame form one batch,
and with the shared batcher the lines of every stream's frames fill batches together. Lines
are grouped by width bucket, so a short word is not padded to the widest line.
A read costs a few hundred milliseconds on a CPU, so callers run it on changed frames only.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import cv2
import numpy as np

from livesense.engines.batcher import Batcher, bucket, groups
from livesense.engines.engine import Engine
from livesense.engines.engine_factory import EngineFactory, shared_factory
from livesense.engines.model_spec import (
    OCR_DET,
    OCR_REC,
    OCR_REC_HEIGHT,
    OCR_REC_WIDTHS,
    ocr_det_spec,
    ocr_rec_spec,
)
from livesense.errors import ModelMissingError
from livesense.records import OcrLine

MIN_SCORE = 0.5
"""Recognitions below this confidence are mostly noise (textures, logos) and are dropped."""
REC_WIDTHS = OCR_REC_WIDTHS
"""Width buckets (px at height 48) of the recogniser's input; wider lines are squeezed."""
MIN_HEIGHT = 30  # frames this short (or wider than WIDE x their height) are letterboxed
WIDE = 8
SAME_LINE = 10  # px: boxes whose tops differ less are on one line (read left to right)


class OcrReader:
    """Reads the lines of text in an RGB frame; boxes are in pixels of the frame given.

    Frames whose longest side exceeds `max_side` are downscaled first (boxes are scaled back).
    The text detector works at the frame's own resolution: upscaling 640 px frames found a few
    more isolated glyphs but glued words together and cost up to twice the time.
    Thread-safe, so one reader can serve every stream.
    """

    def __init__(
        self,
        *,
        max_side: int = 960,
        threads: int = 2,
        min_score: float = MIN_SCORE,
        use_cuda: bool = False,  # kept for callers; the engines' device setting decides
        factory: EngineFactory | None = None,
        batch: bool = True,
    ) -> None:
        try:
            from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
            from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode
        except ImportError as e:
            raise ModelMissingError(
                "On-screen text (OCR) needs the package 'rapidocr-onnxruntime' and its "
                f"dependencies, but '{e.name}' is not installed (run 'make install')."
            ) from None
        factory = factory or shared_factory()
        self.max_side = max_side
        self.min_score = min_score
        self.det: Engine = factory.engine(ocr_det_spec(max_side=max_side), threads=threads)
        self.rec: Engine = factory.engine(ocr_rec_spec(), threads=threads)
        self._det_input = self.det.inputs()[0].name
        self._rec_input = self.rec.inputs()[0].name
        characters = self.rec.metadata().get("character")
        if not characters:
            raise ModelMissingError(
                f"The OCR recogniser {self.rec.path} carries no character list; reinstall "
                "rapidocr-onnxruntime."
            )
        self._decode = CTCLabelDecode(character=characters.splitlines())
        self._pre = det_preprocess(DetPreProcess(max_side, "max", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))
        self._post = db_postprocess()
        self.batcher: Batcher[np.ndarray, tuple[str, float]] | None = (
            factory.batcher(OCR_REC, self.recognise_now, key=rec_width) if batch else None
        )
        self.det_batcher: Batcher[np.ndarray, np.ndarray] | None = (
            factory.batcher(OCR_DET, self.detect_maps, key=self._det_key) if batch else None
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0

    def _det_key(self, prep: np.ndarray) -> Hashable:
        """A prepared frame's canvas (the detector's bucket), or its own shape."""
        buckets = self.det.buckets
        if buckets is None:
            return prep.shape
        k = buckets.fit({self._det_input: prep.shape})
        return prep.shape if k is None else k

    def detect_maps(self, preps: list[np.ndarray]) -> list[np.ndarray]:
        """Probability maps (H, W) of prepared frames (1, 3, H, W): one run per canvas, each
        map cropped back to its own frame (the batcher's function)."""
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(preps)
        step = self.det.max_batch or len(preps)
        for group in groups([self._det_key(p) for p in preps]):
            for k in range(0, len(group), step):
                rows = group[k : k + step]
                # written into the engine's buffer at the canvas, zero-padded per frame
                batch = [preps[i] for i in rows]
                pred = np.asarray(self.det.run_rows({self._det_input: batch})[0])
                for r, i in enumerate(rows):
                    out[i] = pred[r, 0, : preps[i].shape[2], : preps[i].shape[3]]
        return out

    def read(
        self, image_rgb: np.ndarray, t: float, stream: Hashable | None = None
    ) -> list[OcrLine]:
        """Lines of text found in `image_rgb` (H, W, 3 uint8), top to bottom, stamped with `t`."""
        h, w = image_rgb.shape[:2]
        scale = 1.0
        image = image_rgb
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        t0 = time.perf_counter()
        boxes = self.detect(bgr, stream)
        texts = self.recognise([crop(bgr, b) for b in boxes], stream) if boxes else []
        with self._lock:
            self.calls += 1
            self.seconds += time.perf_counter() - t0
        lines: list[OcrLine] = []
        for box, (text, score) in zip(boxes, texts, strict=True):
            text = " ".join(str(text).split())
            if not text or float(score) < self.min_score or not any(c.isalnum() for c in text):
                continue
            pts = np.asarray(box, np.float32) / scale
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            lines.append(
                OcrLine(
                    text=text,
                    box=(float(x0), float(y0), float(min(x1, w)), float(min(y1, h))),
                    score=round(float(score), 4),
                    t=t,
                )
            )
        return lines

    # -- detection --------------------------------------------------------------------------

    def detect(self, bgr: np.ndarray, stream: Hashable | None = None) -> list[np.ndarray]:
        """Text boxes (4x2 float32, clockwise from top-left) in pixels of `bgr`, reading order;
        through the detector's batcher (frames of all streams per canvas) when there is one."""
        h, w = bgr.shape[:2]
        image, up = bgr, 1.0
        if min(h, w) < MIN_HEIGHT:  # too small for the detector: enlarge (boxes scaled back)
            up = MIN_HEIGHT / min(h, w)
            image = cv2.resize(bgr, (max(1, round(w * up)), max(1, round(h * up))))
        ih, iw = image.shape[:2]
        pad = 0
        if ih <= MIN_HEIGHT or iw / ih > WIDE:  # a strip: letterbox it (top and bottom)
            pad = abs(max(int(iw / WIDE), MIN_HEIGHT) * 2 - ih) // 2
            image = cv2.copyMakeBorder(image, pad, pad, 0, 0, cv2.BORDER_CONSTANT, value=0)
        prep = self._pre(image)
        if prep is None:
            return []
        if self.det_batcher is not None:
            pred = self.det_batcher([prep], stream)[0]
        else:
            pred = self.detect_maps([prep])[0]
        raw, _ = self._post(pred[None, None], image.shape[:2])
        boxes = []
        for box in raw:
            b = _clockwise(np.asarray(box, np.float32))
            b[:, 0] = np.clip(b[:, 0], 0, image.shape[1] - 1)
            b[:, 1] = np.clip(b[:, 1], 0, image.shape[0] - 1)
            b = np.floor(b)
            if np.linalg.norm(b[0] - b[1]) <= 3 or np.linalg.norm(b[0] - b[3]) <= 3:
                continue
            b[:, 1] -= pad
            b /= up
            b[:, 0] = np.clip(b[:, 0], 0, w - 1)
            b[:, 1] = np.clip(b[:, 1], 0, h - 1)
            boxes.append(b.astype(np.float32))
        return _reading_order(boxes)

    # -- recognition ------------------------------------------------------------------------

    def recognise(
        self, crops: Sequence[np.ndarray], stream: Hashable | None = None
    ) -> list[tuple[str, float]]:
        """(text, confidence) of each line image (BGR), through the batcher when there is one."""
        if not crops:
            return []
        if self.batcher is not None:
            return self.batcher(list(crops), stream)
        return self.recognise_now(list(crops))

    def recognise_now(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Recognise on the calling thread: one run per width bucket (the batcher's function)."""
        widths = [rec_width(c) for c in crops]
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        step = self.rec.max_batch or len(crops)
        for group in groups(widths):
            width = widths[group[0]]
            for k in range(0, len(group), step):
                rows = group[k : k + step]
                lines = [rec_input(crops[i], width) for i in rows]
                preds = self.rec.run_rows({self._rec_input: lines})[0]
                for i, res in zip(rows, self._decode(np.asarray(preds)), strict=True):
                    out[i] = (str(res[0]), float(res[1]))
        return out


def db_postprocess() -> Any:
    """rapidocr's DB post-processing (probability map to text boxes) with the settings the
    reader uses: boxes above 0.5 from pixels above 0.3, widened 1.6x, dilated."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    return DBPostProcess(
        thresh=0.3,
        box_thresh=0.5,
        max_candidates=1000,
        unclip_ratio=1.6,
        score_mode="fast",
        use_dilation=True,
    )


def det_preprocess(pre: Any) -> Any:
    """rapidocr's detector pre-processing (resize to multiples of 32, (x / 255 - mean) / std,
    planar), with the normalising done through a table of the 256 values per channel,
    computed as rapidocr computes them: the same numbers, in one pass instead of five over
    float64 copies."""
    table = [
        ((np.arange(256, dtype=np.float32) * pre.scale - pre.mean[c]) / pre.std[c]).astype(
            np.float32
        )
        for c in range(3)
    ]

    def prepare(img: np.ndarray) -> np.ndarray | None:
        resized = pre.resize(img)
        if resized is None:
            return None
        out = np.empty((1, 3, *resized.shape[:2]), np.float32)
        for c in range(3):
            out[0, c] = table[c][resized[:, :, c]]
        return out

    return prepare


def rec_width(crop_bgr: np.ndarray) -> int:
    """The width bucket of a line image at the recogniser's height (wider lines squeezed)."""
    w = math.ceil(OCR_REC_HEIGHT * crop_bgr.shape[1] / max(1, crop_bgr.shape[0]))
    return min(bucket(w, REC_WIDTHS), REC_WIDTHS[-1])


def rec_input(crop_bgr: np.ndarray, width: int) -> np.ndarray:
    """A line image as the recogniser wants it: height 48, scaled to -1..1, zero-padded right."""
    h, w = crop_bgr.shape[:2]
    new_w = min(width, math.ceil(OCR_REC_HEIGHT * w / max(1, h)))
    resized = cv2.resize(crop_bgr, (max(1, new_w), OCR_REC_HEIGHT)).astype(np.float32)
    out = np.zeros((3, OCR_REC_HEIGHT, width), np.float32)
    out[:, :, : resized.shape[1]] = resized.transpose(2, 0, 1) / 127.5 - 1.0
    return out


def crop(bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The straightened image of a (possibly tilted) text box; tall boxes are turned upright."""
    pts = np.asarray(box, np.float32)
    width = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    height = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    width, height = max(1, width), max(1, height)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(pts, target)
    out = cv2.warpPerspective(
        bgr, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    if out.shape[0] >= 1.5 * out.shape[1]:
        out = np.rot90(out)
    return np.ascontiguousarray(out)


def _clockwise(pts: np.ndarray) -> np.ndarray:
    """Four points ordered top-left, top-right, bottom-right, bottom-left."""
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([tl, tr, br, bl], np.float32)


def _reading_order(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom; boxes whose tops are within SAME_LINE px are read left to right."""
    ordered = sorted(boxes, key=lambda b: (float(b[0][1]), float(b[0][0])))
    for i in range(len(ordered) - 1):
        j = i
        while j >= 0:
            a, b = ordered[j], ordered[j + 1]
            if abs(float(b[0][1]) - float(a[0][1])) < SAME_LINE and b[0][0] < a[0][0]:
                ordered[j], ordered[j + 1] = b, a
                j -= 1
            else:
                break
    return ordered


def ocr_stats(reader: OcrReader) -> dict[str, Any]:
    """Reads, seconds and the recogniser batcher's figures, for metrics and benchmarks."""
    out: dict[str, Any] = {"calls": reader.calls, "seconds": round(reader.seconds, 4)}
    if reader.batcher is not None:
        out["rec_batcher"] = reader.batcher.stats.as_json()
    if reader.det_batcher is not None:
        out["det_batcher"] = reader.det_batcher.stats.as_json()
    return out

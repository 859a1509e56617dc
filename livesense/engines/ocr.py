"""On-screen text with PP-OCRv4 (rapidocr-onnxruntime): detection + recognition, no angle pass.

A read costs a few hundred milliseconds on a CPU, so callers run it on changed frames only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import numpy as np

from livesense.engines.models import rapidocr_det_onnx
from livesense.errors import ModelMissingError
from livesense.records import OcrLine

MIN_SCORE = 0.5
"""Recognitions below this confidence are mostly noise (textures, logos) and are dropped."""


class OcrReader:
    """Reads the lines of text in an RGB frame; boxes are in pixels of the frame given.

    Frames whose longest side exceeds `max_side` are downscaled first (boxes are scaled back).
    The text detector works at the frame's own resolution: upscaling 640 px frames found a few
    more isolated glyphs but glued words together and cost up to twice the time.
    Thread-safe (one read at a time), so one reader can serve every stream.
    """

    def __init__(
        self,
        *,
        max_side: int = 960,
        threads: int = 2,
        min_score: float = MIN_SCORE,
        use_cuda: bool = False,
    ) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise ModelMissingError(
                "On-screen text (OCR) needs the package 'rapidocr-onnxruntime' and its "
                f"dependencies, but '{e.name}' is not installed (run 'make install')."
            ) from None
        rapidocr_det_onnx()  # one clear error if the package lost its model files
        self.max_side = max_side
        self.min_score = min_score
        self._engine: Any = RapidOCR(
            print_verbose=False,
            text_score=min_score,
            use_cls=False,  # upside-down text is rare on screens: skip the angle pass
            intra_op_num_threads=max(1, threads),
            inter_op_num_threads=1,
            det_limit_type="max",  # only ever shrink (see the class docstring)
            det_limit_side_len=max_side,
            det_box_thresh=0.5,
            det_use_cuda=use_cuda,
            rec_use_cuda=use_cuda,
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0

    def read(self, image_rgb: np.ndarray, t: float) -> list[OcrLine]:
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
        with self._lock:
            result, _ = self._engine(bgr, use_cls=False)
            self.calls += 1
            self.seconds += time.perf_counter() - t0
        lines: list[OcrLine] = []
        for box, text, score in result or []:
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

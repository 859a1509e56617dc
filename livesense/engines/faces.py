"""Face counting with OpenCV's frontal-face Haar cascade: classical, no weights to fetch."""

from __future__ import annotations

import threading

import cv2
import numpy as np

from livesense.engines.models import haar_face_cascade
from livesense.errors import ModelMissingError


class FaceDetector:
    """Finds frontal faces on a downscaled grey copy of an RGB frame.

    At the default 320 px the smallest face found is about 1/16 of the frame's longest side;
    one frame costs a few milliseconds. Thread-safe (one detection at a time).
    """

    def __init__(
        self,
        *,
        max_side: int = 320,
        min_size: int = 20,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
    ) -> None:
        path = haar_face_cascade()
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelMissingError(f"The face cascade {path} could not be loaded.")
        self.max_side = max_side
        self.min_size = min_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self._lock = threading.Lock()

    def detect(self, image_rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in pixels of the frame given."""
        h, w = image_rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        grey = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        with self._lock:
            found = self._cascade.detectMultiScale(
                grey,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(self.min_size, self.min_size),
            )
        return [
            (round(x / scale), round(y / scale), round(fw / scale), round(fh / scale))
            for x, y, fw, fh in (found if len(found) else [])
        ]

    def count(self, image_rgb: np.ndarray) -> int:
        """How many frontal faces the frame shows."""
        return len(self.detect(image_rgb))

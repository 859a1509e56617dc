"""Video capture devices through OpenCV's V4L2 backend.

PyAV's wheels ship FFmpeg without the v4l2 input, so `v4l2://` URLs are read with OpenCV
(`opencv-python-headless` is built with V4L2 on Linux) when PyAV cannot. Frames are stamped
with the capture clock (seconds since the first frame) and anchored to wall time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import cv2
import numpy as np

from livesense.errors import SourceError
from livesense.records import EndOfStream, VideoFrame
from livesense.stream.handoff import Handoff
from livesense.stream.source import MediaSource, _frame_size

log = logging.getLogger(__name__)


class CaptureSource(MediaSource):
    """A live video-only source read from an OpenCV VideoCapture in a worker thread."""

    def __init__(
        self,
        device: str,
        *,
        fps: float = 2.0,
        max_side: int = 640,
        queue_size: int = 256,
        backend: int = cv2.CAP_V4L2,
        url: str | None = None,
    ) -> None:
        # MediaSource's constructor opens a PyAV container; this source has none.
        self.url = url or f"v4l2://{device}"
        self.shown = self.url
        self.live = True
        self.realtime = True
        self.has_video = True
        self.has_audio = False
        self.wall_anchor: float | None = None
        self.fps = fps
        self.max_side = max_side
        self.queue_size = queue_size
        self.duration: float | None = None
        self.frames_decoded = 0
        self.frames_sampled = 0
        self.audio_chunks = 0
        self.audio_samples = 0
        self.gaps = 0
        self.decode_errors = 0
        self.lag = 0.0
        self.end_reason: str | None = None
        self._cap = cv2.VideoCapture(device, backend)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"Could not open the video device {device}.")
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or None
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None
        self._handoff: Handoff | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"CaptureSource({self.shown!r})"

    def _free(self) -> None:
        self._cap.release()

    def _run(self) -> None:
        reason: str | None = None
        try:
            reason = self._read()
        except Exception as e:  # the thread ends with a reason, never a traceback
            log.exception("capture from %s failed", self.shown)
            reason = f"Capture stopped on an unexpected error: {e}."
        finally:
            self._cap.release()
        self.end_reason = reason
        if not self._stop.is_set() and self._handoff is not None:
            self._handoff.put(EndOfStream(reason))

    def _read(self) -> str | None:
        start: float | None = None
        last_slot = -1
        size: tuple[int, int] | None = None
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            if not ok:
                return None if start is not None else f"The device {self.shown} gave no frames."
            now = time.monotonic()
            if start is None:
                start = now
                self.wall_anchor = time.time()
            self.frames_decoded += 1
            t = now - start
            slot = int(t * self.fps + 1e-6)
            if slot <= last_slot:
                continue
            last_slot = slot
            h, w = bgr.shape[:2]
            if size is None:
                size = _frame_size(w, h, self.max_side)
            if (w, h) != size:
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            image: Any = np.ascontiguousarray(bgr[:, :, ::-1])
            self.frames_sampled += 1
            if self._handoff is None or not self._handoff.put(VideoFrame(t, image)):
                return None
        return None

"""Video capture devices through OpenCV's V4L2 backend.

PyAV's wheels ship FFmpeg without the v4l2 input, so `v4l2://` URLs are read with OpenCV
(`opencv-python-headless` is built with V4L2 on Linux) when PyAV cannot. Frames are stamped
with the capture clock (seconds since the first frame) and anchored to wall time.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from livesense.errors import SourceError
from livesense.records import VideoFrame
from livesense.stream.counters import SourceCounters
from livesense.stream.decode_thread import DecodeThread, ThreadFed
from livesense.stream.frame_size import frame_size


class CaptureSource(ThreadFed):
    """A live video-only stream.source.Source read from an OpenCV VideoCapture in a thread."""

    live = True
    realtime = True
    has_video = True
    has_audio = False
    duration: float | None = None
    limit_reason: str | None = None

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
        self.url = url or f"v4l2://{device}"
        self.shown = self.url
        self.fps = fps
        self.max_side = max_side
        self.queue_size = queue_size
        self.counters = SourceCounters()
        self._cap = cv2.VideoCapture(device, backend)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"Could not open the video device {device}.")
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or None
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None
        self._feed = DecodeThread(
            self.shown,
            live=True,
            queue_size=queue_size,
            counters=self.counters,
            read=self._read,
            release=self._cap.release,
            what="Capture",
        )

    def __repr__(self) -> str:
        return f"CaptureSource({self.shown!r})"

    def _read(self) -> str | None:
        start: float | None = None
        last_slot = -1
        size: tuple[int, int] | None = None
        while not self._feed.stop.is_set():
            ok, bgr = self._cap.read()
            if not ok:
                return None if start is not None else f"The device {self.shown} gave no frames."
            now = time.monotonic()
            if start is None:
                start = now
                self._feed.wall_anchor = time.time()
            self.counters.frames_decoded += 1
            t = now - start
            slot = int(t * self.fps + 1e-6)
            if slot <= last_slot:
                continue
            last_slot = slot
            h, w = bgr.shape[:2]
            if size is None:
                size = frame_size(w, h, self.max_side)
            if (w, h) != size:
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            image: Any = np.ascontiguousarray(bgr[:, :, ::-1])
            self.counters.frames_sampled += 1
            if not self._feed.emit(VideoFrame(t, image)):
                return None
        return None

"""The vision stage: what a snippet's sampled frames show, at a bounded cost per snippet.

Cheap measures (scene change, motion, colours, keyframe) come from small thumbnails of every
sampled frame. The models run on few frames: faces on one or two, the CLIP slot on the
keyframe, OCR at most once per snippet and only when the picture changed since the last read,
as a whole or in one region (a caption changing on a still picture), since OCR costs a few
hundred milliseconds and the rest of the stage a few.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from livesense.config import PerceptionSettings
from livesense.engines.clip import ClipEncoder
from livesense.engines.faces import FaceDetector
from livesense.engines.ocr import OcrReader
from livesense.errors import ConfigError
from livesense.records import Features, OcrLine, Snippet, VideoFrame

log = logging.getLogger(__name__)

THUMB = (96, 54)
"""(W, H) of the thumbnails every measure works on; fixed, so a resolution change is harmless."""
SCENE_CUT = 0.5
"""Bhattacharyya distance between colour histograms above which two frames are a cut."""
STILL = 0.005
"""Mean grey change (0..1) below which a picture counts as unchanged even by the OCR clock."""
REGION = (12, 9)
"""(W, H) in thumbnail pixels of the window over which a local change is measured: an eighth
of the picture's width and a sixth of its height, about a caption's word."""
FACE_SECOND_FRAME = 0.02
"""A second frame is searched for faces only if it differs from the keyframe by this much."""
MIN_COLOR_SHARE = 0.08
MERGE_COLOR = 48.0  # RGB distance under which two dominant colours are one

T = TypeVar("T")


@dataclass(slots=True)
class _View:
    """A sampled frame and its thumbnails."""

    frame: VideoFrame
    grey: np.ndarray  # float32 (H, W) in 0..1
    rgb: np.ndarray  # uint8 (H, W, 3)
    hist: np.ndarray  # normalised 8x8x8 RGB histogram


class VisionPerception:
    """Fills the vision fields of a snippet's Features. Stateful: one instance per stream.

    Shedding under live overload: shed=0 runs everything; shed>=1 skips OCR; shed>=2 also
    skips faces and the CLIP slot and looks at one frame only. Shed and failed stages are
    named in `features.skipped` ("ocr", "faces", "clip"; "<stage>:error" when a model raised);
    "ocr" is named only when a read was due.

    OCR runs at most once per snippet. The keyframe is read when it differs from the frame of
    the last read by more than `ocr_change_threshold` as a whole, or by more than
    `ocr_region_change` in some region (`REGION`: a caption replaced on a still picture
    changes one strip of it and hardly the mean), or when the last read is older than
    `ocr_max_interval` and the picture changed at all. When the keyframe is not read, the
    snippet's last frame is checked the same way, so text that appears after the keyframe is
    read in the snippet where it appears, not the next. A snippet without a read and without
    a change gets the last read's lines (the text is still on screen) with `t` set to this
    snippet's keyframe time; `last_ocr` says which happened: "read", "carried", "changed"
    (changed, not read: shed or failed) or "none".
    """

    def __init__(
        self,
        settings: PerceptionSettings,
        *,
        ocr: OcrReader | None = None,
        faces: FaceDetector | None = None,
        clip: ClipEncoder | None = None,
    ) -> None:
        self.settings = settings
        if clip is None and (settings.clip_image or settings.clip_text):
            if not (settings.clip_image and settings.clip_text):
                raise ConfigError(
                    "The CLIP slot needs both perception.clip_image and perception.clip_text."
                )
            clip = ClipEncoder(Path(settings.clip_image), Path(settings.clip_text))
        if ocr is None and settings.ocr:
            ocr = OcrReader(max_side=settings.ocr_max_side)
        if faces is None and settings.faces:
            faces = FaceDetector()
        self.ocr = ocr if settings.ocr else None
        self.faces = faces if settings.faces else None
        self.clip = clip
        self._prev: _View | None = None  # last sampled frame of the previous snippet
        self._ocr_view: _View | None = None  # the frame of the last OCR read
        self._ocr_lines: list[OcrLine] = []
        self.last_ocr = "none"
        self.ocr_runs = 0
        self.ocr_probes = 0  # text detections on a changed region alone
        self.seconds: dict[str, float] = {}  # time spent per part, for benchmarks

    def process(self, snippet: Snippet, features: Features, *, shed: int = 0) -> None:
        """Fill `features` from `snippet.frames`; never raises for a model's failure."""
        self.last_ocr = "none"
        if "video" in snippet.missing or not snippet.frames:
            return
        try:
            self._process(snippet, features, shed)
        except Exception as e:  # a malformed frame: keep the snippet, say what was lost
            log.warning("vision failed on %s #%d: %s", snippet.stream, snippet.index, e)
            features.skipped.append("vision:error")

    def _process(self, snippet: Snippet, features: Features, shed: int) -> None:
        t0 = time.perf_counter()
        frames = snippet.frames
        if shed >= 2:
            frames = [frames[len(frames) // 2]]
        views = [_view(f) for f in frames]

        pairs = list(zip(views, views[1:], strict=False))
        cut_pairs = ([(self._prev, views[0])] if self._prev is not None else []) + pairs
        features.scene_change = any(_hist_distance(a, b) > SCENE_CUT for a, b in cut_pairs)
        features.motion = float(np.mean([_change(a, b) for a, b in pairs])) if pairs else 0.0
        key = _keyframe(views)
        features.colors = dominant_colors(key.rgb)
        features.keyframe = encode_jpeg(key.frame.image, self.settings.keyframe_quality)
        self._prev = views[-1]
        self._add("cheap", t0)

        if self.faces is not None:
            if shed >= 2:
                features.skipped.append("faces")
            else:
                features.faces = self._guard("faces", features, 0, lambda: self._faces(views, key))
        if self.clip is not None:
            if shed >= 2:
                features.skipped.append("clip")
            else:
                emb = self._guard("clip", features, None, lambda: self._clip(key))
                features.image_embedding = emb
        if self.ocr is not None:
            features.ocr = self._read(key, features, shed)
            if self.last_ocr == "carried" and views[-1] is not key and shed == 0:
                features.ocr = self._read_tail(key, views[-1], features, features.ocr)

    def _due(self, view: _View) -> tuple[bool, bool]:
        """(changed, due): whether `view` differs from the frame of the last read, as a whole or
        in a region that holds text, and whether it is due a read (changed, or the read is old
        and the picture moved at all)."""
        last = self._ocr_view
        if last is None:
            return True, True
        change = _change(last, view)
        if change > self.settings.ocr_change_threshold:
            return True, True
        box = _changed_box(last, view, self.settings.ocr_region_change)
        if box is not None and self._text_in(box, view):
            return True, True
        stale = view.frame.t - last.frame.t >= self.settings.ocr_max_interval
        return False, stale and change > STILL

    def _text_in(self, box: tuple[float, float, float, float], view: _View) -> bool:
        """Whether a changed region (0..1 of the picture) held text at the last read or holds
        text now. The second is asked of the text detector on that region alone, a fraction
        of a read's cost, so a local change without text (a ball, a hand) costs no read."""
        if self._ocr_view is not None:
            h, w = self._ocr_view.frame.image.shape[:2]
            for line in self._ocr_lines:
                lx0, ly0, lx1, ly1 = line.box
                if _overlap(box, (lx0 / w, ly0 / h, lx1 / w, ly1 / h)):
                    return True
        assert self.ocr is not None
        h, w = view.frame.image.shape[:2]
        crop, top, left = _probe_crop(view.frame.image, box)
        t0 = time.perf_counter()
        try:
            found = False
            for b in self.ocr.detect(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                (x0, y0), (x1, y1) = b.min(axis=0), b.max(axis=0)
                where = ((left + x0) / w, (top + y0) / h, (left + x1) / w, (top + y1) / h)
                found = found or _overlap(box, where)  # inside the changed region only
        except Exception as e:  # the read that follows reports the failure
            log.debug("text detection on a changed region failed: %s", e)
            found = True
        self.ocr_probes += 1
        self._add("ocr_probe", t0)
        return found

    def _read_tail(
        self, key: _View, tail: _View, features: Features, carried: list[OcrLine]
    ) -> list[OcrLine]:
        """The carried lines, plus what the snippet's last frame shows when its text changed
        after the keyframe (the snippet's one read)."""
        s = self.settings
        if _change(key, tail) <= s.ocr_change_threshold and (
            _changed_box(key, tail, s.ocr_region_change) is None
        ):
            return carried  # as the keyframe: nothing new to ask
        changed, _ = self._due(tail)
        if not changed:
            return carried
        lines = self._guard("ocr", features, None, lambda: self._ocr(tail))
        if lines is None:
            self.last_ocr = "changed"
            return carried
        self.last_ocr = "read"
        seen = {_norm(line.text) for line in carried}
        return carried + [line for line in lines if _norm(line.text) not in seen]

    def _read(self, key: _View, features: Features, shed: int) -> list[OcrLine]:
        last = self._ocr_view
        changed, due = self._due(key)
        if due:
            if shed >= 1:
                features.skipped.append("ocr")
            else:
                lines = self._guard("ocr", features, None, lambda: self._ocr(key))
                if lines is not None:
                    self.last_ocr = "read"
                    return lines
            if changed:
                self.last_ocr = "changed"
                return []
        if last is None:
            return []
        # Not read again and the picture is as it was: the text is still on screen.
        self.last_ocr = "carried"
        return [replace(line, t=key.frame.t) for line in self._ocr_lines]

    def _ocr(self, key: _View) -> list[OcrLine]:
        assert self.ocr is not None
        t0 = time.perf_counter()
        lines = self.ocr.read(key.frame.image, key.frame.t)
        self._ocr_view, self._ocr_lines = key, lines
        self.ocr_runs += 1
        self._add("ocr", t0)
        return lines

    def _faces(self, views: list[_View], key: _View) -> int:
        assert self.faces is not None
        t0 = time.perf_counter()
        looked = [key]
        other = max(views, key=lambda v: _change(v, key))
        if _change(other, key) > FACE_SECOND_FRAME:
            looked.append(other)
        n = max(self.faces.count(v.frame.image) for v in looked)
        self._add("faces", t0)
        return n

    def _clip(self, key: _View) -> np.ndarray:
        assert self.clip is not None
        t0 = time.perf_counter()
        emb = self.clip.embed_images([key.frame.image])[0].astype(np.float32)
        self._add("clip", t0)
        return emb

    def _guard(self, stage: str, features: Features, default: T, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as e:  # a model failing must not lose the snippet
            log.warning("%s failed: %s", stage, e)
            features.skipped.append(f"{stage}:error")
            return default

    def _add(self, part: str, t0: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0


def _view(frame: VideoFrame) -> _View:
    rgb = cv2.resize(np.ascontiguousarray(frame.image), THUMB, interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    hist = cv2.calcHist([rgb], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256])
    cv2.normalize(hist, hist, alpha=1.0, norm_type=cv2.NORM_L1)
    return _View(frame, grey, rgb, hist)


def _change(a: _View, b: _View) -> float:
    """Mean absolute grey difference of two thumbnails, 0..1."""
    return float(np.mean(np.abs(a.grey - b.grey)))


def _changed_box(a: _View, b: _View, threshold: float) -> tuple[float, float, float, float] | None:
    """The box (x0, y0, x1, y1 as 0..1 of the picture) around every REGION-sized window whose
    mean absolute grey difference exceeds `threshold`; None when none does."""
    diff = np.abs(a.grey - b.grey)
    windows = cv2.blur(diff, REGION, borderType=cv2.BORDER_CONSTANT)
    ys, xs = np.nonzero(windows > threshold)
    if len(xs) == 0:
        return None
    (rw, rh), (h, w) = REGION, diff.shape
    return (
        max(0, int(xs.min()) - rw // 2) / w,
        max(0, int(ys.min()) - rh // 2) / h,
        min(w, int(xs.max()) + rw // 2 + 1) / w,
        min(h, int(ys.max()) + rh // 2 + 1) / h,
    )


PROBE_SIDES = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
"""Sides of the picture's part around a changed region that the text detector is shown: a
few input shapes, not one per region (on TensorRT every new shape costs an algorithm search)."""


def _probe_crop(
    image: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[np.ndarray, int, int]:
    """(part, top, left): the part of `image` around `box` (0..1 of the picture), grown to
    PROBE_SIDES (or the picture's own side) with the picture around it, so no artificial edge
    is added, and where it lies in the picture."""
    h, w = image.shape[:2]

    def span(lo: float, hi: float, size: int) -> tuple[int, int]:
        a, b = int(lo * size), int(np.ceil(hi * size))
        side = min(size, next((s for s in PROBE_SIDES if s >= b - a), size))
        start = min(max(0, (a + b - side) // 2), size - side)
        return start, start + side

    top, bottom = span(box[1], box[3], h)
    left, right = span(box[0], box[2], w)
    return np.ascontiguousarray(image[top:bottom, left:right]), top, left


Box = tuple[float, float, float, float]


def _overlap(a: Box, b: Box) -> bool:
    """Whether two (x0, y0, x1, y1) boxes overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _norm(text: str) -> str:
    return "".join(text.split()).casefold()


def _hist_distance(a: _View, b: _View) -> float:
    return float(cv2.compareHist(a.hist, b.hist, cv2.HISTCMP_BHATTACHARYYA))


def _keyframe(views: list[_View]) -> _View:
    """The frame closest to the snippet's mean picture (the middle one among equals)."""
    if len(views) <= 2:
        return views[len(views) // 2]
    mean = np.mean([v.grey for v in views], axis=0)
    mid = (len(views) - 1) / 2
    order = sorted(
        range(len(views)),
        key=lambda i: (round(float(np.mean(np.abs(views[i].grey - mean))), 4), abs(i - mid)),
    )
    return views[order[0]]


def dominant_colors(rgb: np.ndarray, k: int = 3) -> list[str]:
    """Up to k dominant colours ("#rrggbb"), most common first, from a coarse RGB histogram."""
    px = rgb.reshape(-1, 3).astype(np.int64)
    bins = (px[:, 0] >> 5) * 64 + (px[:, 1] >> 5) * 8 + (px[:, 2] >> 5)
    counts = np.bincount(bins, minlength=512)
    sums = np.stack([np.bincount(bins, weights=px[:, c], minlength=512) for c in range(3)], 1)
    picked: list[tuple[np.ndarray, float]] = []  # (mean colour, pixel count)
    for b in np.argsort(-counts, kind="stable"):
        n = float(counts[b])
        if n == 0:
            break
        color = sums[b] / n
        for j, (c, m) in enumerate(picked):
            if np.linalg.norm(c - color) < MERGE_COLOR:
                picked[j] = ((c * m + color * n) / (m + n), m + n)
                break
        else:
            picked.append((color, n))
    picked.sort(key=lambda cm: -cm[1])
    total = float(len(px))
    return [
        "#{:02x}{:02x}{:02x}".format(*(int(round(v)) for v in c))
        for c, m in picked[:k]
        if m / total >= MIN_COLOR_SHARE
    ]


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB frame."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("the keyframe could not be encoded as JPEG")
    return buf.tobytes()

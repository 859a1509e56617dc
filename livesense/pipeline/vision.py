"""The vision stage: what a snippet's sampled frames show, at a bounded cost per snippet.

Cheap measures (scene change, motion, colours, keyframe) come from small thumbnails of every
sampled frame. The models run on few frames: faces on one or two, the CLIP slot, the object
detector and the scene classifier on the keyframe of every snippet unless it is the same
picture as the last one looked at (then the last result is carried), OCR at most once per
snippet and only when the picture changed since the last read, as a whole or in one region (a
caption changing on a still picture), since OCR costs a few hundred milliseconds and the rest
of the stage tens.
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
from livesense.engines.detector import ObjectDetector
from livesense.engines.faces import FaceDetector
from livesense.engines.ocr import OcrReader
from livesense.engines.scene import SceneClassifier
from livesense.errors import ConfigError
from livesense.pipeline.tracker import ObjectTracker
from livesense.records import Detection, Features, OcrLine, Snippet, VideoFrame

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
BOX_INSET = 0.2  # share of a box's width/height cut from each side before its colour is taken

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

    Shedding under live overload: shed=0 runs everything; shed>=1 skips OCR and scene labels;
    shed>=2 also skips faces, objects and the CLIP slot and looks at one frame only. Shed and
    failed stages are named in `features.skipped` ("ocr", "faces", "clip", "objects",
    "scene"; "<stage>:error" when a model raised, "<stage>:missing" when its model file is
    not there); "ocr" is named only when a read was due.

    Objects and scene labels are looked for on every snippet's keyframe; when it is the same
    picture as the last one looked at (grey change under STILL), the last result is carried.
    Detections get the dominant colour of their box and a track (ObjectTracker).

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
        detector: ObjectDetector | None = None,
        scenes: SceneClassifier | None = None,
        missing: dict[str, str] | None = None,
        stream: str | None = None,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.missing = dict(missing or {})  # stage -> why its model is not there
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
        self.detector = detector if settings.objects else None
        self.scenes = scenes if settings.scenes else None
        self.tracker = ObjectTracker()
        self._seen_view: _View | None = None  # the frame objects and scenes were last looked for
        self._seen: tuple[list[Detection], dict[str, float]] = ([], {})
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
        self.stream = snippet.stream  # the shared batchers keep each stream's requests apart
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
        self._look(key, features, shed)
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

    def _look(self, key: _View, features: Features, shed: int) -> None:
        """Objects (with colours and tracks) and scene labels of the keyframe."""
        for stage, model, enabled in (
            ("objects", self.detector, self.settings.objects),
            ("scene", self.scenes, self.settings.scenes),
        ):
            if enabled and model is None and stage in self.missing:
                features.skipped.append(f"{stage}:missing")
        if self.detector is None and self.scenes is None:
            return
        t = key.frame.t
        last = self._seen_view
        same = (
            last is not None
            and last.frame.image.shape == key.frame.image.shape
            and _change(last, key) < STILL
        )
        if same:
            features.objects = [replace(d, t=t) for d in self._seen[0]]
            features.scene = dict(self._seen[1])
            features.tracks = self.tracker.carry(t)
            return
        objects: list[Detection] = []
        scene: dict[str, float] = {}
        detected = False
        if self.detector is not None:
            if shed >= 2:
                features.skipped.append("objects")
            else:
                found = self._guard("objects", features, None, lambda: self._objects(key))
                if found is not None:
                    objects, detected = found, True
        if self.scenes is not None:
            if shed >= 1:
                features.skipped.append("scene")
            else:
                scene = self._guard("scene", features, {}, lambda: self._scene(key))
        if detected:
            features.tracks = self.tracker.update(objects, t)
        if detected or (self.detector is None and scene):
            self._seen_view, self._seen = key, (objects, scene)
        features.objects = objects
        features.scene = scene

    def _objects(self, key: _View) -> list[Detection]:
        assert self.detector is not None
        t0 = time.perf_counter()
        image = key.frame.image
        found = self.detector.detect(image, self.stream)
        out = [
            Detection(f.label, round(f.score, 4), f.box, key.frame.t, box_color(image, f.box))
            for f in found
        ]
        self._add("objects", t0)
        return out

    def _scene(self, key: _View) -> dict[str, float]:
        assert self.scenes is not None
        t0 = time.perf_counter()
        labels = self.scenes.classify(key.frame.image, self.stream)
        self._add("scene", t0)
        return labels

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
    image = np.asarray(frame.image)
    if image.ndim == 2:  # a grey frame: the measures work on RGB
        frame = VideoFrame(frame.t, cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
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


COLOR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "red")
HUE_EDGES = np.array([12, 22, 35, 85, 130, 155, 170, 181])  # OpenCV hue (0..180) upper edges
CHROMATIC = 0.15  # share of strongly coloured pixels above which a box has a colour


def _names(rgb: np.ndarray) -> np.ndarray:
    """A colour name index per pixel: 0..7 over COLOR_NAMES, 8 brown, 9 black, 10 grey, 11 white."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb.reshape(-1, 1, 3)), cv2.COLOR_RGB2HSV)
    h, s, v = (hsv[:, 0, i].astype(np.int32) for i in range(3))
    out = np.searchsorted(HUE_EDGES, h, side="right").clip(0, 7)
    out = np.where((out == 1) & (v < 150), 8, out)  # dark orange is brown
    plain = np.where(v < 50, 9, np.where(v > 200, 11, 10))
    return np.where((s < 90) | (v < 50), plain, out)


def color_name(hex_color: str) -> str:
    """A plain name ("red", "grey", ...) for a "#rrggbb" colour."""
    rgb = np.array([[int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]], np.uint8)
    return _NAMES[int(_names(rgb)[0])]


_NAMES = (*COLOR_NAMES, "brown", "black", "grey", "white")


def box_color(image_rgb: np.ndarray, box: tuple[float, float, float, float]) -> str:
    """The name of a box's dominant colour, from its inner part (the edges are mostly
    background). Pixels are named as `dominant_colors` bins them, coarsely; a strong colour
    covering CHROMATIC of the box wins over a grey, black or white majority (a red car is
    mostly windows, tyres and shadow)."""
    img = np.asarray(image_rgb)
    if img.ndim != 3 or img.shape[2] < 3:
        return "grey"
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * BOX_INSET, (y2 - y1) * BOX_INSET
    h, w = img.shape[:2]
    xa, xb = int(max(0, x1 + dx)), int(min(w, x2 - dx))
    ya, yb = int(max(0, y1 + dy)), int(min(h, y2 - dy))
    if xb - xa < 2 or yb - ya < 2:
        return ""
    crop = np.ascontiguousarray(img[ya:yb, xa:xb, :3])
    if max(crop.shape[:2]) > 64:
        f = 64 / max(crop.shape[:2])
        size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    counts = np.bincount(_names(crop), minlength=len(_NAMES))
    chroma = counts[:9]
    if chroma.sum() >= CHROMATIC * counts.sum():
        merged = chroma[:8].copy()
        merged[0] += merged[7]  # red wraps around the hue circle
        merged[7] = 0
        best = int(np.argmax(np.append(merged, chroma[8])))
        return _NAMES[best if best < 8 else 8]
    return _NAMES[9 + int(np.argmax(counts[9:]))]


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB frame."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("the keyframe could not be encoded as JPEG")
    return buf.tobytes()

"""OCR, faces and the vision stage, on frames drawn in the tests with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from livesense.config import PerceptionSettings
from livesense.engines.faces import FaceDetector
from livesense.engines.ocr import OcrReader
from livesense.memory.store import MemoryStore
from livesense.pipeline.vision import VisionPerception
from livesense.records import Features, Snippet, VideoFrame
from tests.conftest import livesense
from tests.media import make_slides
from tests.media import slide as full_slide

W, H = 640, 360
FONT = cv2.FONT_HERSHEY_SIMPLEX
SIGN = [("PLATFORM 9", (40, 120), 2.0, 4), ("ARRIVALS FROM ROME", (40, 240), 1.4, 3)]
GATE = [("GATE 12", (60, 140), 2.2, 5), ("DEPARTURES", (60, 260), 1.6, 3)]


def sign(
    lines: list[tuple[str, tuple[int, int], float, int]],
    size: int = W,
    bg: tuple[int, int, int] = (235, 235, 235),
    fg: tuple[int, int, int] = (20, 20, 20),
) -> np.ndarray:
    """Text on a plain background, like a station sign (dark on light by default)."""
    img = np.full((H, W, 3), bg, np.uint8)
    for text, org, scale, thick in lines:
        cv2.putText(img, text, org, FONT, scale, fg, thick, cv2.LINE_AA)
    if size == W:
        return img
    return cv2.resize(img, (size, size * H // W), interpolation=cv2.INTER_CUBIC)


def draw_face(img: np.ndarray, cx: int, cy: int, s: int) -> None:
    """A cartoon face (hair, brows, eyes, mouth on a skin oval) the Haar cascade accepts."""

    def r(f: float) -> int:
        return int(round(s * f))

    cv2.ellipse(img, (cx, cy), (s, r(1.3)), 0, 0, 360, (205, 170, 150), -1)
    cv2.ellipse(img, (cx, cy - r(0.9)), (r(1.05), r(0.6)), 0, 180, 360, (40, 30, 20), -1)
    for side in (-1, 1):
        ex, ey = cx + side * r(0.4), cy - r(0.2)
        cv2.ellipse(img, (ex, ey - r(0.24)), (r(0.27), r(0.07)), 0, 0, 360, (60, 40, 30), -1)
        cv2.ellipse(img, (ex, ey), (r(0.2), r(0.1)), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(img, (ex, ey), r(0.09), (30, 20, 20), -1)
    cv2.ellipse(img, (cx, cy + r(0.6)), (r(0.35), r(0.1)), 0, 0, 360, (140, 60, 60), -1)


def faces_frame(centres: list[int], s: int = 70) -> np.ndarray:
    img = np.full((H, W, 3), (90, 110, 90), np.uint8)
    for cx in centres:
        draw_face(img, cx, 190, s)
    return img


def solid(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((H, W, 3), rgb, np.uint8)


def snippet(index: int, images: list[np.ndarray], missing: set[str] | None = None) -> Snippet:
    """A 2 s snippet whose sampled frames are `images`, evenly spaced."""
    start = 2.0 * index
    step = 2.0 / len(images) if images else 0.0
    frames = [VideoFrame(start + k * step, im) for k, im in enumerate(images)]
    return Snippet("cam", index, start, start + 2.0, frames=frames, missing=missing or set())


def slide(caption: str) -> np.ndarray:
    """A still slide with a caption, at the size snippets carry (640x360)."""
    return cv2.resize(full_slide(caption), (W, H), interpolation=cv2.INTER_AREA)


def norm(text: str) -> str:
    return "".join(text.upper().split())


def run(vision: VisionPerception, snip: Snippet, shed: int = 0) -> Features:
    features = Features()
    vision.process(snip, features, shed=shed)
    return features


@pytest.fixture(scope="module")
def reader() -> OcrReader:
    return OcrReader(threads=2)


@pytest.fixture(scope="module")
def faces() -> FaceDetector:
    return FaceDetector()


def test_ocr_reads_a_rendered_sign(reader: OcrReader) -> None:
    lines = reader.read(sign(SIGN), t=3.5)
    joined = norm(" ".join(line.text for line in lines))
    assert "PLATFORM9" in joined and "ARRIVALSFROMROME" in joined, joined
    assert all(line.t == 3.5 and line.score >= 0.5 and line.text for line in lines)
    x0, y0, x1, y1 = next(line.box for line in lines if "PLATFORM" in norm(line.text))
    assert 25 <= x0 <= 60 and 60 <= y0 <= 95 and 330 <= x1 <= 440 and 115 <= y1 <= 145


def test_ocr_boxes_are_in_pixels_of_a_frame_larger_than_max_side(reader: OcrReader) -> None:
    big = sign(SIGN, size=2 * W)  # 1280x720: read at 960 px, boxes scaled back
    lines = reader.read(big, t=0.0)
    x0, y0, x1, y1 = next(line.box for line in lines if "ROME" in norm(line.text))
    assert 60 <= x0 <= 110 and 390 <= y0 <= 440 and 950 <= x1 <= 1280 and 470 <= y1 <= 520


def test_faces_counts_drawn_faces_and_nothing_else(faces: FaceDetector) -> None:
    assert faces.count(faces_frame([320])) == 1
    assert faces.count(faces_frame([170, 470])) == 2
    assert faces.count(solid((90, 110, 90))) == 0
    assert faces.count(sign(SIGN)) == 0
    ((x, y, w, h),) = faces.detect(faces_frame([320]))
    assert x < 320 < x + w and y < 190 < y + h  # in pixels of the full frame


def test_ocr_runs_only_when_the_picture_changes(reader: OcrReader) -> None:
    vision = VisionPerception(PerceptionSettings(faces=False), ocr=reader)
    board = sign(GATE, bg=(20, 40, 110), fg=(255, 255, 255))  # another sign: a new picture
    pictures = [sign(SIGN)] * 3 + [board] * 2
    before = reader.calls
    out = [run(vision, snippet(i, [pic] * 4)) for i, pic in enumerate(pictures)]
    assert reader.calls - before == 2
    texts = [norm(" ".join(line.text for line in f.ocr)) for f in out]
    assert all("ARRIVALSFROMROME" in t for t in texts[:3])  # read once, then carried
    assert all("GATE12" in t and "ROME" not in t for t in texts[3:])
    for i, f in enumerate(out):  # carried lines are stamped inside their own snippet
        assert all(2.0 * i <= line.t < 2.0 * i + 2.0 for line in f.ocr)
    assert vision.last_ocr == "carried" and vision.ocr_runs == 2


def test_ocr_reruns_on_a_small_change_once_the_last_read_is_old(reader: OcrReader) -> None:
    settings = PerceptionSettings(faces=False, ocr_max_interval=3.0)
    vision = VisionPerception(settings, ocr=reader)
    marked = sign(SIGN) + np.uint8(4)  # a little brighter: under both change thresholds
    before = reader.calls
    run(vision, snippet(0, [sign(SIGN)] * 4))
    run(vision, snippet(1, [marked] * 4))  # 2 s later: too soon, carried
    assert (reader.calls - before, vision.last_ocr) == (1, "carried")
    run(vision, snippet(2, [marked] * 4))  # 4 s later and changed a little: read again
    assert (reader.calls - before, vision.last_ocr) == (2, "read")
    run(vision, snippet(4, [marked] * 4))  # old again, but nothing changed: not read
    assert (reader.calls - before, vision.last_ocr) == (2, "carried")


def test_scene_change_motion_colours_and_keyframe() -> None:
    vision = VisionPerception(PerceptionSettings(ocr=False, faces=False))
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    first, same, cut = (run(vision, snippet(i, [im] * 4)) for i, im in enumerate([red, red, blue]))
    assert (first.scene_change, same.scene_change, cut.scene_change) == (False, False, True)
    assert run(vision, snippet(3, [blue, blue, red, red])).scene_change  # a cut inside
    assert first.colors == ["#ff0000"] and first.motion == 0.0
    half = red.copy()
    half[:, W // 2 :] = (0, 0, 255)
    assert set(run(vision, snippet(4, [half])).colors) == {"#ff0000", "#0000ff"}

    jpeg = first.keyframe
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # BGR
    assert (
        decoded is not None
        and decoded.shape == (H, W, 3)
        and decoded[..., 2].mean() > 240 > 15 > decoded[..., 0].mean()
    )

    moving = []
    for k in range(4):
        im = np.zeros((H, W, 3), np.uint8)
        cv2.rectangle(im, (40 + 140 * k, 100), (160 + 140 * k, 260), (255, 255, 255), -1)
        moving.append(im)
    still = run(vision, snippet(5, [moving[0]] * 4))
    moved = run(vision, snippet(6, moving))
    assert still.motion < 0.005 and moved.motion > 0.05


def test_shed_levels_skip_what_they_say(reader: OcrReader, faces: FaceDetector) -> None:
    picture = faces_frame([470])
    cv2.putText(picture, "EXIT 4", (30, 120), FONT, 2.0, (255, 255, 255), 5, cv2.LINE_AA)
    frames = [picture] * 4
    before = reader.calls

    f2 = run(VisionPerception(PerceptionSettings(), ocr=reader, faces=faces), snippet(0, frames), 2)
    assert sorted(f2.skipped) == ["faces", "ocr"] and f2.faces == 0 and f2.ocr == []
    assert f2.keyframe is not None and f2.colors  # the cheap measures still run
    f1 = run(VisionPerception(PerceptionSettings(), ocr=reader, faces=faces), snippet(0, frames), 1)
    assert f1.skipped == ["ocr"] and f1.faces == 1 and f1.ocr == []
    assert reader.calls == before

    f0 = run(VisionPerception(PerceptionSettings(), ocr=reader, faces=faces), snippet(0, frames))
    assert f0.skipped == [] and f0.faces == 1 and reader.calls == before + 1
    assert "EXIT4" in norm(" ".join(line.text for line in f0.ocr))


def test_missing_video_leaves_the_vision_fields_empty(faces: FaceDetector) -> None:
    vision = VisionPerception(PerceptionSettings(ocr=False), faces=faces)
    assert run(vision, snippet(0, [faces_frame([320])] * 4, missing={"video"})) == Features()
    assert run(vision, snippet(1, [])) == Features()


def test_a_failing_model_does_not_lose_the_snippet() -> None:
    class BrokenFaces(FaceDetector):
        def count(self, image_rgb: np.ndarray) -> int:
            raise RuntimeError("injected fault")

    vision = VisionPerception(PerceptionSettings(ocr=False), faces=BrokenFaces())
    f = run(vision, snippet(0, [faces_frame([320])] * 2))
    assert f.skipped == ["faces:error"] and f.faces == 0
    assert f.keyframe is not None and f.colors


def test_a_caption_appearing_after_the_keyframe_is_read_in_its_snippet(reader: OcrReader) -> None:
    vision = VisionPerception(PerceptionSettings(faces=False), ocr=reader)
    old, new = slide("GATE B-52 NOW BOARDING"), slide("CAFE CLOSED EXIT LEFT")
    run(vision, snippet(0, [old] * 4))
    before = reader.calls
    f = run(vision, snippet(1, [old, old, new, new]))  # the keyframe still shows the old one
    texts = norm(" ".join(line.text for line in f.ocr))
    assert "CAFE" in texts and "GATE" in texts, texts  # both were on screen in this snippet
    assert reader.calls - before == 1 and vision.last_ocr == "read"
    after = run(vision, snippet(2, [new] * 4))
    texts = norm(" ".join(line.text for line in after.ocr))
    assert "CAFE" in texts and "GATE" not in texts and reader.calls - before == 1, texts


def test_captions_changed_on_a_still_slide_are_timed_by_their_snippet(tmp_path: Path) -> None:
    clip = make_slides(
        tmp_path / "slides.mp4",
        [(0.0, "GATE B-52 NOW BOARDING"), (6.0, "CAFE CLOSED EXIT LEFT"), (12.0, "PLATFORM 9")],
        18.0,
    )
    off = {f"LIVESENSE_PERCEPTION__{k}": "false" for k in ("ASR", "EVENTS", "FACES")}
    done = livesense("ingest", str(clip), "--memory", str(tmp_path / "m"), "--stream", "slides",
                     env=off)
    assert done.returncode == 0, done.stderr
    store = MemoryStore(tmp_path / "m", readonly=True)
    try:
        records = store.recent("slides", 100)
    finally:
        store.close()
    assert len(records) == 9
    for r in records:
        texts = norm(" ".join(r.evidence.ocr_texts()))
        want, others = (
            ("GATE", ("CAFE", "PLATFORM")) if r.start < 6 else
            ("CAFE", ("GATE", "PLATFORM")) if r.start < 12 else
            ("PLATFORM", ("GATE", "CAFE"))
        )
        assert want in texts and not any(o in texts for o in others), (r.start, texts)


def test_a_local_change_without_text_costs_no_read(reader: OcrReader) -> None:
    vision = VisionPerception(PerceptionSettings(faces=False), ocr=reader)
    run(vision, snippet(0, [slide("GATE B-52 NOW BOARDING")] * 4))
    ball = slide("GATE B-52 NOW BOARDING")
    cv2.circle(ball, (560, 60), 25, (230, 230, 230), -1)  # far from the caption
    before = reader.calls
    f = run(vision, snippet(1, [ball] * 4))
    assert reader.calls == before and vision.ocr_probes == 1 and vision.last_ocr == "carried"
    assert "GATE" in norm(" ".join(line.text for line in f.ocr))


def test_text_appearing_where_there_was_none_is_read(reader: OcrReader) -> None:
    vision = VisionPerception(PerceptionSettings(faces=False), ocr=reader)
    plain = slide("GATE B-52 NOW BOARDING")
    run(vision, snippet(0, [plain] * 4))
    sign_up = plain.copy()
    cv2.putText(sign_up, "EXIT 4", (470, 40), FONT, 1.0, (255, 255, 255), 2, cv2.LINE_AA)
    f = run(vision, snippet(1, [sign_up] * 4))  # a small sign on a still picture
    assert vision.last_ocr == "read" and vision.ocr_probes == 1
    assert "EXIT4" in norm(" ".join(line.text for line in f.ocr))


def test_ocr_detector_input_is_rapidocrs_own_to_the_bit() -> None:
    """The table-driven pre-processing gives exactly rapidocr's detector input (resize to
    multiples of 32, (x / 255 - 0.5) / 0.5, planar) on frames of several sizes."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    from livesense.engines.ocr import det_preprocess

    mean = std = [0.5, 0.5, 0.5]
    fast = det_preprocess(DetPreProcess(960, "max", mean, std))
    slow = DetPreProcess(960, "max", mean, std)
    rng = np.random.default_rng(5)
    for h, w in ((360, 640), (720, 1280), (200, 640), (50, 700)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.putText(img, "GATE B52", (10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2)
        a, b = slow(img), fast(img)
        assert b.dtype == np.float32 and b.flags.c_contiguous
        assert a.shape == b.shape and np.array_equal(a, b)


def test_object_detector_input_is_unchanged() -> None:
    """The detector's letterboxed input: BGR, (x - mean) / std, padding exactly 0."""
    from livesense.engines.detector import DETECT_SIDE, MEAN, STD, letterbox

    img = np.zeros((180, 416, 3), np.uint8)
    img[:, :, 0] = 200  # red
    x, scale = letterbox(img)
    assert x.shape == (3, DETECT_SIDE, DETECT_SIDE) and scale == 1.0
    assert np.allclose(x[2, :180], (200 - MEAN[2]) / STD[2])  # red is the third BGR plane
    assert np.allclose(x[0, :180], (0 - MEAN[0]) / STD[0])
    assert (x[:, 180:] == 0).all()

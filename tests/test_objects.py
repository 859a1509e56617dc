"""The object detector, the scene classifier, tracks and colours on real photographs."""

from __future__ import annotations

import numpy as np
import pytest

from livesense.config import PerceptionSettings
from livesense.engines import models
from livesense.engines.detector import ObjectDetector
from livesense.engines.scene import SceneClassifier
from livesense.errors import ModelMissingError
from livesense.pipeline.perception import Perception
from livesense.pipeline.tracker import ObjectTracker
from livesense.pipeline.vision import VisionPerception, box_color
from livesense.records import Detection, Features, Snippet, VideoFrame
from livesense.seen import object_phrase, seen_text, summarise
from tests.media import photo


@pytest.fixture(scope="module")
def detector() -> ObjectDetector:
    return ObjectDetector(batch=False)


@pytest.fixture(scope="module")
def scenes() -> SceneClassifier:
    return SceneClassifier(batch=False)


@pytest.mark.parametrize(
    ("name", "label"),
    [("chelsea", "cat"), ("motorcycle_left", "motorcycle"), ("astronaut", "person")],
)
def test_detector_finds_the_object_of_each_photograph(
    detector: ObjectDetector, name: str, label: str
) -> None:
    image = photo(name)
    found = detector.detect(image)
    assert found and found[0].label == label, [(f.label, f.score) for f in found]
    h, w = image.shape[:2]
    x1, y1, x2, y2 = found[0].box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert (x2 - x1) * (y2 - y1) > 0.2 * w * h  # the subject fills the picture
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


def test_detector_batches_frames_of_several_sizes(detector: ObjectDetector) -> None:
    cat, moto = photo("chelsea"), photo("motorcycle_left")
    together = detector.detect_many([cat, moto])
    alone = [detector.detect(cat), detector.detect(moto)]
    assert [[f.label for f in r] for r in together] == [[f.label for f in r] for r in alone]
    for a, b in zip(together, alone, strict=True):
        assert np.allclose([f.box for f in a], [f.box for f in b], atol=0.5)


def test_odd_grey_and_tiny_frames_are_taken(
    detector: ObjectDetector, scenes: SceneClassifier
) -> None:
    grey = photo("astronaut").mean(axis=2).astype(np.uint8)  # (H, W), one channel
    assert detector.detect(grey)[0].label == "person"
    rgba = np.dstack([photo("chelsea"), np.full(photo("chelsea").shape[:2], 255, np.uint8)])
    assert detector.detect(rgba)[0].label == "cat"
    odd = photo("motorcycle_left")[:333, :517]
    assert detector.detect(odd)
    assert detector.detect(np.zeros((3, 5, 3), np.uint8)) == []
    assert detector.detect(np.zeros((17, 1001, 3), np.uint8)) == []
    for image in (grey, rgba, odd, np.zeros((1, 1, 3), np.uint8)):
        labels = scenes.classify(image)
        assert all(0.0 < p <= 1.0 for p in labels.values()) and len(labels) <= scenes.top


def test_classifier_names_what_the_detector_has_no_class_for(scenes: SceneClassifier) -> None:
    coffee = scenes.classify(photo("coffee"))
    assert {"espresso", "cup", "coffee mug", "tea cup"} & set(coffee)
    rocket = scenes.classify(photo("rocket"))
    assert {"missile", "space shuttle", "projectile"} & set(rocket)
    probs = list(coffee.values())
    assert probs == sorted(probs, reverse=True)


def test_box_colour_is_the_strong_colour_in_the_box() -> None:
    img = np.full((100, 200, 3), 128, np.uint8)  # grey background
    img[30:70, 40:160] = (200, 20, 30)  # a red body
    img[60:70, 40:160] = (20, 20, 20)  # with black tyres
    assert box_color(img, (30.0, 20.0, 170.0, 80.0)) == "red"
    assert box_color(np.full((50, 50, 3), 250, np.uint8), (0.0, 0.0, 50.0, 50.0)) == "white"
    assert box_color(img[:, :, 0], (0.0, 0.0, 50.0, 50.0)) == "grey"  # a grey frame


def test_tracks_say_when_an_object_appeared_and_left() -> None:
    tracker = ObjectTracker()

    def look(t: float, *boxes: tuple[str, float]) -> list[Detection]:
        return [Detection(label, 0.8, (x, 10.0, x + 50.0, 60.0), t) for label, x in boxes]

    first = look(1.0, ("cat", 0.0), ("person", 100.0))
    assert [s.until for s in tracker.update(first, 1.0)] == [None, None]
    moved = look(3.0, ("cat", 5.0), ("person", 300.0))  # the person jumped: a new track
    spans = tracker.update(moved, 3.0)
    assert moved[0].track == first[0].track and moved[1].track != first[1].track
    assert {(s.label, s.since) for s in spans} == {("cat", 1.0), ("person", 3.0)}
    tracker.update(look(5.0, ("cat", 5.0)), 5.0)  # old person missed once: still patient
    spans = tracker.update(look(7.0, ("cat", 6.0)), 7.0)
    left = [s for s in spans if s.until is not None]
    assert [(s.label, s.since, s.until) for s in left] == [("person", 3.0, 3.0)]
    assert [s.label for s in spans if s.until is None] == ["cat"]


def test_seen_text_puts_confident_objects_first() -> None:
    objects = summarise(
        [
            Detection("chair", 0.35, (0, 0, 10, 10), 1.0),
            Detection("motorcycle", 0.8, (0, 0, 10, 10), 1.0, "red"),
            Detection("person", 0.7, (0, 0, 10, 10), 1.0, "blue"),
            Detection("person", 0.6, (20, 0, 30, 10), 1.0, "red"),
        ]
    )
    assert [o.label for o in objects] == ["motorcycle", "person", "chair"]
    assert object_phrase(objects[1]) == "two people"
    text = seen_text(objects, {"moped": 0.5, "crash helmet": 0.01})
    assert text == "a red motorcycle and two people, maybe a chair; moped"


def snippet(index: int, image: np.ndarray) -> Snippet:
    t = 2.0 * index
    frames = [VideoFrame(t + 0.5 * k, image) for k in range(4)]
    return Snippet("cam", index, t, t + 2.0, frames=frames)


def test_vision_stage_fills_objects_scene_and_tracks_and_skips_identical_frames(
    detector: ObjectDetector, scenes: SceneClassifier
) -> None:
    settings = PerceptionSettings(ocr=False, faces=False)
    vision = VisionPerception(settings, detector=detector, scenes=scenes)
    cat, moto = photo("chelsea"), photo("motorcycle_left")
    got = []
    for i, image in enumerate([cat, cat, moto, moto, moto]):
        f = Features()
        before = detector.calls
        vision.process(snippet(i, image), f)
        got.append((f, detector.calls - before))
    assert [calls for _, calls in got] == [1, 0, 1, 0, 0]  # identical pictures are carried
    assert got[1][0].objects[0].label == "cat" and 2.0 <= got[1][0].objects[0].t < 4.0
    assert got[2][0].objects[0].label == "motorcycle" and got[2][0].scene
    cat_track = got[0][0].objects[0].track
    assert got[1][0].objects[0].track == cat_track
    # the cat is gone at snippet 2 (missed once) and reported as left at snippet 3
    left = [s for s in got[3][0].tracks if s.until is not None]
    assert [(s.id, s.label) for s in left] == [(cat_track, "cat")]


def test_missing_model_file_is_one_sentence_and_the_snippet_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr(models, "VISION_MODELS", tmp_path)
    with pytest.raises(ModelMissingError) as err:
        models.nanodet_onnx()
    text = str(err.value)
    assert "tools/convert_nanodet.py" in text and text.count(". ") == 0 and text.endswith(".")
    perception = Perception(
        PerceptionSettings(ocr=False, asr=False, events=False), device="cpu"
    )
    vision = perception.vision_stage("cam")
    f = Features()
    vision.process(snippet(0, photo("astronaut")), f)
    assert f.keyframe and f.colors and f.faces >= 0  # everything else is there
    assert f.objects == [] and f.scene == {}
    assert {"objects:missing", "scene:missing"} <= set(f.skipped)
    assert "objects" in perception.missing and "export_efficientnet_lite0" in perception.missing[
        "scene"
    ]


def test_vision_models_are_in_the_engine_list_with_fixed_input_shapes() -> None:
    from livesense.config import Settings
    from livesense.engines.engine import onnx_inputs
    from livesense.engines.engine_factory import EngineFactory
    from livesense.engines.model_registry import pipeline_specs

    specs = {s.name: s for s in pipeline_specs(Settings())}
    factory = EngineFactory(device="cpu")
    try:
        for name, side in (("detect-nanodet", 416), ("scene-effnet", 224)):
            spec = specs[name]
            shape = (3, side, side)
            assert spec.profile(8, onnx_inputs(spec.path)) == {
                "image": ((1, *shape), (4, *shape), (8, *shape))
            }
            engine = factory.engine(spec)
            outputs = engine.run({"image": np.zeros((2, *shape), np.float32)})
            assert all(np.asarray(o).shape[0] == 2 for o in outputs)  # a dynamic batch
    finally:
        factory.close()


def test_a_weak_detection_does_not_outrank_a_strong_one(tmp_path: object) -> None:
    from pathlib import Path

    from livesense.engines.text import shared_text_embedder
    from livesense.memory.store import MemoryStore
    from livesense.pipeline.combiner import EvidenceCombiner

    def seen(*objects: tuple[str, float]) -> Features:
        return Features(objects=[Detection(k, p, (0, 0, 50, 50), 1.0) for k, p in objects])

    combiner = EvidenceCombiner(shared_text_embedder())
    moments = [seen(("dog", 0.8)), seen(("cat", 0.8), ("dog", 0.35)), seen(("chair", 0.9))]
    snippets = [Snippet("cam", i, 2.0 * i, 2.0 * i + 2) for i in range(3)]
    store = MemoryStore(Path(str(tmp_path)))
    try:
        for record in combiner.combine_batch(snippets, moments):
            store.add(record)
        hits = store.search("a dog", top_k=3)
        assert [h.index for h in hits[:2]] == [0, 1] and hits[0].score > hits[1].score
        assert store.search("a cat", top_k=1)[0].index == 1
    finally:
        store.close()


def test_evidence_with_objects_survives_the_stores_json() -> None:
    from livesense.memory.store import evidence_from_json, evidence_to_json
    from livesense.records import Evidence, SeenObject, TrackSpan

    ev = Evidence(
        objects=[SeenObject("motorcycle", 1, 0.79, (70.5, 55.0, 658.0, 422.0), "red")],
        scene={"moped": 0.48},
        tracks=[TrackSpan(3, "motorcycle", 4.5), TrackSpan(1, "cat", 0.5, 2.5)],
    )
    back = evidence_from_json(evidence_to_json(ev))
    assert back == ev
    assert back.to_json()["objects"] == [
        {"label": "motorcycle", "count": 1, "score": 0.79, "box": [70.5, 55.0, 658.0, 422.0],
         "color": "red"}
    ]
    assert evidence_from_json('{"transcript": "older moment"}').objects == []  # stored before

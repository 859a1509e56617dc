"""End to end on real photographs (scikit-image's data, no text in them): plain visual
questions find the right picture, ask names the time as one span, the timeline carries the
objects and a standing query for "person" fires when the person appears."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from tests.conftest import livesense
from tests.media import make_photo_clip

SHOTS = [("chelsea", 4.0), ("motorcycle_left", 4.0), ("coffee", 4.0), ("astronaut", 4.0),
         ("rocket", 4.0), ("astronaut+camera", 4.0)]  # fmt: skip
MUSIC = (12.0, 20.0)
WHERE = {"cat": [(0, 4)], "motorcycle": [(4, 8)], "coffee": [(8, 12)],
         "person": [(12, 16), (20, 24)], "rocket": [(16, 20)], "two": [(20, 24)]}  # fmt: skip
COCO_QUESTIONS = [
    ("a cat", "cat"),
    ("a red motorcycle", "motorcycle"),
    ("bike", "motorcycle"),
    ("a cup of coffee", "coffee"),
    ("a person", "person"),
    ("two people", "two"),
]
OTHER_QUESTIONS = [("a rocket", "rocket")]
_TIME = re.compile(r"\b(\d+):(\d\d)\b")


def times(text: str) -> list[int]:
    return [int(m) * 60 + int(s) for m, s in _TIME.findall(text)]


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    clip = make_photo_clip(folder / "photos.mp4", SHOTS, music=MUSIC)
    mem = folder / "memory"
    result = livesense("ingest", str(clip), "--memory", str(mem), "--stream", "photos")
    assert result.returncode == 0, result.stderr
    return mem


def top_start(memory: Path, query: str) -> float:
    result = livesense("search", query, "--memory", str(memory), "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert hits, query
    return float(hits[0]["start"])


def test_plain_visual_questions_find_the_right_picture(memory: Path) -> None:
    right = []
    for query, what in COCO_QUESTIONS + OTHER_QUESTIONS:
        start = top_start(memory, query)
        right.append(any(lo <= start < hi for lo, hi in WHERE[what]))
    coco = right[: len(COCO_QUESTIONS)]
    assert sum(coco) >= 0.8 * len(coco), list(zip(COCO_QUESTIONS, coco, strict=True))


def test_search_json_carries_objects_and_scene(memory: Path) -> None:
    result = livesense("search", "a cat", "--memory", str(memory), "--json", "--top-k", "3")
    hit = json.loads(result.stdout)["hits"][0]
    ev = hit["evidence"]
    assert {"transcript", "ocr", "events", "faces", "keyframe"} <= set(ev)  # as before
    assert ev["objects"] and all(
        set(o) == {"label", "count", "score", "box", "color"} for o in ev["objects"]
    )
    best = ev["objects"][0]
    assert best["label"] == "cat" and best["count"] == 1 and 0 < best["score"] <= 1
    x1, y1, x2, y2 = best["box"]
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
    assert ev["scene"] and all(0 < p <= 1 for p in ev["scene"].values())


def ask(memory: Path, question: str) -> str:
    result = livesense("ask", question, "--memory", str(memory), "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["answer"])


def test_ask_names_the_time_of_what_was_seen_and_heard_as_one_span(memory: Path) -> None:
    cat = ask(memory, "when was there a cat?")
    assert "cat" in cat and times(cat) == [0, 4], cat
    music = ask(memory, "when was music playing?")
    assert "music" in music.lower() and times(music) == [12, 20], music  # one span, not four
    person = ask(memory, "when was a person on screen?")
    assert times(person)[:2] in ([12, 16], [20, 24]), person


def test_timeline_moments_carry_their_objects(memory: Path) -> None:
    result = livesense("timeline", "--stream", "photos", "--memory", str(memory), "--json")
    moments = json.loads(result.stdout)["moments"]
    assert len(moments) == 12
    labels = [{o["label"] for o in m["objects"]} for m in moments]
    assert "cat" in labels[0] and "motorcycle" in labels[2] and "person" in labels[6]
    counts = {o["label"]: o["count"] for o in moments[10]["objects"]}
    assert counts.get("person", 0) >= 2, moments[10]  # two people at once (or more)
    assert "seen" in moments[0]["summary"]


async def test_standing_query_for_a_person_fires_when_the_person_appears(memory: Path) -> None:
    store = MemoryStore(memory, readonly=True)
    try:
        records = [store.get("photos", i) for i in range(12)]
    finally:
        store.close()
    hub = WatchHub()
    sub = hub.subscribe("person")

    def publish() -> None:
        for r in records:
            assert r is not None
            hub.publish(r)

    thread = threading.Thread(target=publish)
    thread.start()
    thread.join()
    hit = await asyncio.wait_for(sub.queue.get(), 5)
    assert (hit.start, hit.index) == (12.0, 6)  # nothing before the person appeared

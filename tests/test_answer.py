"""Answers quote whole sentences even when snippets cut the speech in pieces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from livesense.memory.answer import compose_answer
from livesense.records import Evidence, Hit, OcrLine, SeenObject

PIECES = ["Welcome aboard.", "The train to Rome leaves", "from platform 9", "at 7:30.", "Next stop"]
MOMENTS = [
    Hit("cam", 2.0 * i, 2.0 * i + 2, 0.0, Evidence(transcript=t), i) for i, t in enumerate(PIECES)
]


def neighbour(hit: Hit, step: int) -> Hit | None:
    i = hit.index + step
    return MOMENTS[i] if 0 <= i < len(MOMENTS) else None


def test_quote_is_completed_from_neighbouring_moments() -> None:
    best = Hit("cam", 4.0, 6.0, 0.9, Evidence(transcript="from platform 9"), 2)
    answer = compose_answer("which platform for Rome?", [best], neighbour=neighbour)
    assert "“The train to Rome leaves from platform 9 at 7:30.”" in answer.text
    assert answer.text.startswith("At 0:02–0:08 in stream cam")  # spans the whole sentence
    assert answer.hits == [best]  # the hits themselves are unchanged


def test_without_neighbours_the_piece_is_quoted() -> None:
    best = Hit("cam", 4.0, 6.0, 0.9, Evidence(transcript="from platform 9"), 2)
    answer = compose_answer("which platform for Rome?", [best])
    assert "“from platform 9”" in answer.text and "0:04–0:06" in answer.text


def run(evidences: list[Evidence], first: float = 0.0) -> list[Hit]:
    return [
        Hit("cam", first + 2.0 * i, first + 2.0 * i + 2, 0.0, ev, i)
        for i, ev in enumerate(evidences)
    ]


def neighbours(moments: list[Hit]) -> Callable[[Hit, int], Hit | None]:
    def find(hit: Hit, step: int) -> Hit | None:
        i = hit.index + step
        return moments[i] if 0 <= i < len(moments) else None

    return find


def best_of(moments: list[Hit], i: int, score: float = 0.6) -> Hit:
    return replace(moments[i], score=score)


def test_what_lasted_is_one_span_whatever_the_modality() -> None:
    quiet = Evidence()
    music = Evidence(events={"music": 0.9, "speech": 0.0})
    moments = run([quiet] * 12 + [music] * 6 + [quiet] * 2)
    answer = compose_answer(
        "when was music playing?",
        [best_of(moments, 14), best_of(moments, 13, 0.59), best_of(moments, 15, 0.58)],
        neighbour=neighbours(moments),
    )
    assert answer.text == "Music played from 0:24 to 0:36."
    sign = Evidence(ocr=[OcrLine("EXIT 3", (0, 0, 40, 10), 0.9, 0.0)])
    moments = run([quiet] * 2 + [sign] * 6 + [quiet])
    hits = [best_of(moments, i, 0.6 - 0.01 * i) for i in range(2, 8)]
    answer = compose_answer("what did the sign say?", hits, neighbour=neighbours(moments))
    assert answer.text == "The screen showed \u201cEXIT 3\u201d from 0:04 to 0:16."
    assert "Also" not in answer.text and len(answer.hits) == 6


def test_a_seen_object_is_told_with_its_span() -> None:
    cat = Evidence(objects=[SeenObject("cat", 1, 0.7, (0, 0, 50, 50), "orange")])
    moments = run([Evidence()] * 4 + [cat] * 4 + [Evidence()])
    near = neighbours(moments)
    answer = compose_answer("was there a cat?", [best_of(moments, 5)], neighbour=near)
    assert answer.text == "An orange cat was on screen from 0:08 to 0:16."
    two = Evidence(objects=[SeenObject("person", 2, 0.8, (0, 0, 50, 50), "red")])
    answer = compose_answer("two people", [replace(run([two])[0], score=0.5)])
    assert answer.text == "Two people were on screen from 0:00 to 0:02."
    weak = Evidence(objects=[SeenObject("dog", 1, 0.35, (0, 0, 50, 50), "")])
    answer = compose_answer("a dog", [replace(run([weak])[0], score=0.5)])
    assert answer.text == "A dog may have been on screen from 0:00 to 0:02."


def test_a_clear_closest_moment_answers_below_the_threshold() -> None:
    title = Evidence(ocr=[OcrLine("ACME Robotics", (0, 0, 40, 10), 0.9, 0.0)])
    moments = run([title, Evidence(transcript="Welcome."), Evidence(transcript="Thanks.")])
    clear = [replace(moments[0], score=0.12), replace(moments[1], score=0.05)]
    answer = compose_answer("what is the company on the title slide?", clear)
    assert answer.text.startswith("The closest moment: ") and "ACME Robotics" in answer.text
    assert "0:00" in answer.text and answer.hits == [clear[0]]
    flat = [replace(moments[0], score=0.1), replace(moments[1], score=0.09)]
    assert compose_answer("recipe for chocolate cake?", flat).text.startswith("Nothing in memory")

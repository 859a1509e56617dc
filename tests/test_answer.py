"""Answers quote whole sentences even when snippets cut the speech in pieces."""

from __future__ import annotations

from livesense.memory.answer import compose_answer
from livesense.records import Evidence, Hit

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

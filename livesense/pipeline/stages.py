"""The pipeline's inner contract: what a perception stage offers, how much work it may shed,
and the typed items that travel on the queues between stages.

A snippet goes snippeter -> vision stage -> audio stage -> Combiner. The vision stage fills a
snippet's Features in one call; the audio stage holds snippets until the speech around them
is transcribed and hands them on, in order, possibly later. Stages are blocking (models run
in them): the pipeline calls them from one worker thread per stage and stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Protocol, runtime_checkable

from livesense.records import Features, Snippet


class ShedLevel(IntEnum):
    """How much perception a live stream that lags sheds for one snippet.

    NONE: everything runs. LIGHT (lag above one snippet): OCR and audio event tagging are
    skipped. HEAVY (lag above three snippets): faces and the CLIP slot are skipped too, one
    sampled frame is looked at, and speech regions that close are not transcribed. Voice
    activity, loudness and keyframes always run. The value is the metric's suffix (shed1,
    shed2) and what stages compare against (shed >= 1).
    """

    NONE = 0
    LIGHT = 1
    HEAVY = 2

    @classmethod
    def for_lag(cls, lag: float, seconds: float) -> ShedLevel:
        """The level for a snippet `lag` seconds behind live, snippets being `seconds` long."""
        if lag <= seconds:
            return cls.NONE
        return cls.LIGHT if lag <= 3 * seconds else cls.HEAVY


@runtime_checkable
class VisionStage(Protocol):
    """Fills the vision fields of a snippet's Features (one instance per stream)."""

    def process(self, snippet: Snippet, features: Features, *, shed: int = 0) -> None:
        """Fill `features` from `snippet.frames`; a model's failure is named in
        `features.skipped`, never raised."""


@runtime_checkable
class AudioStage(Protocol):
    """Fills the audio fields of Features, holding snippets until their speech is known."""

    def push(
        self, snippet: Snippet, features: Features, shed: int = 0
    ) -> Iterable[tuple[Snippet, Features]]:
        """Take the next snippet; the snippets complete now, in order."""

    def flush(self) -> Iterable[tuple[Snippet, Features]]:
        """The end of the stream: every snippet still held, in order."""


@dataclass(slots=True)
class Seen:
    """A snippet on its way from the vision stage to the audio stage and memory.

    `vision` is the vision stage's work on it, still running: the audio stage fills other
    fields of `features` meanwhile, and the snippet is stored once both are done.
    """

    snippet: Snippet
    features: Features
    shed: ShedLevel
    vision: asyncio.Future[Any]


class EndOfQueue:
    """The last item on a pipeline queue: the stage before it has finished."""

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfQueue()

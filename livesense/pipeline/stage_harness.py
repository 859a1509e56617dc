"""Run one perception stage by itself: snippets in, (snippet, features) out.

Tests of a stage (and of a new stage) say what goes in and check what comes out, the way
the pipeline would call it, without a source, queues or a store:

    out = run_stage(VisionPerception(settings), snippets, shed=ShedLevel.HEAVY)
    assert [s.index for s, _ in out] == [0, 1]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from livesense.pipeline.stages import AudioStage, ShedLevel, VisionStage
from livesense.records import Features, Snippet


def run_stage(
    stage: VisionStage | AudioStage,
    snippets: Iterable[Snippet],
    *,
    shed: ShedLevel | Sequence[ShedLevel] = ShedLevel.NONE,
) -> list[tuple[Snippet, Features]]:
    """Every snippet through `stage` with fresh Features, then the end of the stream; what
    the stage handed on, in the order it did. `shed` is one level for all, or one a snippet.

    A vision stage hands each snippet on at once; an audio stage when the speech around it
    is known (the rest at the end)."""
    items = list(snippets)
    levels = [shed] * len(items) if isinstance(shed, ShedLevel) else list(shed)
    if len(levels) != len(items):
        raise ValueError(f"{len(levels)} shed levels for {len(items)} snippets")
    out: list[tuple[Snippet, Features]] = []
    for snip, level in zip(items, levels, strict=True):
        features = Features()
        if isinstance(stage, AudioStage):
            out += stage.push(snip, features, shed=level)
        else:
            stage.process(snip, features, shed=level)
            out.append((snip, features))
    if isinstance(stage, AudioStage):
        out += stage.flush()
    return out

"""The Combiner fuses any subset of modalities into a few tagged, normalised vectors."""

from __future__ import annotations

import numpy as np
import pytest

from livesense.engines.text import shared_text_embedder
from livesense.pipeline.combiner import EvidenceCombiner
from livesense.records import Features, OcrLine, Snippet, Word


@pytest.fixture(scope="module")
def combiner() -> EvidenceCombiner:
    return EvidenceCombiner(shared_text_embedder())


def snippet(index: int, missing: set[str] | None = None) -> Snippet:
    return Snippet("cam", index, index * 2.0, index * 2.0 + 2.0, missing=missing or set())


def full_features() -> Features:
    return Features(
        words=[Word("the", 4.1, 4.2), Word("train", 4.3, 4.6), Word("leaves", 4.7, 5.0)],
        events={"speech": 0.9, "music": 0.7},
        ocr=[OcrLine("PLATFORM9", (0, 0, 10, 10), 0.9, 4.5)],
        faces=2,
        scene_change=True,
    )


def test_all_modalities_make_one_token_each(combiner: EvidenceCombiner) -> None:
    rec = combiner.combine(snippet(2), full_features())
    assert rec.token_modalities == ["speech", "text", "audio", "visual"]
    assert rec.tokens.shape == (4, 384) and rec.tokens.dtype == np.float32
    assert np.allclose(np.linalg.norm(rec.tokens, axis=1), 1.0, atol=1e-4)
    assert all(4.0 <= t <= 6.0 for t in rec.token_times)  # tagged with times inside the snippet
    assert rec.evidence.transcript == "the train leaves"
    assert rec.evidence.ocr_texts() == ["PLATFORM9"]
    assert rec.evidence.faces == 2
    # "speech" is not repeated in the audio token when words carry it
    q = combiner.embedder.embed(["sound of music"])[0]
    assert float(rec.tokens[2] @ q) > 0.9


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (Features(words=[Word("hello", 0.1, 0.4)]), ["speech"]),
        (Features(ocr=[OcrLine("EXIT", (0, 0, 1, 1), 0.9, 0.5)]), ["text"]),
        (Features(events={"music": 0.95}), ["audio"]),
        (Features(), ["visual"]),  # nothing found still leaves one token to find the time by
    ],
)
def test_modality_subsets(
    combiner: EvidenceCombiner, features: Features, expected: list[str]
) -> None:
    rec = combiner.combine(snippet(0, {"video"} if expected == ["audio"] else None), features)
    assert rec.token_modalities == expected
    assert rec.tokens.shape == (len(expected), 384)


def test_batch_matches_single(combiner: EvidenceCombiner) -> None:
    feats = [full_features(), Features(words=[Word("rome", 0.5, 0.9)])]
    batch = combiner.combine_batch([snippet(2), snippet(0)], feats)
    single = [combiner.combine(snippet(2), feats[0]), combiner.combine(snippet(0), feats[1])]
    for a, b in zip(batch, single, strict=True):
        assert a.token_modalities == b.token_modalities
        assert np.allclose(a.tokens, b.tokens, atol=1e-5)

"""Tiered memory: budgets hold, moments tile the stream, salient moments stay whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from livesense.config import MemorySettings
from livesense.memory.consolidate import Stored
from livesense.memory.lexical import searchable_text
from livesense.memory.store import MemoryStore
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import (
    CONSOLIDATED,
    KEY,
    RECENT,
    Drop,
    Put,
    StreamTiers,
    TierBudget,
    compact_text,
    key_salience,
)
from livesense.records import Evidence, OcrLine, SnippetRecord
from tests.conftest import livesense

# The floor (min_score) is off: these suites check what filters and tiers keep, weak hits too.
SETTINGS = MemorySettings(max_records_per_stream=40, recent=8, key_moments=6, min_score=0.0)
TOPICS = 6


def synthetic(i: int, rng: np.random.Generator, *, sign_every: int = 50) -> SnippetRecord:
    """Snippet i of a long stream: a topic vector that changes every 20 snippets, a new sign
    every `sign_every` snippets, speech now and then."""
    base = np.zeros(384, np.float32)
    base[(i // 20) % TOPICS] = 1.0
    tok = base + 0.05 * rng.standard_normal((2, 384)).astype(np.float32)
    tok /= np.linalg.norm(tok, axis=1, keepdims=True)
    ocr = [OcrLine(f"SIGN{i // sign_every}", (0, 0, 9, 9), 0.9, 2.0 * i)]
    said = f"announcement number {i} about code X{i}" if i % 7 == 0 else ""
    ev = Evidence(transcript=said, ocr=ocr)
    return SnippetRecord("cam", i, 2.0 * i, 2.0 * i + 2.0, tok, ["speech", "text"], [0, 0], ev)


def item(record: SnippetRecord) -> Stored:
    return Stored(0, record, record.index, searchable_text(record.evidence))


def test_budgets_hold_and_moments_tile_the_stream() -> None:
    budget = TierBudget.from_settings(SETTINGS)
    assert (budget.recent, budget.key, budget.consolidated) == (8, 6, 26)
    tiers = StreamTiers("cam", budget)
    rng = np.random.default_rng(0)
    ops_per_snippet = []
    for i in range(1500):
        plan = tiers.admit(item(synthetic(i, rng)))
        assert plan is not None
        ops_per_snippet.append(len(plan.ops))
        counts = tiers.counts()
        assert counts[RECENT] <= 8 and counts[KEY] <= 6 and counts[CONSOLIDATED] <= 26
    assert tiers.admit(item(synthetic(700, rng))) is None  # stored already: no plan
    items = tiers.items()
    assert len(items) == 40
    assert items[0].record.index == 0 and items[-1].last_index == 1499
    for a, b in zip(items, items[1:], strict=False):  # no overlap, no hole
        assert b.record.index == a.last_index + 1 and b.record.start == a.record.end
    assert sum(it.record.count for it in items) == 1500
    assert [it.record.tier for it in items[-8:]] == [RECENT] * 8
    # constant work per snippet: a put, a move out of the recent tier, at most a merge or two
    assert max(ops_per_snippet[200:]) <= 8
    assert abs(np.mean(ops_per_snippet[200:600]) - np.mean(ops_per_snippet[1100:1500])) < 0.5


def test_new_text_speech_and_queried_moments_are_kept_whole() -> None:
    tiers = StreamTiers("cam", TierBudget.from_settings(SETTINGS))
    rng = np.random.default_rng(1)
    queried = 1200
    for i in range(1400):
        tiers.admit(item(synthetic(i, rng, sign_every=10_000)))  # one sign: never new again
        if i == queried + 2:  # a query returned it while it was recent
            tiers.mark_queried([queried])
    keys = {it.record.index: it for it in tiers.items() if it.record.tier == KEY}
    assert len(keys) == 6
    assert queried in keys and keys[queried].record.count == 1
    assert all(it.record.evidence.transcript for i, it in keys.items() if i != queried)
    assert keys[queried].record.evidence.transcript == ""  # kept only for being queried
    ev = Evidence(ocr=[OcrLine("GATE 4", (0, 0, 1, 1), 1.0, 0.0)])
    assert key_salience(ev, ["GATE 4"]) == 0.0 < key_salience(ev, ["GATE 3"])


def test_merged_text_keeps_words_until_it_is_full() -> None:
    text, dropped = compact_text(["Platform 9 for Rome\nGATE Q17", "Platform 9 for Rome"], 200)
    assert text == "Platform 9 for Rome\nGATE Q17" and dropped == 0
    lines = [f"line {i} with word{i}" for i in range(40)]
    text, dropped = compact_text(lines, 300)
    assert len(text) <= 300 and dropped > 0
    assert "word0" in text and "word39" not in text


def test_plans_drop_what_they_merge_and_summary_runs() -> None:
    tiers = StreamTiers("cam", TierBudget.from_settings(SETTINGS))
    rng = np.random.default_rng(2)
    merged = 0
    for i in range(300):
        plan = tiers.admit(item(synthetic(i, rng)))
        assert plan is not None and plan.summary is tiers.summary
        drops = [op.index for op in plan.ops if isinstance(op, Drop)]
        puts = [op.item.record.index for op in plan.ops if isinstance(op, Put)]
        assert set(puts) - {i} <= set(drops)  # a merge replaces the records it merges
        merged += len(drops)
    assert merged > 0
    summary = tiers.summary
    assert summary.snippets == 300 and summary.end == 600.0
    assert "SIGN0" in summary.text() and "announcement" in summary.text()
    again = StreamSummary.from_json(summary.to_json())
    assert again.text() == summary.text() and np.allclose(again.mean, summary.mean, atol=1e-3)


def test_embedded_store_timeline_tiles_and_survives_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with MemoryStore(tmp_path, SETTINGS) as store:
        for i in range(400):
            store.add(synthetic(i, rng))
        before = [m.to_json() for m in store.timeline("cam")]
        assert len(before) == store.count("cam") == 40
        assert store.next_index("cam") == 400
        hit = store.search("X14", top_k=1)[0]  # code of an early, merged moment
        assert hit.start <= 28.0 < hit.end and hit.end - hit.start > 2.0
    with MemoryStore(tmp_path, SETTINGS) as store:  # tiers are rebuilt from the database
        for i in range(400, 420):
            store.add(synthetic(i, rng))
        moments = store.timeline("cam")
        assert len(moments) == 40 and moments[-1].end == 840.0
        assert all(a.end == b.start for a, b in zip(moments, moments[1:], strict=False))
        assert store.summary("cam") is not None
        assert store.summary("cam").snippets == 420  # type: ignore[union-attr]
    result = livesense("timeline", "--stream", "cam", "--memory", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    moments_json = json.loads(result.stdout)["moments"]
    assert [set(m) for m in moments_json] == [{"start", "end", "tier", "summary", "objects"}] * 40
    assert moments_json[0]["start"] == 0.0 and moments_json[-1]["end"] == 840.0
    assert {m["tier"] for m in moments_json} == {RECENT, KEY, CONSOLIDATED}

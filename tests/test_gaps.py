"""Gap markers in memory: stored with their reason, idempotent, kept across restarts, shown in
the timeline as moments of tier `gap` that tile with the stored moments, never found by search.
Both stores: the embedded one and Redis (a real redis-server)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livesense.errors import QueryError
from livesense.memory.redis_store import RedisStore
from livesense.memory.store import MemoryStore
from livesense.memory.store_base import Store
from livesense.memory.tiers import GAP, GAPS_KEPT, GapMark, TimelineMoment, with_gaps
from tests.conftest import livesense
from tests.redis_server import RedisServer, redis_server
from tests.test_tiers import SETTINGS as TIER_SETTINGS
from tests.test_tiers import synthetic

SETTINGS = TIER_SETTINGS.model_copy(update={"min_score": 0.0})
"""Every search returns its best moments: the gap tests look at what comes back, not the floor."""


def moment(start: float, end: float, tier: str = "recent") -> TimelineMoment:
    return TimelineMoment(start, end, tier, f"m{start:g}")


def spans(moments: list[TimelineMoment]) -> list[tuple[float, float, str]]:
    return [(m.start, m.end, m.tier) for m in moments]


def assert_tiles(moments: list[TimelineMoment]) -> None:
    assert all(m.start <= m.end for m in moments)
    assert all(a.end == b.start for a, b in zip(moments, moments[1:], strict=False))


def test_gaps_cut_into_moments_and_fill_the_holes_next_to_them() -> None:
    records = [moment(0, 2), moment(2, 4), moment(6, 8), moment(8, 10)]
    # an outage from 3.0 to 6.5: inside snippet [2,4), over the skipped window [4,6), into [6,8)
    out = with_gaps(records, [GapMark(3.0, 6.5, "dropped")])
    assert spans(out) == [
        (0, 2, "recent"), (2, 3.0, "recent"), (3.0, 6.5, GAP), (6.5, 8, "recent"),
        (8, 10, "recent"),
    ]  # fmt: skip
    assert out[2].summary == "gap: dropped"
    assert_tiles(out)
    # a gap inside one moment cuts it in two; one ending inside a hole fills the hole
    out = with_gaps(records, [GapMark(8.5, 9.0, "a"), GapMark(4.5, 5.0, "b")])
    assert spans(out) == [
        (0, 2, "recent"), (2, 4, "recent"), (4, 6, GAP), (6, 8, "recent"), (8, 8.5, "recent"),
        (8.5, 9.0, GAP), (9.0, 10, "recent"),
    ]  # fmt: skip
    assert_tiles(out)
    # overlapping markers are one moment with both reasons; a zero-length one still shows
    whole = [moment(2 * i, 2 * i + 2) for i in range(5)]
    out = with_gaps(whole, [GapMark(1.0, 1.5, "x"), GapMark(1.2, 1.8, "y"), GapMark(9.0, 9.0, "z")])
    assert [m.summary for m in out if m.tier == GAP] == ["gap: x; y", "gap: z"]
    assert spans(out)[:3] == [(0, 1.0, "recent"), (1.0, 1.8, GAP), (1.8, 2, "recent")]
    assert_tiles(out)
    # a stored moment wholly inside a marked gap stays whole; the gap goes round it
    out = with_gaps(records, [GapMark(3.0, 7.0, "w")])
    out2 = with_gaps([moment(0, 2), moment(4, 6), moment(8, 10)], [GapMark(1.0, 9.0, "w")])
    assert spans(out2) == [
        (0, 1.0, "recent"), (1.0, 4, GAP), (4, 6, "recent"), (6, 9.0, GAP), (9.0, 10, "recent")
    ]  # fmt: skip
    assert_tiles(out) and assert_tiles(out2)  # type: ignore[func-returns-value]
    assert with_gaps(records, []) == records


def test_random_timelines_with_gaps_still_tile() -> None:
    """Seeded random moments (with holes) and gaps (some zero-length, some overlapping)."""
    rng = random.Random(1)
    for _ in range(2000):
        t, moms = 0.0, []
        for i in range(rng.randint(0, 8)):
            t += rng.choice([0.0, 0.0, 0.0, 1.5])
            d = rng.choice([1.0, 2.0, 0.5])
            moms.append(TimelineMoment(t, t + d, "recent", str(i)))
            t += d
        gaps = []
        for k in range(rng.randint(0, 4)):
            a = round(rng.uniform(0, t + 2), 1)
            gaps.append(GapMark(a, round(a + rng.choice([0, 0, 0.3, 1, 3, 6]), 1), f"g{k}"))
        out = with_gaps(moms, gaps)
        assert all(m.start <= m.end for m in out)
        assert all(a.end <= b.start for a, b in zip(out, out[1:], strict=False))
        assert {m.summary for m in moms} <= {m.summary for m in out}  # no moment is lost
        for g in gaps:  # every marked instant is in a gap moment or in a stored one
            for x in (g.start, (g.start + g.end) / 2, g.end):
                assert any(m.start <= x <= m.end for m in out), (moms, gaps, out)
        for i, m in enumerate(out):  # the holes next to a gap are filled
            if m.tier == GAP:
                assert i == 0 or out[i - 1].end == m.start
                assert i + 1 == len(out) or out[i + 1].start == m.end


def test_a_gap_marker_needs_sane_times() -> None:
    assert GapMark.checked(1.00041, 2.5, "  two\n lines ") == GapMark(1.0, 2.5, "two lines")
    for start, end in ((2.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (0.0, float("inf"))):
        with pytest.raises(ValueError, match="A gap needs"):
            GapMark.checked(start, end, "x")


def filled(store: Store, n: int = 30) -> None:
    """Snippets 0..n-1 stored, but 10..14 missing (the outage)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        record = synthetic(i, rng)
        if not 10 <= i < 15:
            store.add(record)
    store.flush()


REASON = "the source dropped (connection reset) and was reconnected after 2 attempts"


def check_store_keeps_gaps(store: Store) -> list[dict[str, object]]:
    filled(store)
    store.mark_gap("cam", 19.6, 30.4, REASON)
    store.mark_gap("cam", 19.6, 30.4, REASON)  # the same gap again: one marker
    store.mark_gap("cam", 19.60004, 30.40001, "again, with other words")  # the same, rounded
    assert store.gaps("cam") == [GapMark(19.6, 30.4, REASON)]
    assert store.gaps("other") == []
    with pytest.raises(QueryError, match="A gap needs"):
        store.mark_gap("cam", 5.0, 4.0, "backwards")
    moments = store.timeline("cam")
    assert_tiles(moments)
    assert moments[0].start == 0.0 and moments[-1].end == 60.0
    gaps = [m for m in moments if m.tier == GAP]
    assert [(g.start, g.end) for g in gaps] == [(19.6, 30.4)]
    assert REASON in gaps[0].summary
    # search finds stored moments only, even for the words of the reason
    hits = store.search("source dropped and was reconnected after attempts", top_k=50)
    assert hits and all(h.index >= 0 and h.start % 2.0 == 0.0 for h in hits)
    assert not any(20.0 <= h.start < 30.0 for h in hits)  # nothing from inside the outage
    return [m.to_json() for m in moments]


def test_embedded_store_keeps_gap_markers_across_restarts(tmp_path: Path) -> None:
    with MemoryStore(tmp_path, SETTINGS) as store:
        before = check_store_keeps_gaps(store)
    with MemoryStore(tmp_path, SETTINGS, readonly=True) as reader:
        assert [m.to_json() for m in reader.timeline("cam")] == before
    result = livesense("timeline", "--stream", "cam", "--memory", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["moments"]
    assert shown == before
    assert all(set(m) == {"start", "end", "tier", "summary", "objects"} for m in shown)
    gap = next(m for m in shown if m["tier"] == "gap")
    assert gap["start"] == 19.6 and gap["end"] == 30.4 and REASON in gap["summary"]


def test_gap_markers_are_bounded_per_stream(tmp_path: Path) -> None:
    with MemoryStore(tmp_path, SETTINGS) as store:
        for i in range(GAPS_KEPT + 5):
            store.mark_gap("cam", float(i), i + 0.5, f"jump {i}")
        kept = store.gaps("cam")
        assert len(kept) == GAPS_KEPT and kept[0].reason == "jump 5"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.emptied()


def test_redis_store_keeps_gap_markers_across_restarts(server: RedisServer, url: str) -> None:
    with RedisStore(url, SETTINGS) as store:
        before = check_store_keeps_gaps(store)
        for i in range(GAPS_KEPT + 5):  # bounded, the oldest leaving first
            store.mark_gap("busy", float(i), i + 0.5, f"jump {i}")
        kept = store.gaps("busy")
        assert len(kept) == GAPS_KEPT and kept[0].reason == "jump 5"
    server.kill()  # the markers are in the AOF like everything else
    server.start()
    with RedisStore(url, SETTINGS, readonly=True) as reader:
        assert [m.to_json() for m in reader.timeline("cam")] == before
    result = livesense("timeline", "--stream", "cam", "--redis", url, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["moments"] == before
    import redis

    client = redis.Redis.from_url(url)
    try:  # every key of the stream, gaps included, in its one hash slot
        keys = client.keys("ls:{cam}:gap*")
        assert sorted(keys) == [b"ls:{cam}:gaps", b"ls:{cam}:gapwhy"]
    finally:
        client.close()


def test_a_redis_writer_cannot_mark_gaps_of_a_stream_it_does_not_ingest(url: str) -> None:
    with RedisStore(url, SETTINGS) as a, RedisStore(url, SETTINGS) as b:
        assert a.acquire("cam")
        with pytest.raises(Exception, match="being ingested by"):
            b.mark_gap("cam", 1.0, 2.0, "x")
        a.mark_gap("cam", 1.0, 2.0, "x")
        assert b.gaps("cam") == [GapMark(1.0, 2.0, "x")]

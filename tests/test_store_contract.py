"""What every store promises, checked against each: the embedded SQLite store, the Redis
store on a plain redis-server (vectors searched in each process) and on Redis Stack (vectors
searched by Redis's query engine). A new store passes this suite before anything uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from livesense.config import RedisSettings
from livesense.errors import LivesenseError, QueryError
from livesense.memory.consolidate import Stored
from livesense.memory.store import MemoryStore
from livesense.memory.store_base import Store
from livesense.memory.tiers import GAP, GAPS_KEPT, StreamTiers, TierBudget
from livesense.records import SnippetRecord
from tests.redis_server import RedisServer, redis_server
from tests.test_tiers import SETTINGS as TIER_SETTINGS
from tests.test_tiers import item, synthetic

# no score floor: the suite checks which moments a filter admits, however weakly they match
SETTINGS = TIER_SETTINGS.model_copy(update={"min_score": 0.0})

Opener = Callable[..., Store]  # opener(readonly=False) -> a store over the same memory
JPEG = bytes([255, 216]) + bytes(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("stack"), stack=True)


@pytest.fixture(params=["sqlite", "redis", "redis-stack"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores over one fresh memory; every store opened is closed after the test."""
    opened: list[Store] = []
    if request.param == "sqlite":

        def make(readonly: bool = False) -> Store:
            opened.append(MemoryStore(tmp_path, SETTINGS, readonly=readonly))
            return opened[-1]

    else:
        from livesense.memory.redis_store import QUERY_ENGINE, RedisStore

        stack = request.param == "redis-stack"
        url = request.getfixturevalue("stack" if stack else "server").emptied()
        fast = RedisSettings(lease_ttl=1.0, retry_max=0.5)

        def make(readonly: bool = False) -> Store:
            store = RedisStore(url, SETTINGS, fast, readonly=readonly, vector_index=stack or None)
            assert (store.vector_search == QUERY_ENGINE) == stack
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


def fill(store: Store, n: int, stream: str = "cam", seed: int = 0) -> list[SnippetRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        r = synthetic(i, rng)
        r.stream = stream
        store.add(r, keyframe=JPEG)
        records.append(r)
    store.flush()
    return records


def tiles(store: Store, stream: str, n: int) -> None:
    """The stream's moments cover snippets 0..n-1 exactly once, in order."""
    moments = [m for m in store.timeline(stream) if m.tier != GAP]
    assert moments[0].start == 0.0 and moments[-1].end == 2.0 * n
    assert all(a.end == b.start for a, b in zip(moments, moments[1:], strict=False))
    assert sum(m.count for m in moments) == n


def test_added_moments_are_read_back_and_adding_again_changes_nothing(opener: Opener) -> None:
    store = opener()
    records = fill(store, 12)
    assert store.count("cam") == store.count() == 12 and store.next_index("cam") == 12
    got = store.get("cam", 7)
    assert got is not None and (got.start, got.end) == (14.0, 16.0)
    assert got.evidence.transcript == records[7].evidence.transcript
    assert got.evidence.ocr[0].text == "SIGN0"
    assert store.keyframe("cam", 7) == JPEG and store.keyframe("cam", 99) is None
    assert [r.index for r in store.recent("cam", 3)] == [9, 10, 11]
    fill(store, 12)  # the same snippets again (a restarted file)
    assert store.count("cam") == 12 and store.next_index("other") == 0
    [row] = store.streams()
    assert row == {"stream": "cam", "records": 12, "start": 0.0, "end": 24.0, "snippets": 12}


def test_search_finds_words_within_the_stream_and_the_time_window(opener: Opener) -> None:
    store = opener()
    fill(store, 30)
    fill(store, 30, stream="lobby", seed=1)
    [best] = store.search("code X21", top_k=1)
    assert (best.start, best.end) == (42.0, 44.0)  # both streams said it
    only = store.search("code X21", stream="lobby", top_k=3)
    assert only and all(h.stream == "lobby" for h in only)
    assert only[0].start == 42.0
    # [start, end) of a moment is taken when it overlaps the window [start, end]
    inside = store.search("announcement", stream="cam", start=41.0, end=50.0, top_k=10)
    assert sorted(h.start for h in inside) == [40.0, 42.0, 44.0, 46.0, 48.0, 50.0]
    edge = store.search("announcement", stream="cam", start=44.0, end=44.0, top_k=10)
    assert [h.start for h in edge] == [44.0]  # [42, 44) is not taken, [44, 46) is
    assert store.search("announcement", stream="nowhere") == []
    with pytest.raises(QueryError):
        store.search("   ")
    with pytest.raises(QueryError):
        store.search("x", start=10.0, end=5.0)
    assert "X28" in store.ask("what about code X28?").text


def test_old_moments_are_consolidated_within_the_bound_and_stay_searchable(
    opener: Opener,
) -> None:
    store = opener()
    fill(store, 300)
    assert store.count("cam") == SETTINGS.max_records_per_stream
    tiles(store, "cam", 300)
    hit = store.search("code X77", stream="cam", top_k=1)[0]  # merged away long ago
    assert hit.start <= 154.0 < hit.end and hit.end - hit.start > 2.0
    summary = store.summary("cam")
    assert summary is not None and summary.snippets == 300


def test_what_is_stored_is_there_after_reopening(opener: Opener) -> None:
    store = opener()
    fill(store, 60)
    before = [m.to_json() for m in store.timeline("cam")]
    store.close()
    reader = opener(readonly=True)
    assert [m.to_json() for m in reader.timeline("cam")] == before
    assert reader.count("cam") == 40
    with pytest.raises(LivesenseError, match="read-only"):
        reader.add(synthetic(60, np.random.default_rng(0)))


def test_an_imported_stream_is_stored_as_it_is(opener: Opener) -> None:
    tiers = StreamTiers("cam", TierBudget.from_settings(SETTINGS))
    rng = np.random.default_rng(3)
    for i in range(100):
        tiers.admit(item(synthetic(i, rng)))
    items: list[Stored] = tiers.items()
    store = opener()
    store.import_stream("cam", items, tiers.summary)
    store.flush()
    assert [(m.start, m.end, m.tier) for m in store.timeline("cam")] == [
        (it.record.start, it.record.end, it.record.tier) for it in items
    ]
    assert store.next_index("cam") == 100 and store.count("cam") == len(items)
    summary = store.summary("cam")
    assert summary is not None and summary.snippets == 100
    with pytest.raises(LivesenseError, match="already stored"):
        store.import_stream("cam", items)


def test_gap_markers_show_on_the_timeline_and_never_in_search(opener: Opener) -> None:
    store = opener()
    fill(store, 10)
    store.mark_gap("cam", 20.0, 26.0, "the source dropped")
    store.mark_gap("cam", 20.0, 26.0, "the source dropped")  # again: nothing changes
    store.flush()
    assert [(g.start, g.end) for g in store.gaps("cam")] == [(20.0, 26.0)]
    gaps = [m for m in store.timeline("cam") if m.tier == GAP]
    assert [(g.start, g.end) for g in gaps] == [(20.0, 26.0)] and "dropped" in gaps[0].summary
    assert all(h.index >= 0 for h in store.search("source dropped", top_k=20))
    with pytest.raises(QueryError):
        store.mark_gap("cam", 5.0, 4.0, "backwards")
    for i in range(GAPS_KEPT + 3):
        store.mark_gap("busy", float(i), i + 0.5, f"jump {i}")
    kept = store.gaps("busy")
    assert len(kept) == GAPS_KEPT and kept[0].reason == "jump 3"

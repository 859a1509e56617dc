"""Vector search in Redis's own index (the query engine of Redis Stack) against real servers:
the same moments as the local index, stream and time filters, no duplicates after rewrites,
records stored before the index existed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from livesense.engines.text import shared_text_embedder
from livesense.errors import LivesenseError
from livesense.memory.redis_store import LOCAL_INDEX, QUERY_ENGINE, RedisStore
from livesense.records import Evidence, Hit, OcrLine, SnippetRecord
from tests.conftest import livesense
from tests.redis_server import RedisServer, redis_server
from tests.test_redis_store import FAST
from tests.test_tiers import SETTINGS, synthetic

SCENES = [
    "a red car parks next to the front gate",
    "a dog runs across the garden chasing a ball",
    "two people shake hands at the reception desk",
    "heavy rain falls on the empty parking lot",
    "a delivery van unloads boxes at the loading dock",
    "children play football on the school field",
]
STREAMS = ("cam-a", "cam.b")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("stack"), stack=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("plain"))


def clean(server: RedisServer) -> str:
    return server.emptied()


def scene_records() -> list[SnippetRecord]:
    """Two streams whose snippets show one of SCENES each (tokens: the scene's embedding and
    its sign's), in a different order per stream; a few say a code word aloud."""
    embedder = shared_text_embedder()
    scene_vecs = embedder.embed(SCENES)
    rng = np.random.default_rng(3)
    out = []
    for s, stream in enumerate(STREAMS):
        for i in range(90):
            scene = (i // 5 + 2 * s) % len(SCENES)
            tok = np.stack([scene_vecs[scene], scene_vecs[(scene + 1) % len(SCENES)]])
            tok = tok + 0.02 * rng.standard_normal(tok.shape).astype(np.float32)
            tok /= np.linalg.norm(tok, axis=1, keepdims=True)
            said = f"code word zephyr{i}" if i % 9 == 0 else ""
            sign = OcrLine(f"GATE {s}{i // 5}", (0, 0, 9, 9), 0.9, 2.0 * i)
            ev = Evidence(transcript=said, ocr=[sign])
            out.append(
                SnippetRecord(stream, i, 2.0 * i, 2.0 * i + 2, tok, ["visual", "text"], [0, 0], ev)
            )
    return out


def write(url: str, records: list[SnippetRecord]) -> None:
    with RedisStore(url, SETTINGS, FAST) as store:
        for r in records:
            store.add(r)
        store.flush()


def moments(hits: list[Hit]) -> list[tuple[str, float, float, float]]:
    return [(h.stream, h.start, h.end, round(h.score, 3)) for h in hits]


QUERIES = [
    "vehicle waiting by the entrance",  # dense only: no word in common
    "puppy playing in the yard",
    "zephyr45",  # lexical only
    "GATE 13",
    "rain on the car park",
]


def test_query_engine_finds_the_same_moments_as_the_local_index(
    stack: RedisServer, plain: RedisServer
) -> None:
    records = scene_records()
    write(clean(stack), records)
    write(clean(plain), records)
    engine = RedisStore(stack.url, SETTINGS, FAST, readonly=True, vector_index=True)
    local = RedisStore(stack.url, SETTINGS, FAST, readonly=True, vector_index=False)
    debian = RedisStore(plain.url, SETTINGS, FAST, readonly=True)
    resp2 = RedisStore(  # other replies
        stack.url + "?protocol=2", SETTINGS, FAST, readonly=True, vector_index=True
    )
    default = RedisStore(stack.url, SETTINGS, FAST, readonly=True)
    try:
        assert engine.vector_search == QUERY_ENGINE
        assert engine.health()["vector_search"] == QUERY_ENGINE == resp2.vector_search
        assert local.vector_search == LOCAL_INDEX and debian.vector_search == LOCAL_INDEX
        assert default.vector_search == LOCAL_INDEX  # auto: the index that meets exact search
        for st in (engine, local, debian, resp2):
            st.sync()
        assert engine.local_size == local.local_size == debian.local_size > 0
        filters: list[dict[str, object]] = [
            {},
            {"stream": "cam.b"},
            {"start": 40.0, "end": 80.0},
            {"stream": "cam-a", "start": 100.0},
        ]
        for q in QUERIES:
            for f in filters:
                stores = (engine, local, debian, resp2)
                found = [moments(st.search(q, top_k=5, **f)) for st in stores]  # type: ignore[arg-type]
                assert found[0] == found[1] == found[2] == found[3], (q, f)
                assert found[0], (q, f)
                stream, start, end = f.get("stream"), f.get("start"), f.get("end")
                for s, a, b, _ in found[0]:
                    assert stream is None or s == stream
                    assert start is None or b > float(start)  # type: ignore[arg-type]
                    assert end is None or a <= float(end)  # type: ignore[arg-type]
        best = engine.search("vehicle waiting by the entrance", top_k=3)
        assert all("GATE" in h.evidence.ocr[0].text for h in best)
        car = {i for i in range(90) if (i // 5) % len(SCENES) in (0, 5)}  # cam-a, car in view
        assert {int(h.start // 2) for h in best if h.stream == "cam-a"} <= car
        assert engine.search("zephyr45")[0].start == 90.0
        assert engine.search("x", stream="nowhere") == []
        assert engine.search("puppy", start=1e6) == []
    finally:
        for st in (engine, local, debian, resp2, default):
            st.close()


def index_docs(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    info = client.execute_command("FT.INFO", "ls:records")
    client.close()
    if isinstance(info, list):
        info = dict(zip(info[::2], info[1::2], strict=False))
    return int(info.get(b"num_docs", info.get("num_docs")))


def test_rewrites_do_not_duplicate_index_entries(stack: RedisServer) -> None:
    url = clean(stack)
    rng = np.random.default_rng(0)
    records = [synthetic(i, rng) for i in range(400)]  # merged and dropped as the tiers fill up
    write(url, records)
    write(url, records[:50] + records[390:])  # written again: a no-op
    with RedisStore(url, SETTINGS, FAST) as store:
        count = store.count()
        assert 0 < count <= SETTINGS.max_records_per_stream
        assert index_docs(url) == count  # the index follows each write at once
        hits = store.search("SIGN7", top_k=50)
        assert len({h.index for h in hits}) == len(hits)


def test_records_stored_before_the_index_get_their_vectors(stack: RedisServer) -> None:
    import redis

    url = clean(stack)
    write(url, scene_records())
    with RedisStore(url, SETTINGS, FAST, readonly=True) as store:
        before = [moments(store.search(q)) for q in QUERIES]
    client = redis.Redis.from_url(url)
    client.execute_command("FT.DROPINDEX", "ls:records")
    for key in client.scan_iter(match="ls:{*}:r:*"):
        client.hdel(key, "vec", "stream", "start", "end")  # as written by a Redis without it
    client.close()
    with RedisStore(url, SETTINGS, FAST, readonly=True, vector_index=True) as store:
        assert store.vector_search == QUERY_ENGINE
        assert index_docs(url) == store.count()
        assert [moments(store.search(q)) for q in QUERIES] == before


def test_a_fill_cut_short_is_finished_by_the_next_process(stack: RedisServer) -> None:
    import redis

    url = clean(stack)
    write(url, scene_records())
    client = redis.Redis.from_url(url)
    assert client.exists("ls:{index}:filled")  # the first process filled (nothing) and said so
    with RedisStore(url, SETTINGS, FAST, readonly=True) as store:
        before = [moments(store.search(q)) for q in QUERIES]
    # A process was filling old records when it died: some records lack their vectors yet.
    client.delete("ls:{index}:filled")
    keys = sorted(client.scan_iter(match="ls:{*}:r:*"))
    for key in keys[: len(keys) // 2]:
        client.hdel(key, "vec", "stream", "start", "end")
    with RedisStore(url, SETTINGS, FAST, readonly=True) as store:
        assert all(client.hget(key, "vec") for key in keys), "not filled"  # filled again
        assert index_docs(url) == store.count() == len(keys)
        assert [moments(store.search(q)) for q in QUERIES] == before
    assert client.exists("ls:{index}:filled")
    client.close()


def test_a_server_without_a_query_engine_is_told(plain: RedisServer) -> None:
    url = clean(plain)
    with pytest.raises(LivesenseError, match="no query engine"):
        RedisStore(url, SETTINGS, FAST, vector_index=True)
    with RedisStore(url, SETTINGS, FAST) as store:
        assert store.health()["vector_search"] == LOCAL_INDEX


def test_the_setting_reaches_the_cli(plain: RedisServer) -> None:
    url = clean(plain)
    env = {"LIVESENSE_REDIS__VECTOR_INDEX": "on"}
    r = livesense("search", "red car", "--redis", url, env=env)
    assert r.returncode != 0 and "no query engine" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = livesense("search", "red car", "--redis", url, "--json", env={})
    assert r.returncode == 0, r.stderr

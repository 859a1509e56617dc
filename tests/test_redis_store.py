"""RedisStore against a real redis-server (AOF on): resume after SIGKILL, Redis restarts,
cross-process watch, cluster-safe keys, bounded memory, same answers as the embedded store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livesense.config import RedisSettings
from livesense.memory.consolidate import Stored
from livesense.memory.redis_keys import RedisKeys
from livesense.memory.redis_store import RedisStore
from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from tests.conftest import livesense
from tests.redis_server import RedisServer, redis_server
from tests.test_tiers import SETTINGS, synthetic

FAST = RedisSettings(lease_ttl=1.0, retry_max=0.5)

# Writes snippets one by one and reports each index once Redis acknowledged it.
WRITER = """
import sys, numpy as np
from livesense.config import RedisSettings
from livesense.memory.consolidate import Stored
from livesense.memory.redis_store import RedisStore
from tests.test_tiers import SETTINGS, synthetic
store = RedisStore(sys.argv[1], SETTINGS, RedisSettings(lease_ttl=1.0), readonly=False)
rng = np.random.default_rng(0)
for i in range(int(sys.argv[2]), 100000):
    store.add(synthetic(i, rng), keyframe=bytes([255, 216]) + bytes(500))
    store.flush()
    print(i, flush=True)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def url(server: RedisServer) -> str:
    """A clean database for each test."""
    return server.emptied()


def child(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def tiles(store: RedisStore | MemoryStore, stream: str, n: int) -> None:
    """The stream's moments cover snippets 0..n-1 exactly once, in order."""
    moments = store.timeline(stream)
    assert moments[0].start == 0.0 and moments[-1].end == 2.0 * n
    assert all(a.end == b.start for a, b in zip(moments, moments[1:], strict=False))
    summary = store.summary(stream)
    assert summary is not None and summary.snippets == n  # no snippet admitted twice


def test_resume_after_sigkill_loses_and_doubles_nothing(url: str) -> None:
    proc = child(WRITER, url, "0")
    assert proc.stdout is not None
    acked = [int(proc.stdout.readline()) for _ in range(60)]
    os.kill(proc.pid, signal.SIGKILL)
    acked += [int(x) for x in proc.stdout.read().split()]
    proc.wait(10)
    with RedisStore(url, SETTINGS, FAST) as store:
        deadline = time.monotonic() + 10
        while not store.acquire("cam"):  # the dead writer's lease runs out
            assert time.monotonic() < deadline
            time.sleep(0.2)
        stored = store.next_index("cam")
        assert acked == list(range(len(acked))) and stored in (len(acked), len(acked) + 1)
        rng = np.random.default_rng(0)
        for i in range(120):  # the ingest restarts from the beginning of its source
            store.add(synthetic(i, rng), keyframe=bytes([255, 216]) + bytes(500))
        store.flush()
        tiles(store, "cam", 120)
        assert store.count("cam") == 40
        assert store.keyframe("cam", 119) is not None
        assert store.health()["lost"] == 0


def test_redis_restart_mid_stream_loses_nothing(server: RedisServer, url: str) -> None:
    rng = np.random.default_rng(0)
    records = [synthetic(i, rng) for i in range(150)]
    with RedisStore(url, SETTINGS, FAST) as store:
        for r in records[:50]:
            store.add(r)
        store.flush()
        server.kill()  # SIGKILL: no shutdown; AOF (fsync always) is all that remains
        writer = threading.Thread(target=lambda: [store.add(r) for r in records[50:]])
        writer.start()
        time.sleep(1.5)
        health = store.health()
        assert not health["connected"] and health["buffered"] > 0 and health["retries"] > 0
        server.start()
        writer.join(30)
        store.flush(30)
        assert store.health()["connected"] and store.health()["lost"] == 0
        tiles(store, "cam", 150)
    with RedisStore(url, SETTINGS, FAST, readonly=True) as reader:
        assert reader.count("cam") == 40
        hit = reader.search("X147", top_k=1)[0]
        assert hit.start <= 294.0 < hit.end


def test_a_second_writer_is_refused_and_a_lost_lease_fences(url: str) -> None:
    rng = np.random.default_rng(0)
    with RedisStore(url, SETTINGS, FAST) as a, RedisStore(url, SETTINGS, FAST) as b:
        a.add(synthetic(0, rng))
        a.flush()
        with pytest.raises(Exception, match="being ingested by"):
            b.add(synthetic(1, rng))
        import redis

        client = redis.Redis.from_url(url)
        client.set(RedisKeys().lease("cam"), b.token)  # b took over (a was too slow)
        client.close()
        b.acquire("cam")
        a.add(synthetic(1, rng))  # buffered; refused by Redis
        deadline = time.monotonic() + 5
        while a.owns("cam"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert a.health()["fenced"] == {"cam": b.token}
        with pytest.raises(Exception, match="now ingested by"):
            a.add(synthetic(2, rng))
        assert a.count("cam") == 1


def test_watch_pushes_moments_written_by_another_process(url: str) -> None:
    hub = WatchHub()
    with RedisStore(url, SETTINGS, FAST, readonly=True, follow=True, hub=hub) as reader:

        async def first_hit() -> tuple[str, float]:
            sub = hub.subscribe("X35", loop=asyncio.get_running_loop())
            proc = child(WRITER, url, "0")
            try:
                hit = await asyncio.wait_for(sub.queue.get(), 60)
            finally:
                proc.kill()
                proc.wait(10)
            return hit.stream, hit.start

        assert asyncio.run(first_hit()) == ("cam", 70.0)
        assert reader.local_size > 0


def test_keys_are_cluster_safe(url: str) -> None:
    import redis
    from redis.crc import key_slot

    rng = np.random.default_rng(0)
    with RedisStore(url, SETTINGS, FAST) as store:
        for stream in ("cam1", "lobby.east", "a-b_c"):
            for i in range(60):
                r = synthetic(i, rng)
                r.stream = stream
                store.add(r, keyframe=b"\xff\xd8jpeg")
        store.flush()
        store.search("announcement")  # writes the queried sets too
    client = redis.Redis.from_url(url)
    keys = [k.decode() for k in client.scan_iter(count=1000)]
    client.close()
    by_tag: dict[str, set[int]] = {}
    for key in keys:
        assert key.count("{") == 1 and key.count("}") == 1, key
        tag = key[key.index("{") + 1 : key.index("}")]
        by_tag.setdefault(tag, set()).add(key_slot(key.encode()))
    assert set(by_tag) >= {"cam1", "lobby.east", "a-b_c", "streams"}
    assert all(len(slots) == 1 for slots in by_tag.values())  # one slot per tag
    # every key of one write script is in its stream's slot
    with RedisStore(url, SETTINGS, FAST) as store:
        r = synthetic(500, rng)
        tiers = store._open_stream("cam1")
        plan = tiers.admit(Stored(0, r, 500, "x"))
        write = store._writer.encode("cam1", 1, 500, plan, b"\xff\xd8")
        assert len({key_slot(k.encode()) for k in write.keys}) == 1


def test_memory_per_stream_stays_bounded(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    rng = np.random.default_rng(0)
    sizes = []
    with RedisStore(url, SETTINGS, RedisSettings(changes_kept=200)) as store:
        for i in range(3000):
            store.add(synthetic(i, rng), keyframe=bytes([255, 216]) + bytes(2000))
            if i + 1 in (1000, 3000):
                store.flush()
                keys = list(client.scan_iter(match="ls:{cam}:*", count=1000))
                sizes.append(sum(client.memory_usage(k) or 0 for k in keys))
                assert client.xlen(RedisKeys().changes("cam")) < 400
        assert store.count("cam") == 40
    client.close()
    assert sizes[1] < 1.15 * sizes[0], sizes


def test_same_answers_as_the_embedded_store(url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    records = [synthetic(i, rng) for i in range(300)]
    with MemoryStore(tmp_path, SETTINGS) as local, RedisStore(url, SETTINGS, FAST) as shared:
        for r in records:
            local.add(r)
            shared.add(r)
        shared.flush()
        assert [m.to_json() for m in local.timeline("cam")] == [
            m.to_json() for m in shared.timeline("cam")
        ]
        for q in ("X21", "announcement number 280", "code X294"):
            a = [(h.start, h.end, round(h.score, 3)) for h in local.search(q) if h.score > 0.1]
            b = [(h.start, h.end, round(h.score, 3)) for h in shared.search(q) if h.score > 0.1]
            assert a == b and a, q
        scores = [sorted(round(h.score, 3) for h in st.search("SIGN3")) for st in (local, shared)]
        assert scores[0] == scores[1]  # (equal scores are ordered by each store's row ids)
        assert local.ask("what about X280?").text == shared.ask("what about X280?").text


def test_cli_reads_the_shared_memory(url: str) -> None:
    rng = np.random.default_rng(0)
    with RedisStore(url, SETTINGS, FAST) as store:
        for i in range(100):
            store.add(synthetic(i, rng))
    result = livesense("timeline", "--stream", "cam", "--redis", url, "--json")
    assert result.returncode == 0, result.stderr
    moments = json.loads(result.stdout)["moments"]
    assert moments[0]["start"] == 0.0 and moments[-1]["end"] == 200.0
    result = livesense("search", "X91", "--redis", url, "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hits"][0]["start"] == 182.0
    result = livesense("search", "x", "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 1 and "cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr


async def test_pipelined_reads_hand_each_item_its_own_replies(url: str) -> None:
    import redis.asyncio as aioredis

    from livesense.memory.redis.pipelined import pipelined, read, read_all

    client = aioredis.Redis.from_url(url)
    try:
        await client.mset({f"k{i}": str(i) for i in range(7)})
        # one command for even items, two for odd ones; three items to a round trip
        rounds = [
            part
            async for part in pipelined(
                client, range(7), lambda p, i: p.get(f"k{i}") if i % 2 == 0 else
                (p.get(f"k{i}"), p.strlen(f"k{i}")), chunk=3,
                also=lambda p: p.set("rode-along", 1),
            )
        ]  # fmt: skip
        assert [len(part) for part in rounds] == [3, 3, 1]
        pairs = [pair for part in rounds for pair in part]
        assert pairs[:3] == [(0, [b"0"]), (1, [b"1", 1]), (2, [b"2"])]
        assert pairs[6] == (6, [b"6"])
        assert await client.get("rode-along") == b"1"
        assert await read_all(client, [], lambda p, i: p.get(i)) == []
        assert await read(client, lambda p: (p.get("k3"), p.exists("k3", "k4"))) == [b"3", 2]
    finally:
        await client.aclose()


def test_record_meta_keeps_the_stored_layout() -> None:
    from livesense.memory.record_codec import META, RecordMeta, pack_record, unpack_record

    r = synthetic(7, np.random.default_rng(1))
    fields = pack_record(Stored(7, r, 9, "lex", salience=0.123456))
    raw = json.loads(fields[META])
    assert set(raw) == {"l", "s", "e", "w", "c", "sal", "mods", "times", "cd"}
    assert (raw["l"], raw["s"], raw["e"], raw["sal"]) == (9, r.start, r.end, 0.1235)
    meta = RecordMeta.from_json(fields[META])
    assert meta.to_json() == fields[META]
    assert (meta.last, meta.modalities, meta.clip_dim) == (9, r.token_modalities, None)
    back = unpack_record("cam", 7, fields)
    assert (back.last_index, back.record.end, back.salience) == (9, r.end, 0.1235)

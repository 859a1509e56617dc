"""The security review's points, each against the real app or a real `livesense serve` (and a
real Redis where it applies): tenant-independent scores, secrets kept out of what is shown,
revocation of open sockets and sessions, slow requests, weak tokens, private files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from livesense.api.app import Services, create_app
from livesense.api.tokens import SqliteTokenStore
from livesense.config import load_settings
from livesense.engines.text import shared_text_embedder
from livesense.memory.index import IndexEntry, VectorIndex
from livesense.memory.redis_store import RedisStore
from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from livesense.records import Evidence, SnippetRecord, Word
from tests.conftest import livesense
from tests.redis_server import RedisServer, free_port, redis_server
from tests.test_redis_store import FAST
from tests.test_tiers import SETTINGS

ADMIN = "admin-secret-1"
ALPHA = [
    "Passengers for Rome go to platform nine.",
    "The platform is crowded this morning.",
    "Tickets are sold at the counter.",
]
BETA = [f"Fresh kumquat juice, kumquat number {i}." for i in range(12)]


def record(stream: str, i: int, text: str) -> SnippetRecord:
    tokens = shared_text_embedder().embed([text])
    words = [Word(w, 2.0 * i, 2.0 * i + 1.0) for w in text.split()]
    return SnippetRecord(
        stream, i, 2.0 * i, 2.0 * i + 2.0, tokens, ["speech"], [2.0 * i + 1.0],
        Evidence(transcript=text, words=words),
    )  # fmt: skip


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "livesense.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def wait_healthy(port: int, proc: subprocess.Popen[str]) -> str:
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate(timeout=10)
    return stderr


# -- 1. scores seen by a scoped token depend only on the streams it may read ------------------


def scoped_score(client: TestClient | httpx.Client, token: str, q: str) -> list[float]:
    r = client.get("/v1/search", params={"q": q, "top_k": 3}, headers=bearer(token))
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits and {h["stream"] for h in hits} == {"alpha"}
    return [h["score"] for h in hits]


def test_scoped_scores_do_not_depend_on_other_streams(tmp_path: Path) -> None:
    settings = load_settings(memory=tmp_path)
    hub = WatchHub()
    store = MemoryStore(tmp_path, settings.store, hub=hub)
    tokens = SqliteTokenStore(tmp_path)
    read, _ = tokens.create("read", "alpha")
    for i, text in enumerate(ALPHA):
        store.add(record("alpha", i, text))
    app = create_app(Services(store=store, manager=None, hub=hub, token=ADMIN, tokens=tokens))
    try:
        with TestClient(app) as client:
            before = scoped_score(client, read, "platform kumquat")
            control = scoped_score(client, read, "platform zyzzyva")
            for i, text in enumerate(BETA):
                store.add(record("beta", i, text))
            admin = client.get("/v1/search", params={"q": "kumquat"}, headers=bearer(ADMIN))
            assert admin.json()["hits"][0]["stream"] == "beta"  # the admin sees beta
            assert scoped_score(client, read, "platform kumquat") == before
            assert scoped_score(client, read, "platform zyzzyva") == control
    finally:
        tokens.close()
        store.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("stack"), stack=True)


@pytest.mark.parametrize("engine", [True, False], ids=["query-engine", "local-index"])
def test_scoped_scores_do_not_depend_on_other_streams_through_redis(
    stack: RedisServer, engine: bool, tmp_path: Path
) -> None:
    import redis

    redis.Redis.from_url(stack.url).flushall()
    with RedisStore(stack.url, SETTINGS, FAST) as writer:
        for i, text in enumerate(ALPHA):
            writer.add(record("alpha", i, text))
        writer.flush()
        read = livesense("token", "create", "--stream", "alpha", "--redis", stack.url)
        assert read.returncode == 0, read.stderr
        token = read.stdout.strip()
        port = free_port()
        env = {"LIVESENSE_REDIS__VECTOR_INDEX": "on" if engine else "off"}
        proc = serve("--redis", stack.url, "--port", str(port), "--token", ADMIN,
                     "--memory", str(tmp_path), env=env)  # fmt: skip
        try:
            base = wait_healthy(port, proc)
            with httpx.Client(base_url=base, timeout=30) as client:
                before = scoped_score(client, token, "platform kumquat")
                for i, text in enumerate(BETA):
                    writer.add(record("beta", i, text))
                writer.flush()
                deadline = time.time() + 30
                while time.time() < deadline:  # the server follows what was written
                    r = client.get("/v1/search", params={"q": "kumquat"}, headers=bearer(ADMIN))
                    if r.json()["hits"] and r.json()["hits"][0]["stream"] == "beta":
                        break
                    time.sleep(0.2)
                else:
                    raise AssertionError("the server never saw stream beta")
                assert scoped_score(client, token, "platform kumquat") == before
        finally:
            stop(proc)


def test_a_stream_search_finds_the_same_records_whatever_other_streams_hold() -> None:
    rng = np.random.default_rng(5)
    own = rng.standard_normal((3000, 384)).astype(np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    q = own[7] + 0.5 * own[8]
    alone, crowded = VectorIndex(), VectorIndex()
    mine = [IndexEntry(rid, v[None], "alpha", float(rid), rid + 1.0) for rid, v in enumerate(own)]
    alone.add_many(mine)
    crowded.add_many(mine)
    others = rng.standard_normal((12000, 384)).astype(np.float32)  # past the projection's fit
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    crowded.add_many([IndexEntry(10000 + k, v[None], "beta", 0, 1) for k, v in enumerate(others)])
    crowded.maybe_fit()
    assert crowded.projected
    assert crowded.search(q, top_k=20, stream="alpha") == alone.search(q, top_k=20, stream="alpha")
    assert crowded.count("alpha") == 3000 and crowded.count() == 15000

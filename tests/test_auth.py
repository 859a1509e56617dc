"""Tokens and scopes: admin token, scoped tokens stored as hashes, tenant isolation, 429s."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from livesense.api.app import Services, create_app
from livesense.api.tokens import RedisTokenStore, SqliteTokenStore, token_hash
from livesense.config import SecuritySettings, load_settings
from livesense.engines.text import shared_text_embedder
from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from livesense.pipeline.manager import StreamManager
from livesense.pipeline.perception import Perception
from livesense.records import Evidence, SnippetRecord, Word
from tests.conftest import livesense

ADMIN = "admin-secret-1"
TOKEN_RE = re.compile(r"ls_[0-9a-f]{8}_[A-Za-z0-9_-]{20,64}")

CAM1 = ["The next train to Rome leaves from platform nine.", "The cafe is open until eight."]
CAM2 = ["The bus to the airport departs every fifteen minutes.", "Room A17 is on the left."]


def record(stream: str, i: int, text: str) -> SnippetRecord:
    tokens = shared_text_embedder().embed([text])
    words = [Word(w, 2.0 * i, 2.0 * i + 1.0) for w in text.split()]
    return SnippetRecord(
        stream=stream,
        index=i,
        start=2.0 * i,
        end=2.0 * i + 2.0,
        tokens=tokens,
        token_modalities=["speech"],
        token_times=[2.0 * i + 1.0],
        evidence=Evidence(transcript=text, words=words),
    )


def fill(store: MemoryStore) -> None:
    for i, text in enumerate(CAM1):
        store.add(record("cam1", i, text), b"\xff\xd8\xff\xd9")
    for i, text in enumerate(CAM2):
        store.add(record("cam2", i, text), b"\xff\xd8\xff\xd9")


class Api:
    """The real app over a real memory of two streams, with scoped tokens issued."""

    def __init__(self, root: Path, security: SecuritySettings | None = None) -> None:
        settings = load_settings(memory=root)
        self.hub = WatchHub()
        self.store = MemoryStore(root, settings.store, hub=self.hub)
        fill(self.store)
        self.tokens = SqliteTokenStore(root)
        self.read1, _ = self.tokens.create("read", "cam1")
        self.publish1, _ = self.tokens.create("publish", "cam1")
        self.admin1, _ = self.tokens.create("admin", "cam1")
        manager = StreamManager(settings, self.store, Perception(settings.perception))
        services = Services(
            store=self.store,
            manager=manager,
            hub=self.hub,
            token=ADMIN,
            tokens=self.tokens,
            security=security,
        )
        self.client = TestClient(create_app(services))

    def get(self, url: str, token: str | None, **params: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(url, params=params, headers=headers)  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()
        self.tokens.close()
        self.store.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = Api(tmp_path_factory.mktemp("auth") / "memory")
    yield a
    a.close()


def streams_of(hits: list[dict[str, object]]) -> set[object]:
    return {h["stream"] for h in hits}


def test_tokens_are_kept_only_as_hashes_and_can_be_revoked(tmp_path: Path) -> None:
    r = livesense(
        "token", "create", "--stream", "cam1", "--scope", "read", "--memory", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert TOKEN_RE.fullmatch(token)
    raw = (tmp_path / "tokens.db").read_bytes()
    assert token.encode() not in raw and token_hash(token).encode() in raw
    assert oct((tmp_path / "tokens.db").stat().st_mode & 0o777) == "0o600"
    store = SqliteTokenStore(tmp_path)
    info = store.lookup(token)
    assert info is not None and info.stream == "cam1" and info.scope.value == "read"
    r = livesense("token", "revoke", info.id, "--memory", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert store.lookup(token) is None  # the running server sees the revocation at once
    listed = livesense("token", "list", "--memory", str(tmp_path)).stdout
    assert info.id in listed and "revoked" in listed and token not in listed
    bad = livesense("token", "create", "--scope", "read", "--memory", str(tmp_path))
    assert bad.returncode == 1 and "needs a stream" in bad.stderr
    store.close()


def test_a_read_token_reads_its_stream_and_nothing_else(api: Api) -> None:
    t = api.read1
    hits = api.get("/v1/search", t, q="bus to the airport", top_k=10).json()["hits"]
    assert streams_of(hits) <= {"cam1"}  # cam2 matches best, yet never shows
    admin_hits = api.get("/v1/search", ADMIN, q="bus to the airport", top_k=10).json()["hits"]
    assert "cam2" in streams_of(admin_hits)
    assert api.get("/v1/search", t, q="bus", stream="cam2").status_code == 403
    assert api.get("/v1/search", t, q="train", stream="cam1").status_code == 200
    ask = api.client.post(
        "/v1/ask", json={"question": "when does the bus leave?"}, headers=bearer(t)
    ).json()
    assert streams_of(ask["hits"]) <= {"cam1"} and "airport" not in ask["answer"]
    assert api.client.post(
        "/v1/ask", json={"question": "bus?", "stream": "cam2"}, headers=bearer(t)
    ).status_code == 403
    listed = api.get("/v1/streams", t).json()["streams"]
    assert [s["stream"] for s in listed] == ["cam1"]
    assert {s["stream"] for s in api.get("/v1/streams", ADMIN).json()["streams"]} == {
        "cam1",
        "cam2",
    }
    assert api.get("/v1/streams/cam2/timeline", t).status_code == 403
    assert api.get("/v1/streams/cam1/timeline", t).status_code == 200
    assert api.get("/v1/keyframes/cam2/0.jpg", t).status_code == 403
    assert api.get("/v1/keyframes/cam1/0.jpg", t).status_code == 200
    assert api.get("/metrics", t).status_code == 403
    assert api.get("/metrics", ADMIN).status_code == 200
    assert api.get("/metrics", None).status_code == 401
    health = api.get("/healthz", None).json()
    assert health["status"] == "ok" and "streams" not in health  # no stream names unauthenticated


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_publish_and_admin_scopes(api: Api) -> None:
    sdp = {"Content-Type": "text/plain"}
    # publish to cam1: allowed through auth (then refused for the wrong media type)
    r = api.client.post("/whip/cam1", content="v=0", headers={**bearer(api.publish1), **sdp})
    assert r.status_code == 415
    r = api.client.post("/whip/cam2", content="v=0", headers={**bearer(api.publish1), **sdp})
    assert r.status_code == 403
    r = api.client.post("/whip/cam1", content="v=0", headers={**bearer(api.read1), **sdp})
    assert r.status_code == 403  # reading is not publishing
    assert api.get("/v1/search", api.publish1, q="train").status_code == 403
    # a stream's admin reads and publishes it, stops it, and nothing else
    assert api.get("/v1/search", api.admin1, q="train").status_code == 200
    assert api.client.delete("/v1/streams/cam2", headers=bearer(api.admin1)).status_code == 403
    assert api.client.delete("/v1/streams/cam1", headers=bearer(api.admin1)).status_code == 404
    r = api.client.post("/v1/streams", json={"url": "x.mp4"}, headers=bearer(api.admin1))
    assert r.status_code == 403  # opening URLs on the server: the admin token only
    assert api.get("/v1/search", "ls_00000000_" + "x" * 43, q="train").status_code == 401


def test_watch_is_scoped(api: Api) -> None:
    url = f"/v1/watch?q=ferry+to+the+island&token={api.read1}"
    with pytest.raises(WebSocketDenialResponse) as refused, api.client.websocket_connect(
        url + "&stream=cam2"
    ) as ws:
        ws.receive_json()
    assert refused.value.status_code == 403 and refused.value.json()["error"].endswith(".")
    with api.client.websocket_connect(url) as ws:
        assert ws.receive_json()["watching"]["stream"] == "cam1"
        api.store.add(record("cam2", 10, "The ferry to the island leaves at noon."))
        api.store.add(record("cam1", 10, "The ferry to the island is boarding now."))
        hit = ws.receive_json()["hit"]
    assert hit["stream"] == "cam1"


def test_queries_are_rate_limited_per_token(tmp_path: Path) -> None:
    a = Api(tmp_path / "memory", SecuritySettings(rate_per_minute=60, rate_burst=3))
    try:
        codes = [a.get("/v1/search", a.read1, q="train").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = a.get("/v1/search", a.read1, q="train")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "per minute" in r.json()["error"] or "a minute" in r.json()["error"]
        assert a.get("/v1/search", a.admin1, q="train").status_code == 200  # its own bucket
        assert a.get("/v1/streams", a.read1).status_code == 200  # listings are not limited
    finally:
        a.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def serve(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "livesense.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return stderr


def test_without_a_token_the_service_binds_to_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    proc = serve("--memory", str(tmp_path / "m"), "--host", "0.0.0.0", "--port", str(port))
    try:
        wait_healthy(port, proc)
        addr = own_address()
        if addr is not None:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{addr}:{port}/healthz", timeout=2)
    finally:
        stderr = stop(proc)
    assert "127.0.0.1 only" in stderr


def test_admin_token_from_a_file_guards_the_service(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(ADMIN + "\n")
    port = free_port()
    proc = serve("--memory", str(tmp_path / "m"), "--port", str(port),
                 "--token-file", str(tmp_path / "token"))
    try:
        wait_healthy(port, proc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v1/streams").status_code == 401
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/metrics", headers=bearer(ADMIN)).status_code == 200
        r = livesense("token", "create", "--stream", "cam9", "--memory", str(tmp_path / "m"))
        scoped = r.stdout.strip()
        assert httpx.get(f"{base}/v1/streams", headers=bearer(scoped)).status_code == 200
        r = httpx.get(f"{base}/v1/search?q=x&stream=cam1", headers=bearer(scoped))
        assert r.status_code == 403
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_tokens_in_redis(redis_url: str) -> None:
    pytest.importorskip("redis")
    import redis

    r = livesense("token", "create", "--stream", "lobby", "--scope", "publish", "--redis",
                  redis_url)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    store = RedisTokenStore(redis_url)
    info = store.lookup(token)
    assert info is not None and info.scope.value == "publish" and info.stream == "lobby"
    keys = redis.Redis.from_url(redis_url).keys("*")
    assert keys and all(b"{tokens}" in k for k in keys)  # one hash slot: cluster-safe
    dump = b"".join(
        str(redis.Redis.from_url(redis_url).hgetall(k)).encode() for k in keys
        if k.endswith(token_hash(token).encode())
    )
    assert token.encode() not in dump
    assert store.revoke(token).revoked is not None
    assert store.lookup(token) is None
    store.close()


def test_hashes_of_equal_length_tokens_do_not_collide() -> None:
    digests = {token_hash(f"ls_{i:08x}_" + "a" * 43) for i in range(1000)}
    assert len(digests) == 1000
    assert np.unique([d[:8] for d in digests]).size > 990

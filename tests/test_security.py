"""The security review's points, each against the real app or a real `livesense serve` (and a
real Redis where it applies): tenant-independent scores, secrets kept out of what is shown,
revocation of open sockets and sessions, slow requests, weak tokens, private files."""

from __future__ import annotations

import json
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
from livesense.api.tokens import RedisTokenStore, SqliteTokenStore
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
    # The floor (store.min_score) would hide the weak control hits whose scores are compared.
    store = MemoryStore(tmp_path, settings.store.model_copy(update={"min_score": 0.0}), hub=hub)
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
    others = rng.standard_normal((16000, 384)).astype(np.float32)  # past the lists' fit
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    crowded.add_many([IndexEntry(10000 + k, v[None], "beta", 0, 1) for k, v in enumerate(others)])
    crowded.maybe_fit(wait=True)
    assert crowded.lists > 1
    assert crowded.search(q, top_k=20, stream="alpha") == alone.search(q, top_k=20, stream="alpha")
    assert crowded.count("alpha") == 3000 and crowded.count() == 19000


# -- a real `livesense serve` with small limits, for points 3 and 5 to 7 ----------------------

LIGHT = {  # perception kept light: WHIP sessions need models loaded, not all of them
    "LIVESENSE_PERCEPTION__ASR": "false",
    "LIVESENSE_PERCEPTION__EVENTS": "false",
    "LIVESENSE_PERCEPTION__OCR": "false",
    "LIVESENSE_PERCEPTION__FACES": "false",
}
LIMITS = {
    "LIVESENSE_SECURITY__REVOCATION_SECONDS": "2",
    "LIVESENSE_SECURITY__HEADER_TIMEOUT": "2",
    "LIVESENSE_SECURITY__BODY_TIMEOUT": "1",
    "LIVESENSE_SECURITY__MAX_CONNECTIONS_PER_CLIENT": "6",
}


def issue_token(memory: Path, scope: str, stream: str) -> tuple[str, str]:
    """(token, id) of a new scoped token, issued by the CLI as an operator does."""
    r = livesense("token", "create", "--stream", stream, "--scope", scope, "--memory", str(memory))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    return token, token.split("_")[1]


class Live:
    """`livesense serve` over a memory holding stream alpha, with scoped tokens in tokens.db."""

    def __init__(self, memory: Path, env: dict[str, str]) -> None:
        self.memory = memory
        settings = load_settings(memory=memory)
        with MemoryStore(memory, settings.store) as store:
            for i, text in enumerate(ALPHA):
                store.add(record("alpha", i, text), b"\xff\xd8\xff\xd9")
        (memory.parent / "admin-token").write_text(ADMIN + "\n")
        self.port = free_port()
        self.proc = serve("--memory", str(memory), "--port", str(self.port),
                          "--token-file", str(memory.parent / "admin-token"), env=env)  # fmt: skip
        self.url = wait_healthy(self.port, self.proc)
        self.ws = self.url.replace("http://", "ws://")

    def token(self, scope: str, stream: str) -> tuple[str, str]:
        return issue_token(self.memory, scope, stream)

    def revoke(self, tid: str) -> float:
        """Revoke in tokens.db from this process (not the server's); when it was stored."""
        store = SqliteTokenStore(self.memory)
        try:
            assert store.revoke(tid).revoked is not None
        finally:
            store.close()
        return time.monotonic()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = Live(tmp_path_factory.mktemp("live") / "memory", {**LIGHT, **LIMITS})
    yield server
    stop(server.proc)


def closed_within(ws: object, seconds: float) -> tuple[int | None, float]:
    """(close code, seconds waited) once the server closes the socket; hits are read past."""
    from websockets.exceptions import ConnectionClosed

    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            ws.recv(timeout=seconds)  # type: ignore[attr-defined]
    except ConnectionClosed as e:
        return (e.rcvd.code if e.rcvd else None), time.monotonic() - t0
    except TimeoutError:
        pass
    return None, time.monotonic() - t0


def test_revocation_ends_an_open_watch_socket(live: Live) -> None:
    from websockets.sync.client import connect

    token, tid = live.token("read", "alpha")
    with connect(f"{live.ws}/v1/watch?q=train", additional_headers=bearer(token)) as ws:
        assert "watching" in ws.recv(timeout=10)
        revoked_at = live.revoke(tid)
        code, _ = closed_within(ws, 2 + 3)
        waited = time.monotonic() - revoked_at
    print(f"revocation closed a watch socket {waited:.2f} s after the revoke")
    assert code == 1008 and waited <= 2 + 1.5, (code, waited)
    r = httpx.get(f"{live.url}/v1/search", params={"q": "train"}, headers=bearer(token))
    assert r.status_code == 401


async def _publish(url: str, token: str, stream: str) -> tuple[object, httpx.Response]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        sdp = {**bearer(token), "Content-Type": "application/sdp"}
        r = await client.post(f"/whip/{stream}", content=pc.localDescription.sdp, headers=sdp)
    if r.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
    return pc, r


def test_revocation_ends_an_open_whip_session(live: Live) -> None:
    pytest.importorskip("aiortc")
    import asyncio

    token, tid = live.token("publish", "cam")

    def publisher() -> dict[str, object] | None:
        r = httpx.get(f"{live.url}/v1/streams/cam/timeline", headers=bearer(ADMIN))
        return r.json()["publisher"] if r.status_code == 200 else None

    async def scenario() -> float:
        pc, r = await _publish(live.url, token, "cam")
        try:
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(publisher) is None:
                assert time.monotonic() < deadline, "the session never showed"
                await asyncio.sleep(0.2)
            revoked_at = await asyncio.to_thread(live.revoke, tid)
            while await asyncio.to_thread(publisher) is not None:
                if time.monotonic() - revoked_at > 10:
                    break
                await asyncio.sleep(0.2)
            return time.monotonic() - revoked_at
        finally:
            await pc.close()  # type: ignore[attr-defined]

    waited = asyncio.run(scenario())
    print(f"revocation ended a WHIP session {waited:.2f} s after the revoke")
    assert waited <= 2 + 1.5, waited


def test_revocation_reaches_every_process_through_redis(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    gen = redis_server(tmp_path / "redis")
    server = next(gen)
    try:
        r = livesense("token", "create", "--stream", "alpha", "--redis", server.url)
        assert r.returncode == 0, r.stderr
        token = r.stdout.strip()
        procs, ports = [], [free_port(), free_port()]
        for port in ports:  # two API processes sharing Redis
            procs.append(serve("--redis", server.url, "--port", str(port), "--token", ADMIN,
                               "--memory", str(tmp_path / "m"), env=LIMITS))  # fmt: skip
        try:
            pairs = zip(ports, procs, strict=True)
            urls = [wait_healthy(p, pr).replace("http", "ws") for p, pr in pairs]
            sockets = [connect(f"{u}/v1/watch?q=train&token={token}", legacy=True) for u in urls]
            for ws in sockets:
                assert "watching" in ws.recv(timeout=10)
            tokens = RedisTokenStore(server.url)
            assert tokens.revoke(token).revoked is not None
            revoked_at = time.monotonic()
            tokens.close()
            for ws in sockets:
                code, _ = closed_within(ws, 5)
                assert code == 1008
            waited = time.monotonic() - revoked_at
            print(f"revocation closed both processes' sockets {waited:.2f} s after the revoke")
            assert waited <= 2 + 1.5
        finally:
            for proc in procs:
                stop(proc)
    finally:
        next(gen, None)


def raw(port: int, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send bytes on a fresh socket; (everything the server sent until it closed, seconds)."""
    import socket

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            pass
    return got, time.monotonic() - t0


def test_slow_headers_and_stalled_bodies_are_timed_out(live: Live) -> None:
    got, took = raw(live.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", 10)
    assert got.startswith(b"HTTP/1.1 408") and took < 2 + 2, (got, took)
    assert b'"error"' in got
    head = (f"POST /v1/ask HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode()  # fmt: skip
    got, took = raw(live.port, head, 10)
    assert got.startswith(b"HTTP/1.1 408") and took < 1 + 2, (got, took)
    assert b"stopped arriving" in got


def test_connections_per_client_are_bounded(live: Live) -> None:
    import socket

    held = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(6)]
    try:
        time.sleep(0.2)
        got, took = raw(live.port, b"", 5)  # the seventh
        assert got.startswith(b"HTTP/1.1 429") and b"Retry-After" in got and took < 2, got
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert httpx.get(f"{live.url}/healthz").status_code == 200


def test_watch_refusals_are_http_answers_with_a_sentence(live: Live) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    token, _ = live.token("read", "alpha")
    cases = [
        ("/v1/watch?q=train", {"Authorization": f"Basic {token}"}, 401),
        ("/v1/watch?q=train", {}, 401),
        ("/v1/watch?q=train&stream=beta", bearer(token), 403),
        ("/v1/watch?q=", bearer(token), 400),
    ]
    for path, headers, status in cases:
        with pytest.raises(InvalidStatus) as refused:
            connect(live.ws + path, additional_headers=headers).close()
        response = refused.value.response
        assert response.status_code == status, (path, response.status_code)
        assert json.loads(response.body)["error"].endswith(".")
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    with connect(f"{live.ws}/v1/watch?q=train", additional_headers=bearer(token)) as ws:
        assert "watching" in ws.recv(timeout=10)


def test_docs_and_page_are_public_and_data_is_not(live: Live) -> None:
    # What the README promises: the page, /docs and the schema hold no data and need no token;
    # every data endpoint does.
    for path in ("/", "/docs", "/openapi.json", "/healthz"):
        assert httpx.get(live.url + path).status_code == 200, path
    for path in ("/v1/streams", "/v1/search?q=train", "/metrics", "/v1/streams/alpha/timeline",
                 "/v1/keyframes/alpha/0.jpg"):  # fmt: skip
        assert httpx.get(live.url + path).status_code == 401, path


def test_memory_files_are_private(live: Live) -> None:
    assert (live.memory / "memory.db").stat().st_mode & 0o777 == 0o600
    assert (live.memory / "keyframes").stat().st_mode & 0o777 == 0o700
    assert (live.memory / "tokens.db").stat().st_mode & 0o777 == 0o600


# -- 6. weak admin tokens, guessing ----------------------------------------------------------


def test_weak_admin_tokens_are_refused(tmp_path: Path) -> None:
    for given in (["--token", "a"], ["--token", "1234567"]):
        r = livesense("serve", "--memory", str(tmp_path / "m"), "--port", str(free_port()),
                      *given, timeout=120)  # fmt: skip
        assert r.returncode == 1 and "at least 8 characters" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = livesense("serve", "--memory", str(tmp_path / "m"), "--port", str(free_port()),
                  timeout=120, env={"LIVESENSE_SERVER__TOKEN": "short"})  # fmt: skip
    assert r.returncode == 1 and "at least 8 characters" in r.stderr
    helped = livesense("serve", "--help").stdout
    assert "--token-file" in helped and "LIVESENSE_SERVER__TOKEN" in helped


def test_wrong_tokens_are_rate_limited(tmp_path: Path) -> None:
    env = {"LIVESENSE_SECURITY__AUTH_FAILURES_PER_MINUTE": "30",
           "LIVESENSE_SECURITY__AUTH_FAILURE_BURST": "5"}  # fmt: skip
    port = free_port()
    proc = serve("--memory", str(tmp_path / "m"), "--port", str(port), "--token", ADMIN, env=env)
    try:
        url = wait_healthy(port, proc)
        t0 = time.monotonic()
        codes = [
            httpx.get(f"{url}/v1/streams", headers=bearer(f"guess-{i}")).status_code
            for i in range(30)
        ]
        took = time.monotonic() - t0
        refills = int(took / 2.0)  # one more wrong try every 2 s
        assert codes[:5] == [401] * 5 and codes.count(401) <= 5 + refills, codes
        assert codes[-1] == 429 and set(codes) == {401, 429}, codes
        r = httpx.get(f"{url}/v1/streams", headers=bearer("guess-again"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"].endswith(".")
        time.sleep(2.1)  # 30 a minute: one more try every 2 s
        assert httpx.get(f"{url}/v1/streams", headers=bearer(ADMIN)).status_code == 200
    finally:
        stop(proc)


# -- 2. credentials in source URLs never leave the process -------------------------------------

SECRETS = (b"S3cretPW", b"camuser", b"T0pSecret")


@pytest.fixture(scope="module")
def media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An HTTP server of a short clip (it ignores the credentials a URL gives)."""
    import functools
    import http.server
    import threading

    from tests.media import make_clip

    folder = tmp_path_factory.mktemp("media")
    make_clip(folder / "clip.mp4", 4.0, text="GATE 7")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()


def secret_url(port: int) -> str:
    return f"http://camuser:S3cretPW@127.0.0.1:{port}/clip.mp4?token=T0pSecret&x=1"


def no_secrets(blob: bytes | str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for s in SECRETS:
        assert s not in data, (where, s, data[:600])


def wait_state(get: object, stream: str, states: tuple[str, ...], seconds: float = 120) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        listed = get("/v1/streams").json()["streams"]  # type: ignore[operator]
        ingest = next((s["ingest"] for s in listed if s["stream"] == stream), None)
        if ingest and ingest["state"] in states:
            return dict(ingest)
        time.sleep(0.3)
    raise AssertionError(f"stream {stream} never reached {states}")


def test_source_credentials_are_never_shown(tmp_path: Path, media_server: int) -> None:
    memory = tmp_path / "memory"
    port = free_port()
    proc = serve("--memory", str(memory), "--port", str(port), "--token", ADMIN, env=LIGHT)
    stderr = ""
    try:
        url = wait_healthy(port, proc)
        admin = httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=60)
        r = admin.post("/v1/streams", json={"url": secret_url(media_server), "stream": "cam"})
        assert r.status_code == 201, r.text
        no_secrets(r.content, "POST answer")
        assert r.json()["url"] == f"http://***@127.0.0.1:{media_server}/clip.mp4?token=***&x=1"
        wait_state(admin.get, "cam", ("done",))
        refused = admin.post("/v1/streams", json={"url": f"rtsp://camuser:S3cretPW@127.0.0.1:"
                                                         f"{free_port()}/live", "stream": "dead"})
        assert refused.status_code >= 400
        no_secrets(refused.content, "refusal")
        read, _ = issue_token(memory, "read", "cam")
        publish, _ = issue_token(memory, "publish", "cam")
        for token in (ADMIN, read, publish):
            no_secrets(httpx.get(f"{url}/v1/streams", headers=bearer(token)).content, "list")
        timeline = httpx.get(f"{url}/v1/streams/cam/timeline", headers=bearer(read))
        assert timeline.status_code == 200 and timeline.json()["moments"]
        no_secrets(timeline.content, "timeline")
        no_secrets(admin.get("/metrics").content, "metrics")
        no_secrets(httpx.get(f"{url}/").content, "page")
        admin.close()
    finally:
        stderr = stop(proc)
    no_secrets(stderr, "logs")
    no_secrets((memory / "memory.db").read_bytes(), "memory")


def test_source_credentials_travel_through_redis_sealed(tmp_path: Path, media_server: int) -> None:
    import redis

    gen = redis_server(tmp_path / "redis")
    server = next(gen)
    procs: list[subprocess.Popen[str]] = []
    try:
        port = free_port()
        args = ("--redis", server.url, "--port", str(port), "--token", ADMIN,
                "--memory", str(tmp_path / "m"))  # fmt: skip
        keyless = serve(*args, env=LIGHT)
        try:
            url = wait_healthy(port, keyless)
            r = httpx.post(f"{url}/v1/streams", headers=bearer(ADMIN), timeout=30,
                           json={"url": secret_url(media_server), "stream": "cam"})  # fmt: skip
            assert r.status_code == 400 and "source_key" in r.json()["error"], r.text
            no_secrets(r.content, "refusal")
        finally:
            stop(keyless)
        keyed = {**LIGHT, "LIVESENSE_SECURITY__SOURCE_KEY": "a shared secret of the fleet"}
        procs.append(serve(*args, env=keyed))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "livesense.cli", "worker", "--redis", server.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **keyed},
        ))  # fmt: skip
        url = wait_healthy(port, procs[0])
        admin = httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=30)
        r = admin.post("/v1/streams", json={"url": secret_url(media_server), "stream": "cam"})
        assert r.status_code == 201, r.text
        no_secrets(r.content, "POST answer")
        done = wait_state(admin.get, "cam", ("done",), 180)  # the worker opened the real URL
        assert done["error"] is None and done["snippets"] >= 1, done
        no_secrets(admin.get("/v1/streams").content, "list")
        admin.close()
        client = redis.Redis.from_url(server.url)
        for key in client.keys("*"):
            kind = client.type(key)
            value = {b"string": lambda k: client.get(k) or b"",
                     b"hash": lambda k: str(client.hgetall(k)).encode(),
                     b"set": lambda k: str(client.smembers(k)).encode(),
                     b"zset": lambda k: str(client.zrange(k, 0, -1)).encode(),
                     b"list": lambda k: str(client.lrange(k, 0, -1)).encode(),
                     b"stream": lambda k: str(client.xrange(k)).encode()}.get(kind)  # fmt: skip
            no_secrets(key + (value(key) if value else b""), f"redis {key!r}")
        client.close()
    finally:
        for proc in procs:
            no_secrets(stop(proc), "logs")
        next(gen, None)

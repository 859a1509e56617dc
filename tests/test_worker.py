"""Scale-out: two `livesense worker` processes and a stateless `livesense serve --redis` against a
real redis-server. A stream started through the API is taken by one worker; SIGKILL of that
worker hands it to the other after its lease expires; nothing is lost or stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from livesense.memory.redis_store import RedisStore
from tests.redis_server import RedisServer, free_port, redis_server

LEASE_TTL = 2.0
# Workers run only what the test needs: VAD and keyframes, no ASR, OCR, events or faces.
ENV = {
    "LIVESENSE_PERCEPTION__ASR": "false",
    "LIVESENSE_PERCEPTION__OCR": "false",
    "LIVESENSE_PERCEPTION__EVENTS": "false",
    "LIVESENSE_PERCEPTION__FACES": "false",
    "LIVESENSE_ENGINES__THREADS": "1",
    "LIVESENSE_REDIS__LEASE_TTL": str(LEASE_TTL),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis-workers"))


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "livesense.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_for(what: str, check: object, timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def ingest_status(api: httpx.Client, stream: str) -> dict[str, object] | None:
    for s in api.get("/v1/streams").json()["streams"]:
        if s["stream"] == stream:
            return s.get("ingest")  # type: ignore[no-any-return]
    return None


def test_two_workers_take_over_a_stream_and_the_api_stays_stateless(
    server: RedisServer, sample_clip: Path, tmp_path: Path
) -> None:
    port = free_port()
    procs = {
        "api": spawn("serve", "--redis", server.url, "--port", str(port), log=tmp_path / "api"),
        "w1": spawn("worker", "--redis", server.url, log=tmp_path / "w1"),
        "w2": spawn("worker", "--redis", server.url, log=tmp_path / "w2"),
    }
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

        def api_up() -> bool:
            try:
                return api.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the API", api_up)
        started = api.post(
            "/v1/streams", json={"url": str(sample_clip), "stream": "clip", "realtime": True}
        )
        assert started.status_code == 201, started.text
        assert started.json()["state"] == "queued"
        again = api.post("/v1/streams", json={"url": str(sample_clip), "stream": "clip"})
        assert again.status_code == 400  # already on the work list

        def running() -> dict[str, object] | None:
            st = ingest_status(api, "clip")
            ok = st and st.get("state") == "running" and int(st.get("snippets", 0)) >= 2  # type: ignore[call-overload]
            return st if ok else None

        first = wait_for("a worker to run the stream", running)
        owner = first["worker"]  # type: ignore[index]
        with RedisStore(server.url, readonly=True) as store:
            assert store.holder("clip") == owner
        killed = next(
            name for name in ("w1", "w2") if f":{procs[name].pid}:" in str(owner)
        )
        os.kill(procs[killed].pid, signal.SIGKILL)  # mid-stream, no goodbye
        survivor = "w2" if killed == "w1" else "w1"

        def taken_over() -> bool:
            st = ingest_status(api, "clip")
            return bool(st and f":{procs[survivor].pid}:" in str(st.get("worker")))

        wait_for("the other worker to take the stream over", taken_over, LEASE_TTL * 30)

        def done() -> dict[str, object] | None:
            st = ingest_status(api, "clip")
            return st if st and st.get("state") == "done" else None

        final = wait_for("the stream to end", done)
        assert final["error"] is None  # type: ignore[index]
        with RedisStore(server.url, readonly=True) as store:
            moments = store.timeline("clip")
            assert moments[0].start == 0.0 and moments[-1].end >= 13.9
            assert all(a.end == b.start for a, b in zip(moments, moments[1:], strict=False))
            summary = store.summary("clip")
            assert summary is not None and summary.snippets == 7  # 14 s: each snippet once
            assert store.holder("clip") is None  # the lease was given back
        info = next(s for s in api.get("/v1/streams").json()["streams"] if s["stream"] == "clip")
        assert info["snippets"] == 7 and info["records"] == 7
        frame = api.get("/v1/keyframes/clip/3.jpg")  # served from Redis, not from a file
        assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
        assert api.delete("/v1/streams/clip").status_code == 404  # ended: off the list
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            if p.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                print(name, (tmp_path / name).read_text(errors="replace")[-3000:])

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


def spawn(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
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


RESTART_TTL = 15.0  # longer than a CLI takes to start on a busy machine


def ingest(server: RedisServer, clip: Path, log: Path, *more: str) -> subprocess.Popen[bytes]:
    return spawn("ingest", str(clip), "--redis", server.url, "--stream", "r1", *more, log=log,
                 env={"LIVESENSE_REDIS__LEASE_TTL": str(RESTART_TTL)})


def stored(server: RedisServer, stream: str) -> int:
    with RedisStore(server.url, readonly=True) as store:
        return store.count(stream)


def test_an_ingest_restarted_after_sigkill_waits_for_the_lease_and_resumes(
    server: RedisServer, sample_clip: Path, tmp_path: Path
) -> None:
    first = ingest(server, sample_clip, tmp_path / "first", "--realtime")
    try:
        wait_for("two stored moments", lambda: stored(server, "r1") >= 2)
    finally:
        first.kill()  # SIGKILL mid-stream: the lease is left to expire
        first.wait(30)
    began = time.monotonic()
    second = ingest(server, sample_clip, tmp_path / "second")
    assert second.wait(120) == 0, (tmp_path / "second").read_text()
    took = time.monotonic() - began
    said = (tmp_path / "second").read_text()
    assert said.count("waiting up to") == 1 and "still leased to" in said, said
    assert "Traceback" not in said and "ExceptionGroup" not in said
    assert took < RESTART_TTL + 60  # the lease, model loading, 14 s of clip as fast as it goes
    with RedisStore(server.url, readonly=True) as store:
        moments = store.timeline("r1")
        assert [m.start for m in moments] == [2.0 * i for i in range(7)]  # none lost or doubled
        summary = store.summary("r1")
        assert summary is not None and summary.snippets == 7
        assert store.holder("r1") is None


def test_a_second_ingest_of_a_live_holders_stream_is_refused_in_one_sentence(
    server: RedisServer, sample_clip: Path, tmp_path: Path
) -> None:
    with RedisStore(server.url) as store:  # a holder that is alive: it renews its lease
        assert store.acquire("held")
        began = time.monotonic()
        other = spawn("ingest", str(sample_clip), "--redis", server.url, "--stream", "held",
                      log=tmp_path / "other")
        assert other.wait(120) == 1
        said = (tmp_path / "other").read_text().strip()
        refusal = f"Stream held is being ingested by {store.token}; stop it there first."
        assert said.endswith(refusal), said
        assert "Traceback" not in said and "ExceptionGroup" not in said, said
        assert time.monotonic() - began < 30
        assert store.holder("held") == store.token  # kept
        store.release("held")

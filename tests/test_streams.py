"""Streams and their sources, end to end through the real CLI and server: a second recording
for a stream is refused or appended (never stored and dropped), failed sources are failures,
and streams can be listed and deleted with their data, in both stores."""

from __future__ import annotations

import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import livesense
from tests.media import make_clip
from tests.redis_server import RedisServer, redis_server

# OCR reads what the clips show; the other perception stages only cost time here.
LIGHT = {
    "LIVESENSE_PERCEPTION__ASR": "false",
    "LIVESENSE_PERCEPTION__EVENTS": "false",
    "LIVESENSE_PERCEPTION__FACES": "false",
}
ADMIN = "adm1n-t0ken"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return livesense(*args, env=LIGHT, timeout=timeout)


def one_sentence(r: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed command: non-zero exit, no traceback, nothing claimed stored."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and "stored" not in r.stdout, r.stderr
    return " ".join(r.stderr.split())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {  # two recordings whose file names give them the same default stream id
        "alpha": make_clip(folder / "lobby.mp4", 4.0, text="ALPHA"),
        "bravo": make_clip(folder / "lobby.mkv", 4.0, text="BRAVO"),
        "long": make_clip(folder / "long.mkv", 8.0, text="CHARLIE"),
    }


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture(params=["directory", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """CLI arguments naming a fresh memory: a directory, or a prefix in a real Redis."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        return ["--redis", server.url, "--config", str(_prefix_config(tmp_path))]
    return ["--memory", str(tmp_path / "memory")]


def _prefix_config(folder: Path) -> Path:
    path = folder / "settings.yaml"
    path.write_text(f"redis:\n  prefix: t{os.getpid()}{folder.name[-12:]}\n")
    return path


def test_a_second_recording_is_refused_then_appended_after_a_gap_then_deleted(
    clips: dict[str, Path], where: list[str]
) -> None:
    assert cli("ingest", str(clips["alpha"]), *where).returncode == 0  # stream id "lobby"
    # lobby.mkv gets the same id: refused with what to do, and nothing of it is stored
    why = one_sentence(cli("ingest", str(clips["bravo"]), *where))
    assert "Stream lobby already holds moments up to 4.0 s" in why and "--append" in why
    assert "--stream NAME" in why and "livesense streams delete lobby" in why
    r = cli("ingest", str(clips["bravo"]), "--append", *where)
    assert r.returncode == 0, r.stderr
    assert "4.0–8.0 s" in " ".join(r.stdout.split())
    r = cli("timeline", "--stream", "lobby", "--json", *where)
    moments = json.loads(r.stdout)["moments"]
    assert [m["tier"] for m in moments].count("gap") == 1
    gap = next(m for m in moments if m["tier"] == "gap")
    assert gap["start"] == gap["end"] == 4.0 and "lobby.mkv appended here" in gap["summary"]
    r = cli("search", "BRAVO", "--stream", "lobby", "--json", *where)
    hits = json.loads(r.stdout)["hits"]
    assert hits and hits[0]["start"] >= 4.0 and "BRAVO" in " ".join(hits[0]["evidence"]["ocr"])
    listed = json.loads(cli("streams", "--json", *where).stdout)["streams"]
    assert [(s["stream"], s["records"], s["end"]) for s in listed] == [("lobby", 4, 8.0)]
    # delete: confirmed, everything of it goes
    why = one_sentence(cli("streams", "delete", "lobby", *where))
    assert "--yes" in why
    r = cli("streams", "delete", "lobby", "--yes", *where)
    assert r.returncode == 0, r.stderr
    assert "4 moments" in r.stdout and "1 gap markers" in r.stdout
    assert json.loads(cli("streams", "--json", *where).stdout)["streams"] == []
    assert json.loads(cli("search", "BRAVO", "--json", *where).stdout)["hits"] == []
    if "--memory" in where:
        memory = Path(where[1])
        assert not (memory / "keyframes" / "lobby").exists()
        with sqlite3.connect(memory / "memory.db") as db:
            assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM fts").fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM gaps").fetchone()[0] == 0
    else:
        import redis as redis_py

        prefix = Path(where[3]).read_text().split()[-1]
        client = redis_py.Redis.from_url(where[1])
        assert list(client.scan_iter(match=f"{prefix}:{{lobby}}:*")) == []
        client.close()


class CutOffServer:
    """Serves one file over HTTP, but the body stops halfway: a read that fails."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.name}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def cut_off(clips: dict[str, Path]) -> Iterator[str]:
    server = CutOffServer(clips["long"])
    yield server.url
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_sources_and_ports_are_failures_not_success(cut_off: str, tmp_path: Path) -> None:
    memory = ["--memory", str(tmp_path / "m")]
    why = one_sentence(cli("ingest", "gopher://example.org/clip.mp4", *memory))
    assert "cannot read gopher:// sources" in why and "rtsp://" in why and "http://" in why
    why = one_sentence(cli("ingest", "ftp://example.org/clip.mp4", *memory))
    assert "cannot read ftp://" in why
    # the read fails halfway: an error that says what is kept, not "stored"
    why = one_sentence(cli("ingest", cut_off, *memory))
    assert "stopped at" in why and "are kept" in why
    listed = json.loads(cli("streams", "--json", *memory).stdout)["streams"]
    assert listed and listed[0]["stream"] == "long"  # what was read before stays stored
    # only a port that is listened on is announced
    for port in ("99999", None):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            given = port or str(taken.getsockname()[1])
            r = cli("serve", *memory, "--port", given)
        why = one_sentence(r)
        assert "serving on" not in r.stderr
        assert "65535" in why if port else "already in use" in why


def test_run_ends_on_a_source_that_cannot_be_opened(tmp_path: Path) -> None:
    r = cli("run", str(tmp_path / "nope.mp4"), "--memory", str(tmp_path / "m"),
            "--port", str(free_port()), timeout=120)  # fmt: skip
    assert "does not exist" in one_sentence(r) and "serving on" not in r.stderr


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "livesense.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **LIGHT},
    )


def until(check: object, what: str, timeout: float = 120) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = check()  # type: ignore[operator]
        except httpx.HTTPError:
            got = None
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    return stderr


def test_run_says_when_its_source_fails_and_healthz_shows_it(cut_off: str, tmp_path: Path) -> None:
    port = free_port()
    proc = start("run", cut_off, "--memory", str(tmp_path / "m"), "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        health = until(
            lambda: (r := httpx.get(f"{base}/healthz", timeout=2)).status_code == 503 and r.json(),
            "/healthz to report the failed source",
        )
        assert health["status"] == "error" and health["source"]["state"] == "error"  # type: ignore[index]
        assert "stopped at" in health["source"]["error"]  # type: ignore[index]
        assert httpx.get(f"{base}/v1/search", params={"q": "charlie"}).status_code == 200
    finally:
        stderr = stop(proc)
    assert "serving on" in stderr and "source failed" in stderr and "Traceback" not in stderr


def test_api_refusals_leave_nothing_and_delete_takes_the_entry_then_the_data(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    memory = tmp_path / "m"
    assert cli("ingest", str(clips["alpha"]), "--memory", str(memory)).returncode == 0
    port = free_port()
    proc = start("serve", "--memory", str(memory), "--port", str(port), "--token", ADMIN)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {ADMIN}"}

    def post(**body: object) -> httpx.Response:
        return httpx.post(f"{base}/v1/streams", headers=auth, json=body, timeout=60)

    def delete(data: bool = False, who: dict[str, str] = auth) -> httpx.Response:
        params = {"data": "true"} if data else {}
        return httpx.delete(f"{base}/v1/streams/lobby", params=params, headers=who, timeout=60)

    def listed() -> dict[str, dict[str, object]]:
        got = httpx.get(f"{base}/v1/streams", headers=auth, timeout=10).json()["streams"]
        return {s["stream"]: s for s in got}

    try:
        until(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, "the server")
        r = post(url=str(tmp_path / "no.mp4"))
        assert r.status_code == 422 and "does not exist" in r.json()["error"]
        r = post(url="gopher://x/y.mp4")
        assert r.status_code == 422 and "gopher://" in r.json()["error"]
        # lobby.mkv's default id is lobby, which holds lobby.mp4's moments
        r = post(url=str(clips["bravo"]))
        assert r.status_code == 409 and '"append": true' in r.json()["error"]
        assert list(listed()) == ["lobby"] and listed()["lobby"]["ingest"] is None
        r = post(url=str(clips["bravo"]), append=True)
        assert r.status_code == 201, r.text
        until(lambda: (listed()["lobby"]["ingest"] or {}).get("state") == "done", "the append")
        assert listed()["lobby"]["records"] == 4
        # DELETE stops ingesting: the entry goes, the stored moments stay
        r = delete()
        assert r.status_code == 200 and r.json()["state"] == "done"
        assert listed()["lobby"]["ingest"] is None and listed()["lobby"]["records"] == 4
        # with data=true the stream and everything stored of it go (the admin token only)
        made = cli("token", "create", "--scope", "admin", "--stream", "lobby",
                   "--memory", str(memory))  # fmt: skip
        scoped = {"Authorization": f"Bearer {made.stdout.strip()}"}
        r = delete(data=True, who=scoped)
        assert r.status_code == 403
        r = delete(data=True)
        assert r.status_code == 200, r.text
        assert r.json()["deleted"] == {"moments": 4, "keyframes": 4, "gaps": 1}
        assert listed() == {}
        r = httpx.get(f"{base}/v1/search", params={"q": "BRAVO"}, headers=auth)
        assert r.json()["hits"] == []
        assert not (memory / "keyframes" / "lobby").exists()
        r = delete(data=True)
        assert r.status_code == 404
    finally:
        stderr = stop(proc)
    assert "Traceback" not in stderr


def test_redis_work_list_refuses_appends_and_deletes_through_the_api(
    clips: dict[str, Path], redis: RedisServer, tmp_path: Path
) -> None:
    where = ["--redis", redis.url, "--config", str(_prefix_config(tmp_path))]
    assert cli("ingest", str(clips["alpha"]), *where).returncode == 0
    port = free_port()
    procs = [start("serve", *where, "--port", str(port)), start("worker", *where)]
    base = f"http://127.0.0.1:{port}"

    def listed() -> dict[str, dict[str, object]]:
        got = httpx.get(f"{base}/v1/streams", timeout=10).json()["streams"]
        return {s["stream"]: s for s in got}

    try:
        until(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, "the API")
        r = httpx.post(f"{base}/v1/streams", json={"url": str(clips["bravo"])}, timeout=30)
        assert r.status_code == 409 and '"append": true' in r.json()["error"]
        assert listed()["lobby"]["ingest"] is None  # the refusal left nothing on the work list
        body = {"url": str(clips["bravo"]), "append": True}
        assert httpx.post(f"{base}/v1/streams", json=body, timeout=30).status_code == 201
        until(lambda: (listed()["lobby"]["ingest"] or {}).get("state") == "done", "the append")
        assert listed()["lobby"]["records"] == 4 and listed()["lobby"]["end"] == 8.0
        r = httpx.delete(f"{base}/v1/streams/lobby", params={"data": "true"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["deleted"]["moments"] == 4
        assert listed() == {}
    finally:
        for proc in procs:
            stderr = stop(proc)
            assert "Traceback" not in stderr, stderr

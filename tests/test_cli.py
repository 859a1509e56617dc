"""The CLI contract: ingest, search and ask on a real clip; every error is one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import livesense


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

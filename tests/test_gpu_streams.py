"""The streams-per-GPU benchmark at N=2 on the CPU, so that it cannot rot (bench/gpu_streams.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_streams


@pytest.mark.parametrize("procs", [1, 2])
def test_two_streams_run_every_stage_and_report_where_time_goes(tmp_path: Path, procs: int) -> None:
    """N=2 in one process, and in two (one stream each, reports merged)."""
    out = tmp_path / "streams.json"
    report = gpu_streams.main(
        [
            "--streams",
            "2",
            "--seconds",
            "6",
            "--device",
            "cpu",
            "--whisper-device",
            "cpu",
            "--procs",
            str(procs),
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == report
    (r,) = report["runs"]
    assert r["streams"] == 2 and r["errors"] == 0, r["first_errors"]
    assert r["snippets"] == r["snippets_expected"] == 6
    assert r["stored"] == 6  # every snippet reached the memory
    assert r["words"] > 0 and r["ocr_lines"] > 0  # speech heard and text read
    assert set(r["stage_seconds"]) == set(gpu_streams.STAGES)
    assert all(r["stage_seconds"][s] > 0 for s in ("decode", "vad", "ocr", "asr", "text"))
    assert 0 < r["latency_p50_s"] <= r["latency_p99_s"] <= r["latency_max_s"]
    assert r["batchers"]["whisper"]["items"] >= 2 and r["batchers"]["vad-silero"]["items"] > 0
    assert report["whisper_device"] == "cpu"
    assert report["placement"]["ocr-det"].startswith("ort-cpu: ")
    assert r["gpu"] is None or r["gpu"]["util_max_pct"] >= 0
    assert report["procs"] == r["procs"] == procs and r["streams_per_proc"] == [2 // procs] * procs
    assert r["cpu_cores_used"] > 0


def test_streams_split_evenly_over_processes() -> None:
    assert gpu_streams.split(10, 4) == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert gpu_streams.split(2, 4) == [(0, 1), (1, 1)]  # no process without a stream
    assert gpu_streams.procs_of("auto") >= 1

"""The streams-per-GPU benchmark at N=2 on the CPU, so that it cannot rot (bench/gpu_streams.py)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import gpu_streams


def test_two_streams_run_every_stage_and_report_where_time_goes(tmp_path: Path) -> None:
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

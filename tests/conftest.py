"""Shared fixtures: a sample clip with known speech and on-screen text, ingested once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from livesense.sample import DEMO_SCENES, make_sample

LIVESENSE = [sys.executable, "-m", "livesense.cli"]


def livesense(
    *args: str, timeout: float = 300, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process (env: extra environment variables)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [*LIVESENSE, *args], capture_output=True, text=True, timeout=timeout, check=check, env=full
    )


@pytest.fixture(scope="session")
def sample_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 s, 640x360: 'PLATFORM 9 / ROME 07:30' + a sentence about the train to Rome, then
    'CAFE / OPEN UNTIL 22:00' + a sentence about the cafe."""
    path = tmp_path_factory.mktemp("clip") / "sample.mp4"
    make_sample(path, DEMO_SCENES)
    return path


@pytest.fixture(scope="session")
def sample_memory(tmp_path_factory: pytest.TempPathFactory, sample_clip: Path) -> Path:
    """The sample clip ingested through the CLI into a fresh memory directory."""
    memory = tmp_path_factory.mktemp("memory")
    result = livesense("ingest", str(sample_clip), "--memory", str(memory), "--stream", "sample")
    assert result.returncode == 0, result.stderr
    return memory

"""Settings: defaults < YAML file < LIVESENSE_* environment < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from livesense.config import load_settings
from livesense.errors import ConfigError


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("snippet:\n  seconds: 3.0\n  fps: 1.0\nserver:\n  port: 9000\n")
    monkeypatch.setenv("LIVESENSE_SNIPPET__FPS", "4")
    s = load_settings(f, **{"server.port": 9100, "server.host": None})
    assert s.snippet.seconds == 3.0  # from the file
    assert s.snippet.fps == 4.0  # env beats the file
    assert s.server.port == 9100  # flags beat both
    assert s.server.host == "127.0.0.1"  # a flag not given changes nothing


def test_bad_settings_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("snippet:\n  seconds: -1\n")
    with pytest.raises(ConfigError, match="Invalid settings"):
        load_settings(bad)

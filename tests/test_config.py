"""Settings: defaults < YAML file < LIVESENSE_* environment < explicit overrides."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from livesense.config import load_settings
from livesense.errors import ConfigError
from tests.conftest import livesense


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
    with pytest.raises(ConfigError, match="The setting snippet.seconds = -1"):
        load_settings(bad)


def test_settings_with_defaults_come_from_each_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("memory: from-file\nlog_level: error\nredis:\n  prefix: filep\n")
    assert load_settings().memory == Path("livesense-memory")  # the default
    s = load_settings(f)
    assert (s.memory, s.log_level, s.redis.prefix) == (Path("from-file"), "error", "filep")
    monkeypatch.setenv("LIVESENSE_MEMORY", "from-env")
    monkeypatch.setenv("LIVESENSE_LOG_LEVEL", "WARNING")
    s = load_settings(f)
    assert (s.memory, s.log_level, s.redis.prefix) == (Path("from-env"), "warning", "filep")
    s = load_settings(f, memory=Path("from-flag"), **{"redis.prefix": "flagp"})
    assert (s.memory, s.redis.prefix) == (Path("from-flag"), "flagp")
    s = load_settings(f, memory=None, **{"redis.prefix": None})  # flags not given
    assert (s.memory, s.redis.prefix) == (Path("from-env"), "filep")


@pytest.mark.parametrize(
    ("layer", "where", "needle"),
    [
        ("file", "snipet:\n  seconds: 3\n", "unknown setting snipet; did you mean snippet?"),
        ("file", "snippet:\n  second: 3\n", "did you mean snippet.seconds?"),
        ("env", "LIVESENSE_SNIPPET_SECONDS", "did you mean LIVESENSE_SNIPPET__SECONDS?"),
        ("env", "LIVESENSE_REDIS__LEASE", "did you mean LIVESENSE_REDIS__LEASE_TTL?"),
        ("env", "LIVESENSE_LOGLEVEL", "did you mean LIVESENSE_LOG_LEVEL?"),
    ],
)
def test_unknown_settings_are_refused_with_the_nearest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str, where: str, needle: str
) -> None:
    f = None
    if layer == "file":
        f = tmp_path / "s.yaml"
        f.write_text(where)
    else:
        monkeypatch.setenv(where, "3")
    with pytest.raises(ConfigError) as e:
        load_settings(f)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_variables_of_tools_that_share_the_prefix_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LIVESENSE_FUZZ_SEED", "LIVESENSE_FUZZ_MEDIA", "LIVESENSE_GPU_CACHE"):
        monkeypatch.setenv(name, "1")
    assert load_settings().snippet.seconds == 2.0


@pytest.mark.parametrize(
    ("layer", "source"),
    [
        ("file", "the settings file"),
        ("env", "the environment variable LIVESENSE_SNIPPET__SECONDS"),
        ("flag", "the flag --snippet"),
    ],
)
def test_invalid_values_name_the_setting_and_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str, source: str
) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("snippet:\n  seconds: 0.1\n" if layer == "file" else "{}\n")
    if layer == "env":
        monkeypatch.setenv("LIVESENSE_SNIPPET__SECONDS", "0.1")
    given = {"snippet.seconds": 0.1 if layer == "flag" else None}
    with pytest.raises(ConfigError) as e:
        load_settings(f, flags={"snippet.seconds": "--snippet"}, **given)
    msg = str(e.value)
    assert msg.startswith("The setting snippet.seconds = ") and source in msg, msg
    assert "greater than 0.2" in msg and "\n" not in msg and "validation error" not in msg


def test_the_cli_reads_memory_from_each_layer(tmp_path: Path) -> None:
    """A setting with a CLI default (--memory) is taken from the file, then the environment,
    then the flag; a flag left out overrides nothing."""
    f = tmp_path / "s.yaml"
    f.write_text(f"memory: {tmp_path / 'file-mem'}\n")
    r = livesense("search", "x", "--config", str(f))
    assert r.returncode == 1 and "file-mem yet" in r.stderr, r.stderr
    r = livesense("search", "x", "--config", str(f), env={"LIVESENSE_MEMORY": "env-mem"})
    assert "no livesense memory in env-mem" in r.stderr, r.stderr
    r = livesense("search", "x", "--config", str(f), "--memory", str(tmp_path / "flag-mem"),
                  env={"LIVESENSE_MEMORY": "env-mem"})
    assert "flag-mem yet" in r.stderr, r.stderr
    r = livesense("search", "x", env={"LIVESENSE_SNIPET__SECONDS": "3"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "LIVESENSE_SNIPET__SECONDS names no setting" in r.stderr, r.stderr
    assert "did you mean LIVESENSE_SNIPPET__SECONDS?" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("level", "service", "expected"),
    [("debug", False, logging.DEBUG), ("info", False, logging.WARNING),
     ("info", True, logging.INFO), ("error", True, logging.ERROR), ("ERROR", False, logging.ERROR)],
)
def test_log_level_sets_the_log_of_services_and_quiets_one_shot_commands(
    monkeypatch: pytest.MonkeyPatch, level: str, service: bool, expected: int
) -> None:
    from livesense.cli import _settings

    monkeypatch.setenv("LIVESENSE_LOG_LEVEL", level)
    logger = logging.getLogger("livesense")
    before = logger.level
    try:
        assert _settings(None, service=service).log_level == level.lower()
        assert logger.level == expected
    finally:
        logger.setLevel(before)


def test_token_commands_take_memory_from_the_environment(tmp_path: Path) -> None:
    r = livesense("token", "create", "--stream", "cam1", "--json",
                  env={"LIVESENSE_MEMORY": str(tmp_path / "env")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "env" / "tokens.db").exists()
    r = livesense("token", "list", "--json", "--memory", str(tmp_path / "flag"),
                  env={"LIVESENSE_MEMORY": str(tmp_path / "env")})
    assert r.returncode == 0 and json.loads(r.stdout)["tokens"] == [], r.stderr

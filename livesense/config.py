"""One typed settings object: defaults < YAML file < LIVESENSE_* environment < CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from livesense.errors import ConfigError


class SnippetSettings(BaseModel):
    seconds: float = Field(2.0, gt=0.2, le=30.0, description="Snippet length (s).")
    fps: float = Field(2.0, gt=0.0, le=30.0, description="Sampled frames per second.")
    max_side: int = Field(640, ge=64, le=4096, description="Longest side of sampled frames.")


class PerceptionSettings(BaseModel):
    asr: bool = True
    asr_model: str = Field(
        "tiny.en",
        description="'tiny.en' (packaged), 'base' (the asr-base extra) or a local CTranslate2 "
        "Whisper directory.",
    )
    asr_threads: int = 2
    asr_max_utterance: float = Field(
        6.0, description="Live sources: longest speech held back before it is transcribed (s)."
    )
    vad_threshold: float = 0.5
    events: bool = True
    ocr: bool = True
    ocr_change_threshold: float = Field(
        0.03,
        description="Mean absolute grey change (0..1) of the picture above which OCR runs again "
        "(a caption changing on the same background measures about 0.06).",
    )
    ocr_max_side: int = 960
    ocr_max_interval: float = Field(
        10.0, description="Run OCR at least this often (s) on a still picture that changed."
    )
    faces: bool = True
    keyframe_quality: int = 80
    clip_image: str | None = Field(None, description="Local ONNX file of a CLIP image tower.")
    clip_text: str | None = Field(None, description="Local ONNX file of a CLIP text tower.")


class QueueSettings(BaseModel):
    media: int = Field(256, description="Decoded media items buffered per stream.")
    snippets: int = Field(8, description="Snippets buffered before perception per stream.")
    records: int = Field(64, description="Records buffered before memory per stream.")


class MemorySettings(BaseModel):
    max_records_per_stream: int = Field(
        5000, ge=16, description="Stored moments per stream before consolidation starts."
    )
    consolidate_batch: int = Field(256, ge=2, description="Records merged per consolidation.")
    merge_similarity: float = Field(0.80, description="Adjacent moments above this merge.")


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None


class IceServerSettings(BaseModel):
    urls: list[str] = Field(
        ..., min_length=1, description="stun:host:port or turn:host:port?transport=udp|tcp."
    )
    username: str | None = None
    credential: str | None = None


class WebRTCSettings(BaseModel):
    ice_servers: list[IceServerSettings] = Field(
        default_factory=list,
        description="STUN/TURN servers for WHIP sessions (none: host candidates only).",
    )
    max_publishers: int = Field(8, ge=1, le=256, description="Concurrent WHIP publishers.")
    idle_timeout: float = Field(
        10.0, gt=0.5, description="A publisher that sends no media this long (s) is ended."
    )
    sync_wait: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description="How long (s) a new track waits for an RTCP sender report to learn its "
        "capture clock before arrival times are used instead.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LIVESENSE_", env_nested_delimiter="__", extra="ignore"
    )

    memory: Path = Path("livesense-memory")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    snippet: SnippetSettings = SnippetSettings()
    perception: PerceptionSettings = PerceptionSettings()
    queues: QueueSettings = QueueSettings()
    store: MemorySettings = MemorySettings()
    server: ServerSettings = ServerSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    log_level: str = "info"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from an optional YAML file, the environment and explicit overrides.

    Overrides are dotted keys ("snippet.seconds") or top-level names; None values are
    ignored so CLI flags that were not given do not clobber the file or the environment.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"The settings file {p} does not exist.")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"The settings file {p} is not valid YAML: {e}.") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"The settings file {p} must hold a mapping.")
        data = loaded
    env = Settings()  # only what the environment set is kept below
    merged = _deep_merge(data, env.model_dump(exclude_unset=True))
    for key, value in overrides.items():
        if value is None:
            continue
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    try:
        return Settings(**merged)
    except Exception as e:  # pydantic.ValidationError
        raise ConfigError(f"Invalid settings: {str(e).splitlines()[0]}.") from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out

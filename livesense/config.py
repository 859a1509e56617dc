"""One typed settings object: defaults < YAML file < LIVESENSE_* environment < CLI flags."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from livesense.drop_policy import DropPolicy
from livesense.errors import ConfigError

ENV_PREFIX = "LIVESENSE_"


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
        6.0,
        description="Live sources: longest stretch of speech left uncommitted (s); past it the "
        "utterance is cut at its quietest point and transcribed whole.",
    )
    asr_live_window: float = Field(
        10.0,
        ge=0.0,
        le=30.0,
        description="Live sources: seconds of audio Whisper's encoder reads per call (its own "
        "window is 30 s; 10 s costs about a sixth as much). 0 or 30: the full window.",
    )
    vad_threshold: float = 0.5
    events: bool = True
    ocr: bool = True
    ocr_change_threshold: float = Field(
        0.03,
        description="Mean absolute grey change (0..1) of the picture above which OCR runs again "
        "(a caption changing on the same background measures about 0.06).",
    )
    ocr_region_change: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="Mean absolute grey change (0..1) of any region an eighth of the picture "
        "wide and a sixth high above which OCR runs again: a caption replaced on a still "
        "picture measures about 0.07 there and under 0.01 as a whole (1: whole-picture "
        "change only).",
    )
    ocr_max_side: int = 960
    ocr_max_interval: float = Field(
        10.0, description="Run OCR at least this often (s) on a still picture that changed."
    )
    faces: bool = True
    objects: bool = Field(True, description="Detect COCO-80 objects (NanoDet-m) on keyframes.")
    object_min_score: float = Field(
        0.3, ge=0.0, le=1.0, description="Detections scoring below this are not kept."
    )
    scenes: bool = Field(
        True, description="Classify each keyframe's scene (EfficientNet-Lite0, ImageNet-1k)."
    )
    scene_top: int = Field(3, ge=1, le=10, description="Scene labels kept per snippet.")
    keyframe_quality: int = 80
    clip_image: str | None = Field(None, description="Local ONNX file of a CLIP image tower.")
    clip_text: str | None = Field(None, description="Local ONNX file of a CLIP text tower.")


class QueueSettings(BaseModel):
    media: int = Field(256, description="Decoded media items buffered per stream.")
    snippets: int = Field(8, description="Snippets buffered before perception per stream.")
    records: int = Field(64, description="Records buffered before memory per stream.")


class MemorySettings(BaseModel):
    """Budgets of the tiered rolling memory (memory.tiers), per stream."""

    max_records_per_stream: int = Field(
        256,
        ge=16,
        description="Stored moments per stream, all tiers together; the consolidated tier gets "
        "what the recent and key tiers leave.",
    )
    recent: int = Field(32, ge=1, description="Last snippets kept at full detail.")
    key_moments: int = Field(
        32, ge=0, description="Salient moments kept at full detail (speech, new text, events)."
    )
    key_threshold: float = Field(
        1.0, ge=0.0, description="Salience a moment needs to be kept as a key moment."
    )
    key_half_life: float = Field(
        3600.0, gt=0.0, description="Stream seconds over which a key moment's salience halves."
    )
    min_score: float = Field(
        0.175,
        ge=0.0,
        le=1.0,
        description="Search and ask return no moment scoring below this (0..1): the line "
        "between questions about things not in memory and questions about what is there, "
        "calibrated with the default models by bench/search_floor.py (figures in the README).",
    )
    text_chars: int = Field(
        32_000,
        ge=1000,
        description="Searchable text the consolidated tier of a stream keeps (characters); "
        "past it, merges drop words (counted in the stream's summary).",
    )


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


class EngineSettings(BaseModel):
    """How neural models run: backend, precision, TensorRT engine cache, cross-stream batching."""

    backend: Literal["auto", "tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu"] = Field(
        "auto",
        description="'auto' picks per model the best that works: native TensorRT, then ONNX "
        "Runtime's TensorRT, CUDA, CPU providers (the top-level 'device' narrows the choice).",
    )
    backends: dict[str, Literal["tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu"]] = Field(
        default_factory=dict, description="Per-model backend, e.g. {'ocr-rec': 'ort-cuda'}."
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="TensorRT precision (ONNX Runtime's CUDA and CPU providers run fp32)."
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "livesense" / "engines",
        description="TensorRT engines, ORT TensorRT caches, calibration data and exported models.",
    )
    missing_engine: Literal["build", "refuse"] = Field(
        "build", description="A TensorRT engine not in the cache: build it at start, or refuse."
    )
    threads: int = Field(2, ge=0, le=64, description="CPU threads per model (0: runtime's choice).")
    workspace_mb: int = Field(2048, ge=64, description="TensorRT builder workspace (MiB).")
    builder_level: int = Field(
        3, ge=0, le=5, description="TensorRT builder optimisation level (lower builds faster)."
    )
    batch: bool = Field(True, description="Batch requests of all streams per model.")
    batch_max_size: int = Field(16, ge=1, le=256, description="Largest batch (items).")
    batch_sizes: dict[str, int] = Field(
        default_factory=dict,
        description="Largest batch per model, e.g. {'ocr-rec': 4} where big batches of wide "
        "images cost more per item (CPUs with few cores).",
    )
    batch_max_delay_ms: float | None = Field(
        None,
        ge=0.0,
        le=1000.0,
        description="Longest wait for more items once one is queued; None: a tenth of the "
        "model's recent batch time, kept within 1-50 ms.",
    )
    batch_queue: int = Field(256, ge=1, description="Items queued per model, all streams.")
    batch_stream_queue: int = Field(64, ge=1, description="Items queued per model and stream.")
    batch_policy: DropPolicy = Field(
        DropPolicy.WAIT, description="A full batch queue: the caller waits, or an item is dropped."
    )
    fixed_shapes: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Pad every model input to one of the model's buckets (fixed shapes) and "
        "batch sizes (powers of two): 'auto' does so on GPU backends, where each new shape "
        "costs an algorithm search; on the CPU inputs keep their own shapes.",
    )
    warm_up: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run every bucket at every batch size once when a model loads; 'auto': "
        "wherever shapes are fixed.",
    )
    session_per_shape: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run each fixed input shape (bucket x batch size) on an ONNX Runtime "
        "session of its own: ORT's CUDA convolutions rebuild their cuDNN plans whenever a "
        "session's input shape changes. 'auto': on the CUDA backend.",
    )
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC",
        description="How ONNX Runtime's CUDA provider picks convolution algorithms per shape: "
        "HEURISTIC (fast to choose), EXHAUSTIVE (tries all, slow on every new shape).",
    )
    tf32: bool = Field(
        True, description="Let the CUDA provider compute fp32 MatMul/Conv in TF32 (off: exact)."
    )
    placement: Literal["measure", "first"] = Field(
        "measure",
        description="With backend 'auto' and a GPU: time each model on the GPU and the CPU at "
        "its batch sizes and run it where it is faster ('measure'), or take the first backend "
        "that loads ('first'; models that declare a place, like the VAD on the CPU, keep it).",
    )
    record_calibration: bool = Field(
        False, description="Save model inputs seen on real streams for INT8 calibration."
    )
    calibration_samples: int = Field(512, ge=1, description="Recorded inputs kept per model.")


class RedisSettings(BaseModel):
    """The shared memory and work list in Redis (the redis extra)."""

    url: str | None = Field(
        None, description="redis://host:port/db; set: memory lives in Redis, not a directory."
    )
    prefix: str = Field(
        "ls", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Prefix of every key."
    )
    buffer: int = Field(
        1000, ge=1, description="Records held while Redis is unreachable before ingest waits."
    )
    retry_max: float = Field(5.0, gt=0.0, description="Longest wait between two retries (s).")
    lease_ttl: float = Field(
        10.0, ge=1.0, description="A stream's owner that goes silent this long (s) loses it."
    )
    worker_streams: int = Field(8, ge=1, le=256, description="Streams one worker ingests.")
    changes_kept: int = Field(
        1000,
        ge=100,
        description="Change-log entries kept per stream; a query process further behind "
        "reloads that stream.",
    )
    vector_index: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Where searches find vectors: auto (an index per query process, which finds "
        "what exact search finds; records still get their vectors in Redis's own index where the "
        "server has a query engine), on (Redis's own HNSW index: nothing held per process, far "
        "lower recall; the server must have it), off (an index per query process).",
    )


class SecuritySettings(BaseModel):
    """API access: the admin token file, rate limits, request size limits."""

    token_file: Path | None = Field(
        None, description="File holding the admin token (instead of server.token)."
    )
    rate_per_minute: float = Field(
        600.0, gt=0.0, description="Requests per minute per token or client, on average."
    )
    rate_burst: int = Field(60, ge=1, description="Requests per token or client at once.")
    rate_keys: int = Field(10000, ge=1, description="Rate-limit buckets kept (LRU).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (bytes).")
    max_path_bytes: int = Field(2048, ge=64, description="Longest request path (bytes).")
    max_query_bytes: int = Field(8192, ge=64, description="Longest query string (bytes).")
    revocation_seconds: float = Field(
        5.0, gt=0.0, le=3600.0,
        description="A revoked token's open watch sockets and WHIP sessions end within this (s).",
    )  # fmt: skip
    auth_failures_per_minute: float = Field(
        30.0, gt=0.0, description="Wrong tokens per minute per client address, on average."
    )
    auth_failure_burst: int = Field(
        10, ge=1, description="Wrong tokens per client address at once, before 429s."
    )
    header_timeout: float = Field(
        10.0, gt=0.0, description="Seconds a client may take to send a request's headers."
    )
    body_timeout: float = Field(
        15.0, gt=0.0, description="Seconds a request body may go without a byte arriving."
    )
    source_key: str | None = Field(
        None,
        description="Secret shared by API processes and workers that seals source URLs holding "
        "credentials on their way through Redis (never written there in the clear).",
    )
    max_connections_per_client: int = Field(
        64, ge=1, description="Open connections per client address; more are closed at once."
    )


class MediaLimits(BaseModel):
    """What a source may be: bounds checked at open and while reading."""

    max_tracks: int = Field(16, ge=1, description="Streams in one container.")
    max_width: int = Field(8192, ge=16, description="Widest video accepted (pixels).")
    max_height: int = Field(8192, ge=16, description="Tallest video accepted (pixels).")
    max_pixels: int = Field(
        8192 * 4320, ge=256, description="Largest video frame accepted (pixels)."
    )
    min_sample_rate: int = Field(1000, ge=1, description="Lowest audio sample rate (Hz).")
    max_sample_rate: int = Field(384_000, ge=1, description="Highest audio sample rate (Hz).")
    max_channels: int = Field(64, ge=1, description="Most audio channels accepted.")
    max_duration: float = Field(
        7 * 24 * 3600.0,
        gt=0.0,
        description="Longest file or WHIP session accepted (s); other live sources: no limit.",
    )
    max_bitrate: float = Field(
        200e6, gt=0.0, description="Highest stated or measured bitrate (bit/s)."
    )
    max_corrupt_packets: int = Field(
        200, ge=1, description="Corrupt packets in a row before a source is ended."
    )


class ResilienceSettings(BaseModel):
    """Reconnecting live sources, restarting failed stages, persisting, draining."""

    reconnect: bool = Field(True, description="Reconnect live sources that drop.")
    reconnect_initial: float = Field(0.5, gt=0.0, description="First reconnect wait (s).")
    reconnect_max: float = Field(30.0, gt=0.0, description="Longest reconnect wait (s).")
    reconnect_attempts: int = Field(
        0, ge=0, description="Reconnect attempts before giving up (0: never give up)."
    )
    stage_restarts: int = Field(
        5, ge=0, description="Restarts a minute before a failing stage rests."
    )
    stage_rest: float = Field(60.0, ge=0.0, description="How long a failing stage rests (s).")
    unsaved_max: int = Field(
        20000, ge=1, description="Moments held in memory while the store cannot write."
    )
    persist_retry_max: float = Field(
        30.0, gt=0.0, description="Longest wait between two store write retries (s)."
    )
    drain_seconds: float = Field(
        30.0, gt=0.0, description="On stop or SIGTERM: time for queued work to be stored (s)."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

    memory: Path = Path("livesense-memory")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    snippet: SnippetSettings = SnippetSettings()
    perception: PerceptionSettings = PerceptionSettings()
    queues: QueueSettings = QueueSettings()
    store: MemorySettings = MemorySettings()
    server: ServerSettings = ServerSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    redis: RedisSettings = RedisSettings()
    engines: EngineSettings = EngineSettings()
    security: SecuritySettings = SecuritySettings()
    media: MediaLimits = MediaLimits()
    resilience: ResilienceSettings = ResilienceSettings()
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info",
        description="Level of the service's log (livesense and the HTTP server; access lines "
        "at debug).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


def load_settings(
    path: str | Path | None = None, *, flags: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from an optional YAML file, the environment and explicit overrides.

    Overrides are dotted keys ("snippet.seconds") or top-level names; None values are
    ignored so CLI flags that were not given do not clobber the file or the environment
    (`flags` names the CLI flag of a key, for messages). Unknown keys in the file and
    unknown LIVESENSE_* variables that resemble a setting are refused with the nearest valid
    name; every message names the setting and where its value came from.
    """
    data: dict[str, Any] = {}
    shown = ""
    if path is not None:
        p = Path(path)
        shown = str(p)
        if not p.is_file():
            raise ConfigError(f"The settings file {p} does not exist.")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"The settings file {p} is not valid YAML{at}.") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"The settings file {p} must hold a mapping.")
        _check_keys(loaded, Settings, (), p)
        data = loaded
    env_names = _env_settings()
    try:
        env = Settings()  # only what the environment set is kept below
    except ValidationError as e:
        raise ConfigError(_explain(e, lambda loc: _env_origin(loc, env_names))) from None
    except SettingsError as e:
        raise ConfigError(_explain_settings_error(e, env_names)) from None
    cli: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = cli
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    merged = _deep_merge(_deep_merge(data, env.model_dump(exclude_unset=True)), cli)
    given = {k for k, v in overrides.items() if v is not None}

    def origin(loc: tuple[str, ...]) -> str:
        for n in range(len(loc), 0, -1):
            key = ".".join(loc[:n])
            if key in given:
                flag = (flags or {}).get(key)
                return f"the flag {flag}" if flag else "the command line"
        env_from = _env_origin(loc, env_names)
        if env_from:
            return env_from
        return f"the settings file {shown}" if shown else ""

    try:
        return Settings(**merged)
    except ValidationError as e:
        raise ConfigError(_explain(e, origin)) from None


def _check_keys(data: dict[str, Any], model: type[BaseModel], at: tuple[str, ...], p: Path) -> None:
    """Refuse keys of the settings file that name no setting, with the nearest valid name."""
    fields = model.model_fields
    for key, value in data.items():
        name = ".".join((*at, str(key)))
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join((*at, near[0]))}?" if near else "."
            raise ConfigError(f"The settings file {p} has an unknown setting {name}{hint}")
        sub = _model_of(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_keys(value, sub, (*at, str(key)), p)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings group a field holds (SnippetSettings for `snippet`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def setting_names() -> list[tuple[str, ...]]:
    """Every setting's path, groups included: ("snippet",), ("snippet", "seconds"), ..."""
    out: list[tuple[str, ...]] = []

    def walk(model: type[BaseModel], at: tuple[str, ...]) -> None:
        for name, f in model.model_fields.items():
            out.append((*at, name))
            sub = _model_of(f.annotation)
            if sub is not None:
                walk(sub, (*at, name))

    walk(Settings, ())
    return out


def env_name(path: tuple[str, ...]) -> str:
    """A setting's environment variable: ("snippet", "seconds") -> LIVESENSE_SNIPPET__SECONDS."""
    return ENV_PREFIX + "__".join(path).upper()


def _env_settings() -> dict[str, tuple[str, ...]]:
    """The LIVESENSE_* variables set, by the setting each names; a variable that names none
    but resembles one (a typo) is refused with the nearest valid name. Variables that
    resemble no setting are left alone: tools use the prefix too (LIVESENSE_FUZZ_SEED)."""
    known = {env_name(path): path for path in setting_names()}
    groups = {path[0] for path in setting_names() if len(path) > 1}
    found: dict[str, tuple[str, ...]] = {}
    for var in os.environ:
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        if upper in known:
            found[var] = known[upper]
            continue
        rest = upper[len(ENV_PREFIX) :]
        names = [k[len(ENV_PREFIX) :] for k in known]
        near = difflib.get_close_matches(rest, names, n=1, cutoff=0.8)
        if near or ("__" in rest and rest.split("__")[0].lower() in groups):
            hint = f"; did you mean {ENV_PREFIX}{near[0]}?" if near else "."
            raise ConfigError(f"The environment variable {var} names no setting{hint}")
    return found


def _env_origin(loc: tuple[Any, ...], env_names: dict[str, tuple[str, ...]]) -> str:
    for var, path in env_names.items():
        if tuple(loc[: len(path)]) == path:
            return f"the environment variable {var}"
    return ""


def _explain(e: ValidationError, origin: Callable[[tuple[str, ...]], str]) -> str:
    """One sentence for pydantic's report: the first invalid setting, where it came from, and
    what is wrong with it."""
    errors = e.errors()
    first = errors[0]
    loc = tuple(str(part) for part in first["loc"])
    name = ".".join(loc) or "settings"
    where = origin(loc)
    where = f" (from {where})" if where else ""
    reason = str(first["msg"]).rstrip(".")
    value = first.get("input")
    if isinstance(value, str | int | float | bool) and len(repr(value)) <= 40:
        name = f"{name} = {value!r}"
    more = len(errors) - 1
    tail = f"; {more} more setting{'s are' if more > 1 else ' is'} invalid" if more else ""
    return f"The setting {name}{where} is invalid: {reason}{tail}."


def _explain_settings_error(e: SettingsError, env_names: dict[str, tuple[str, ...]]) -> str:
    """pydantic-settings could not parse a variable (a list or mapping that is not JSON)."""
    text = str(e)
    for var, path in env_names.items():
        if f'"{path[-1]}"' in text or f'"{path[0]}"' in text:
            return (
                f"The environment variable {var} could not be read: lists and mappings "
                "must be written as JSON."
            )
    return f"The LIVESENSE_* environment could not be read: {text.splitlines()[0]}."


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out

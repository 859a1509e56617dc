"""ONNX Runtime's CUDA provider at the models' buckets: parity with the CPU, no algorithm
search once warm, placement by measurement. Run by deploy/gpu-check.sh (pytest -m gpu).

Parity runs with TF32 off (ORT's CUDA provider otherwise computes fp32 MatMul and Conv in
TF32): text embedding cosine >= 0.9999 per sentence (GPU bucketed, CPU unbucketed); OCR
detector map mean |diff| <= 1e-3 against the CPU on the same canvas, and the same lines read
end to end against the unbucketed CPU; VAD |diff| <= 1e-3.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from livesense.config import EngineSettings
from livesense.engines.engine_factory import EngineFactory
from livesense.engines.gpu import detect_gpu
from livesense.engines.model_spec import ocr_det_spec, ocr_rec_spec, text_spec, vad_spec
from livesense.engines.ocr import OcrReader, rec_input, rec_width
from livesense.engines.onnx import available_providers
from livesense.engines.text import TextEmbedder

HAVE_CUDA = "CUDAExecutionProvider" in available_providers() and detect_gpu() is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAVE_CUDA, reason="needs onnxruntime-gpu and a GPU"),
]
SENTENCES = ["dog", "the train to rome leaves from platform nine", "gate b52 boarding now"]


def sign(text: str, w: int = 640, h: int = 200) -> np.ndarray:
    img = np.full((h, w, 3), 235, np.uint8)
    cv2.putText(img, text, (30, h // 2 + 20), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (20, 20, 20), 4)
    return img


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    s = EngineSettings(cache_dir=tmp_path_factory.mktemp("e"), backend="ort-cuda", tf32=False)
    f = EngineFactory(s, "cuda")
    yield f
    f.close()


@pytest.fixture(scope="module")
def cpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    f = EngineFactory(EngineSettings(cache_dir=tmp_path_factory.mktemp("c"), threads=4), "cpu")
    yield f
    f.close()


@pytest.fixture(scope="module")
def cpu_fixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    """The CPU at the same padded shapes as the GPU: the numerics alone are compared."""
    s = EngineSettings(cache_dir=tmp_path_factory.mktemp("f"), threads=4, fixed_shapes="on")
    f = EngineFactory(s, "cpu")
    yield f
    f.close()


def test_gpu_engines_run_fixed_shapes_and_match_the_cpu(
    gpu: EngineFactory, cpu: EngineFactory, cpu_fixed: EngineFactory
) -> None:
    a = TextEmbedder(factory=gpu, batch=False)
    b = TextEmbedder(factory=cpu, batch=False)
    assert a.engine.fixed_shapes and not b.engine.fixed_shapes
    cos = (a.embed(SENTENCES) * b.embed(SENTENCES)).sum(axis=1)
    assert cos.min() >= 0.9999, cos

    ga, ca = OcrReader(factory=gpu, batch=False), OcrReader(factory=cpu, batch=False)
    fa = OcrReader(factory=cpu_fixed, batch=False)
    frame = sign("GATE B52")
    prep = ga._pre(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    map_gpu, map_cpu = ga.detect_maps([prep])[0], fa.detect_maps([prep])[0]
    assert map_gpu.shape == map_cpu.shape == prep.shape[2:]
    assert float(np.abs(map_gpu - map_cpu).mean()) <= 1e-3
    # End to end, bucketed on the GPU against unbucketed on the CPU: the same lines.
    assert [ln.text for ln in ga.read(frame, 0.0)] == [ln.text for ln in ca.read(frame, 0.0)]

    vg, vc = gpu.engine(vad_spec()), cpu.engine(vad_spec())
    rng = np.random.default_rng(0)
    feeds = {
        "input": (rng.standard_normal((3, 576)) * 0.1).astype(np.float32),
        "state": np.zeros((2, 3, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }
    pg, sg = vg.run(feeds)
    pc, sc = vc.run(feeds)
    assert pg.shape == pc.shape and sg.shape == sc.shape == (2, 3, 128)
    assert float(np.abs(pg - pc).max()) <= 1e-3


def test_no_algorithm_search_once_warm(gpu: EngineFactory) -> None:
    """A line width never seen before, inside a warmed bucket, costs no more than a known one;
    no session switches input shape (each would rebuild its cuDNN plans)."""
    rec = gpu.engine(ocr_rec_spec())
    assert rec.buckets is not None and rec.shape_stats.warm_runs >= len(rec.buckets.shapes)
    switches = rec.shape_stats.switches
    name = rec.inputs()[0].name
    times = []
    for k, width in enumerate((181, 263, 337, 419, 503, 587, 611, 777)):
        crop = np.full((40, width, 3), 200, np.uint8)
        batch = np.stack([rec_input(crop, rec_width(crop))] * (1 + k % 5))
        t0 = time.perf_counter()
        rec.run({name: batch})
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times))
    assert max(times) < 10 * steady + 0.005, times
    assert rec.shape_stats.unbucketed == 0
    assert rec.shape_stats.switches == switches


def test_placement_is_measured_and_the_vad_stays_on_the_cpu(tmp_path: Path) -> None:
    """Placement times each model at its most common bucket only (one untimed run per
    shape first), so this test leaves out the warm-up of every bucket x batch size (145
    shapes over these four models; 44 s of warm-up on the H200 when each model had one
    session re-planning at every shape)."""
    f = EngineFactory(EngineSettings(cache_dir=tmp_path, warm_up="off"), "auto")
    try:
        for spec in (vad_spec(), text_spec(), ocr_rec_spec(), ocr_det_spec()):
            engine = f.engine(spec)
            assert engine.placement.startswith(engine.backend + ": measured"), engine.placement
        assert f.engine(vad_spec()).backend == "ort-cpu"
    finally:
        f.close()

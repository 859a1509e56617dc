"""Fixed input shapes (buckets): the same answers padded as unpadded, on the CPU.

Where the engines run fixed shapes (on a GPU by default; forced on here with
engines.fixed_shapes) every input is padded to one of its model's buckets and batch sizes.
These tests compare bucketed against unbucketed outputs of the real models, check that the
batcher never mixes buckets in one batch, that warm-up covers every shape, and how a model
is placed by measurement.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livesense.config import EngineSettings
from livesense.engines.batcher import Batcher
from livesense.engines.engine import TensorInfo
from livesense.engines.engine_factory import EngineFactory, choose_placement
from livesense.engines.model_spec import (
    Buckets,
    batch_sizes,
    buckets_from_inputs,
    ocr_det_canvases,
    ocr_det_spec,
    ocr_rec_spec,
    text_spec,
    vad_spec,
)
from livesense.engines.ocr import OcrReader
from livesense.engines.onnx import OnnxEngine
from livesense.engines.text import TextEmbedder
from tests.media import sign

SENTENCES = [
    "dog",
    "the train to rome leaves from platform nine at seven thirty",
    "gate b52",
    "passengers for berlin please go to gate b fifty two now, taxis wait outside exit three",
    "cafe",
]


def factory_with(tmp: Path, fixed: str, **kw: object) -> EngineFactory:
    settings = EngineSettings(cache_dir=tmp, threads=1, fixed_shapes=fixed, batch_max_size=4, **kw)
    return EngineFactory(settings, "cpu")


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    f = factory_with(tmp_path_factory.mktemp("fixed"), "on")
    yield f
    f.close()


@pytest.fixture(scope="module")
def free(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    f = factory_with(tmp_path_factory.mktemp("free"), "off")
    yield f
    f.close()


def test_text_vectors_are_the_same_padded_to_buckets(
    fixed: EngineFactory, free: EngineFactory
) -> None:
    a = TextEmbedder(factory=fixed, batch=False)
    b = TextEmbedder(factory=free, batch=False)
    assert a.engine.fixed_shapes and not b.engine.fixed_shapes
    va, vb = a.embed(SENTENCES), b.embed(SENTENCES)
    cos = (va * vb).sum(axis=1)
    assert cos.min() >= 0.9999, cos
    stats = a.engine.shape_stats
    assert stats.bucketed >= 2 and stats.unbucketed == 0
    assert stats.padded_rows > 0  # 5 texts in 3 buckets: batches of 3 and 1 padded up


def test_ocr_reads_the_same_lines_on_canvases(fixed: EngineFactory, free: EngineFactory) -> None:
    a = OcrReader(factory=fixed, batch=False)
    b = OcrReader(factory=free, batch=False)
    frame = np.concatenate([sign("PLATFORM 9", 620, 150), sign("ROME 07:30", 620, 150)])
    la, lb = a.read(frame, 0.0), b.read(frame, 0.0)
    assert [ln.text for ln in la] == [ln.text for ln in lb] != []
    for x, y in zip(la, lb, strict=True):
        assert np.abs(np.subtract(x.box, y.box)).max() <= 3, (x.box, y.box)
    # The 300x620 frame was prepared at 288x608 and ran on a larger canvas.
    assert a.det.shape_stats.bucketed >= 1 and a.det.shape_stats.unbucketed == 0
    assert a.rec.shape_stats.bucketed >= 1


def test_vad_batch_padding_keeps_each_streams_probability(
    fixed: EngineFactory, free: EngineFactory
) -> None:
    a, b = fixed.engine(vad_spec()), free.engine(vad_spec())
    rng = np.random.default_rng(1)
    feeds = {
        "input": (rng.standard_normal((3, 576)) * 0.2).astype(np.float32),
        "state": (rng.standard_normal((2, 3, 128)) * 0.1).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    pa, sa = a.run(feeds)
    pb, sb = b.run(feeds)
    assert pa.shape == pb.shape == (3, 1) and sa.shape == sb.shape == (2, 3, 128)
    assert np.allclose(pa, pb, atol=1e-5) and np.allclose(sa, sb, atol=1e-5)
    assert a.shape_stats.padded_rows >= 1  # 3 rows ran as a batch of 4


def test_batches_larger_than_the_largest_size_run_in_chunks(fixed: EngineFactory) -> None:
    rec = fixed.engine(ocr_rec_spec())
    assert rec.batch_sizes == (1, 2, 4)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3, 48, 300)).astype(np.float32)
    before = rec.shape_stats.bucketed
    (out,) = rec.run({"x": x})
    assert out.shape[0] == 6
    assert rec.shape_stats.bucketed - before == 2  # a batch of 4 and one of 2
    alone = np.concatenate([rec.run({"x": x[i : i + 1]})[0] for i in range(6)])
    assert np.allclose(out, alone, atol=1e-4)


def test_warm_up_runs_every_bucket_at_every_batch_size(tmp_path: Path) -> None:
    f = factory_with(tmp_path, "on", warm_up="on")
    try:
        rec = f.engine(ocr_rec_spec())
        assert rec.buckets is not None
        assert rec.shape_stats.warm_runs == len(rec.buckets.shapes) * len(batch_sizes(4))
        assert rec.info().buckets == len(rec.buckets.shapes)
    finally:
        f.close()


def _alternating_lines(n: int = 12) -> list[np.ndarray]:
    """Line batches of alternating width buckets and batch sizes, as cross-stream batches
    come: every call a different input shape from the one before."""
    rng = np.random.default_rng(3)
    widths = (300, 470, 300, 630, 470)
    return [
        rng.standard_normal((1 + k % 3, 3, 48, widths[k % len(widths)])).astype(np.float32)
        for k in range(n)
    ]


def test_each_shape_runs_on_a_session_of_its_own(tmp_path: Path) -> None:
    """One session fed alternating shapes switches shape on nearly every call (on ORT's CUDA
    provider each switch rebuilds every convolution's cuDNN plan); with a session per shape
    no session ever switches after warm-up, and the outputs are the same."""
    shared = factory_with(tmp_path / "a", "on", warm_up="off", session_per_shape="off")
    own = factory_with(tmp_path / "b", "on", warm_up="on", session_per_shape="on")
    try:
        a, b = shared.engine(ocr_rec_spec()), own.engine(ocr_rec_spec())
        assert isinstance(b, OnnxEngine) and b.buckets is not None
        batches = _alternating_lines()
        outs_a = [a.run({"x": x})[0] for x in batches]
        outs_b = [b.run({"x": x})[0] for x in batches]
        for x, y in zip(outs_a, outs_b, strict=True):
            assert np.allclose(x, y, atol=1e-5)
        assert a.shape_stats.switches >= len(batches) - 1
        assert b.shape_stats.switches == 0
        assert b.shape_stats.runs == len(batches)
        # the calls ran at few shapes: buckets 320/480/640 at batch sizes 1, 2 and 4
        assert b.shape_stats.as_json()["shapes_run"] <= 9
        assert b.sessions == len(b.buckets.shapes) * len(b.batch_sizes)  # all made at warm-up
    finally:
        shared.close()
        own.close()


def test_padding_writes_into_reused_buffers(fixed: EngineFactory) -> None:
    """Padding a batch to its bucket and batch size reuses a buffer per shape instead of
    allocating one per call; padded columns are zeros, padded rows repeat the last row."""
    from livesense.engines.engine import pad_into

    rec = fixed.engine(ocr_rec_spec())
    x = np.ones((3, 3, 48, 300), np.float32)
    rec.run({"x": x})
    before = rec._pool.allocated
    for _ in range(4):
        rec.run({"x": x})
        rec.run_rows({"x": list(x)})
    assert rec._pool.allocated == before
    buf = np.full((4, 3, 48, 320), 7.0, np.float32)
    x[2] = 2.0
    pad_into(buf, x, 0)
    assert (buf[:3, :, :, 300:] == 0).all() and (buf[:3, :, :, :300] == x).all()
    assert (buf[3] == buf[2]).all()


def test_the_batcher_never_mixes_buckets_and_keeps_each_callers_order() -> None:
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [x * 10 for x in items]

    b: Batcher[int, int] = Batcher("t", run, max_batch=8, max_delay=0.02, key=lambda x: x % 3)
    results: dict[int, list[int]] = {}

    def stream(i: int) -> None:
        items = [i * 100 + k for k in range(7)]
        results[i] = b(items, stream=i)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    b.close()
    for i in range(4):
        assert results[i] == [(i * 100 + k) * 10 for k in range(7)]
    assert all(len({x % 3 for x in batch}) == 1 for batch in seen), seen
    assert max(len(batch) for batch in seen) > 1  # streams did share batches


def test_buckets_fit_the_smallest_shape_that_holds_an_item() -> None:
    canvases = ocr_det_canvases(960)
    assert (384, 640) in canvases and (544, 960) in canvases and (960, 960) in canvases
    assert all(h % 32 == 0 and w % 32 == 0 and max(h, w) <= 960 for h, w in canvases)
    det = ocr_det_spec().buckets
    assert det is not None
    k = det.fit({"x": (1, 3, 352, 640)})  # a 640x360 frame, prepared
    assert k is not None and det.shapes[k]["x"] == (1, 3, 384, 640)
    assert det.fit({"x": (1, 3, 1000, 640)}) is None
    text = text_spec().buckets
    assert text is not None and text.fit({"input_ids": (1, 9), "attention_mask": (1, 9)}) == 1
    assert batch_sizes(16) == (1, 2, 4, 8, 16) and batch_sizes(12) == (1, 2, 4, 8, 12)
    with pytest.raises(ValueError):
        Buckets.of({"x": (2, 3)})  # shapes are given at batch 1


def test_a_model_with_one_fixed_size_gets_its_bucket_and_profile_from_onnx() -> None:
    inputs = [TensorInfo("images", ["batch", 3, 416, 416], "tensor(float)")]
    b = buckets_from_inputs(inputs)
    assert b is not None and b.shapes == ({"images": (1, 3, 416, 416)},)
    assert b.max_batch is None
    assert buckets_from_inputs([TensorInfo("ids", ["b", "t"], "tensor(int64)")]) is None
    one = buckets_from_inputs([TensorInfo("x", [1, 3, 224, 224], "tensor(float)")])
    assert one is not None and one.max_batch == 1  # a file exported at batch 1 only
    from livesense.engines.model_spec import ModelSpec

    spec = ModelSpec("objects", Path("nanodet.onnx"))
    assert spec.profile(16, inputs) == {
        "images": ((1, 3, 416, 416), (8, 3, 416, 416), (16, 3, 416, 416))
    }


def test_placement_goes_where_the_model_is_faster_and_says_why() -> None:
    sizes = [1, 16]
    winner, why = choose_placement({"ort-cuda": [5e-4, 6e-5], "ort-cpu": [1e-4, 2e-4]}, sizes)
    assert winner == "ort-cuda"  # split: the full batch decides
    assert why.startswith("ort-cuda: measured per item ort-cuda 0.5 ms at 1")
    winner, _ = choose_placement({"ort-cuda": [5.7e-4, 1.1e-3], "ort-cpu": [1.3e-4, 2e-4]}, sizes)
    assert winner == "ort-cpu"  # slower on the GPU at every size
    # The VAD as measured on an H200: 6x slower on the GPU alone, 1.1x faster at 16.
    winner, _ = choose_placement({"ort-cuda": [8.2e-4, 6.7e-5], "ort-cpu": [1.3e-4, 7.7e-5]}, sizes)
    assert winner == "ort-cpu"


def test_a_file_exported_at_batch_one_runs_bigger_batches_one_by_one(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from livesense.engines.model_spec import ModelSpec

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    f = factory_with(tmp_path, "on")
    try:
        engine = f.engine(ModelSpec("tiny", path))
        assert engine.batch_sizes == (1,)
        x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
        (y,) = engine.run({"x": x})
        assert np.array_equal(y, np.maximum(x, 0))
        assert engine.shape_stats.bucketed == 3
    finally:
        f.close()


def test_rows_run_as_one_batch_with_their_batch_axis(
    fixed: EngineFactory, free: EngineFactory
) -> None:
    """run_rows stacks each item's rows along the input's batch axis (silero's state: 1),
    padded or not, and gives the same outputs as the stacked batch through run."""
    rng = np.random.default_rng(4)
    inputs = [(rng.standard_normal((1, 576)) * 0.2).astype(np.float32) for _ in range(3)]
    states = [(rng.standard_normal((2, 1, 128)) * 0.1).astype(np.float32) for _ in range(3)]
    sr = {"sr": np.array(16000, np.int64)}
    stacked = {"input": np.concatenate(inputs), "state": np.concatenate(states, axis=1), **sr}
    for f in (fixed, free):
        vad = f.engine(vad_spec())
        p, s = vad.run(stacked)
        pr, sr_ = vad.run_rows({"input": inputs, "state": states}, None, sr, {"state": 1})
        assert pr.shape == p.shape == (3, 1) and sr_.shape == s.shape == (2, 3, 128)
        assert np.allclose(p, pr, atol=1e-6) and np.allclose(s, sr_, atol=1e-6)

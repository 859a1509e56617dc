"""The CLIP slot, with a tiny randomly initialised two-tower model built and exported here.

The towers are built twice: with onnx.helper (always) and with torch (where installed), and
both go through the same ClipEncoder path an operator's exported CLIP would.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from livesense.config import PerceptionSettings
from livesense.engines.clip import CLIP_MEAN, ClipEncoder
from livesense.engines.models import minilm_tokenizer
from livesense.errors import ConfigError, ModelMissingError
from livesense.pipeline.vision import VisionPerception
from livesense.records import Features, Snippet, VideoFrame

SIZE = 32  # the image tower's fixed input size, read back by ClipEncoder
DIM = 16
VOCAB = 30522  # as large as the MiniLM fallback tokenizer's vocabulary
WORDS = ["[PAD]", "[UNK]", "a", "red", "blue", "square", "circle", "and", "on", "screen"]


def write_tokenizer(path: Path) -> None:
    """A tiny lower-casing WordLevel tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def build_with_onnx(folder: Path) -> tuple[Path, Path]:
    """Image: conv 4x4/4 -> relu -> global mean -> linear. Text: embedding, masked mean, linear."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    image = helper.make_graph(
        [
            helper.make_node("Conv", ["pixel_values", "cw", "cb"], ["c"], strides=[4, 4]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "fw", "fb"], ["image_embeds"], transB=1),
        ],
        "image_tower",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["N", DIM])],
        [init("cw", 8, 3, 4, 4), init("cb", 8), init("fw", DIM, 8), init("fb", DIM)],
    )
    consts = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    text = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["e"]),
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
            helper.make_node("Mul", ["e", "m3"], ["em"]),
            helper.make_node("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
            helper.make_node("ReduceSum", ["m", "axis1"], ["n"], keepdims=1),
            helper.make_node("Max", ["n", "one"], ["n1"]),
            helper.make_node("Div", ["s", "n1"], ["mean"]),
            helper.make_node("Gemm", ["mean", "pw", "pb"], ["text_embeds"], transB=1),
        ],
        "text_tower",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "T"]),
        ],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["N", DIM])],
        [init("table", VOCAB, DIM), init("pw", DIM, DIM), init("pb", DIM), *consts],
    )
    paths = folder / "image.onnx", folder / "text.onnx"
    for graph, path in zip((image, text), paths, strict=True):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return paths


def build_with_torch(folder: Path) -> tuple[Path, Path]:
    """The same two towers as torch modules, exported with torch.onnx."""
    torch: Any = pytest.importorskip("torch")
    nn: Any = torch.nn
    torch.manual_seed(0)

    class Image(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, stride=4)
            self.fc = nn.Linear(8, DIM)

        def forward(self, x: Any) -> Any:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    class Text(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(VOCAB, DIM)
            self.proj = nn.Linear(DIM, DIM)

        def forward(self, ids: Any, mask: Any) -> Any:
            m = mask.float().unsqueeze(-1)
            mean = (self.table(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.proj(mean)

    paths = folder / "image.onnx", folder / "text.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Image().eval(),
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(paths[0]),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "N"}, "image_embeds": {0: "N"}},
        )
        ids = torch.ones(1, 5, dtype=torch.int64)
        torch.onnx.export(
            Text().eval(),
            (ids, torch.ones_like(ids)),
            str(paths[1]),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "N", 1: "T"}, "attention_mask": {0: "N", 1: "T"}},
        )
    return paths


@pytest.fixture(scope="module", params=["onnx", "torch"])
def towers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp(f"clip-{request.param}")
    builder = build_with_onnx if request.param == "onnx" else build_with_torch
    image, text = builder(folder)
    write_tokenizer(folder / "tokenizer.json")
    return image, text


def frame(rgb: tuple[int, int, int], h: int = 360, w: int = 640) -> np.ndarray:
    img = np.full((h, w, 3), rgb, np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, (255, 255, 255), -1)
    return img


def test_clip_encoder_shapes_normalisation_and_determinism(towers: tuple[Path, Path]) -> None:
    enc = ClipEncoder(*towers, threads=1)
    assert enc.size == (SIZE, SIZE) and enc.dim == DIM
    assert enc.tokenizer_path == towers[1].parent / "tokenizer.json"

    images = [frame((200, 0, 0)), frame((0, 0, 200), 100, 50), frame((0, 150, 0), 64, 64)]
    a = enc.embed_images(images)
    assert a.shape == (3, DIM) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, enc.embed_images(images))
    assert np.allclose(a[1], enc.embed_images([images[1]])[0], atol=1e-5)  # batch-independent
    assert float(a[0] @ a[1]) < 0.999  # different pictures, different vectors

    texts = ["a red square", "a blue circle on screen", "RED   square a"]
    t = enc.embed_texts(texts)
    assert t.shape == (3, DIM) and t.dtype == np.float32
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(t, enc.embed_texts(texts))
    assert np.allclose(t[0], t[2], atol=1e-5)  # same tokens (mean pooled), via tokenizer.json
    assert float(t[0] @ t[1]) < 0.999
    # The attention mask reaches the tower: padding next to a longer text changes nothing.
    assert np.allclose(t[0], enc.embed_texts(["a red square"])[0], atol=1e-5)
    assert enc.embed_images([]).shape == (0, DIM) and enc.embed_texts([]).shape == (0, DIM)


def test_clip_images_get_clip_normalisation_in_rgb_order(towers: tuple[Path, Path]) -> None:
    """A picture of the CLIP mean colour must reach the tower as (almost) all zeros."""
    enc = ClipEncoder(*towers, threads=1)
    mean_rgb = np.full((120, 200, 3), np.round(CLIP_MEAN * 255), np.uint8)
    session = ort.InferenceSession(str(towers[0]), providers=["CPUExecutionProvider"])
    zero = session.run(None, {"pixel_values": np.zeros((1, 3, SIZE, SIZE), np.float32)})[0][0]
    assert float(enc.embed_images([mean_rgb])[0] @ (zero / np.linalg.norm(zero))) > 0.999


def test_clip_without_a_tokenizer_file_uses_the_packaged_one(
    towers: tuple[Path, Path], tmp_path: Path
) -> None:
    image, text = towers
    lone = tmp_path / "text.onnx"
    lone.write_bytes(text.read_bytes())
    enc = ClipEncoder(image, lone, threads=1)
    assert enc.tokenizer_path == minilm_tokenizer()
    t = enc.embed_texts(["a red square", "a train at platform nine"])
    assert t.shape == (2, DIM) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_clip_missing_files_say_which(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="image tower .*nope.onnx does not exist"):
        ClipEncoder(tmp_path / "nope.onnx", tmp_path / "text.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelMissingError, match="text tower .*text.onnx does not exist"):
        ClipEncoder(tmp_path / "broken.onnx", tmp_path / "text.onnx")
    with pytest.raises(ModelMissingError, match="could not be loaded"):
        ClipEncoder(tmp_path / "broken.onnx", tmp_path / "broken.onnx")
    with pytest.raises(ConfigError, match="both"):
        VisionPerception(PerceptionSettings(clip_image=str(tmp_path / "broken.onnx")))


def test_vision_stage_puts_the_keyframe_embedding_in_features(towers: tuple[Path, Path]) -> None:
    settings = PerceptionSettings(
        ocr=False, faces=False, clip_image=str(towers[0]), clip_text=str(towers[1])
    )
    vision = VisionPerception(settings)  # the slot is loaded from the settings' paths
    assert vision.clip is not None
    picture = frame((30, 90, 200))
    snip = Snippet("cam", 0, 0.0, 2.0, frames=[VideoFrame(k * 0.5, picture) for k in range(4)])
    features = Features()
    vision.process(snip, features)
    emb = features.image_embedding
    assert emb is not None and emb.shape == (DIM,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    assert np.allclose(emb, vision.clip.embed_images([picture])[0], atol=1e-6)
    assert features.skipped == []

    shed = Features()
    vision.process(Snippet("cam", 1, 2.0, 4.0, frames=snip.frames), shed, shed=2)
    assert shed.image_embedding is None and shed.skipped == ["clip"]

"""The CLIP-family slot: an image tower and a text tower from local ONNX files.

No CLIP-family weights ship on PyPI, so livesense runs without this slot by default; an
operator who has the weights exports the two towers and points the settings at them
(`perception.clip_image`, `perception.clip_text`).

The I/O contract of the two ONNX files:

- image tower: input `pixel_values` float32 (N, 3, H, W) (any name if it is the only input);
  H and W are read from the model's input shape (224 where they are symbolic). Images are
  resized so the short side is H (bicubic), centre-cropped to H x W, scaled to 0..1 and
  normalised with the CLIP mean and std (`CLIP_MEAN`, `CLIP_STD`, RGB order).
- text tower: input `input_ids` int64 (N, T) and optionally `attention_mask` int64 (N, T).
  Texts are tokenised with the `tokenizers` file `tokenizer.json` that lies next to the text
  ONNX file, or, where there is none, with the packaged MiniLM (BERT WordPiece) tokenizer.
  A fixed T in the model's input shape is padded/truncated to; a symbolic T is capped at 77.
- each tower's first output is the embedding (N, D), D equal for both towers; livesense
  L2-normalises it, so the towers need not.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from livesense.engines.batcher import Batcher
from livesense.engines.engine import Engine, TensorInfo
from livesense.engines.engine_factory import EngineFactory, shared_factory
from livesense.engines.model_spec import clip_image_spec, clip_text_spec
from livesense.engines.models import minilm_tokenizer
from livesense.engines.onnx import OnnxEngine
from livesense.errors import ModelMissingError

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
DEFAULT_SIZE = 224
DEFAULT_TOKENS = 77
BATCH = 16


class ClipEncoder:
    """Embeds images and texts into one shared space: float32 (N, D), L2-normalised."""

    def __init__(
        self,
        image_onnx: Path,
        text_onnx: Path,
        *,
        threads: int = 1,
        providers: list[str] | None = None,
        max_tokens: int = DEFAULT_TOKENS,
        factory: EngineFactory | None = None,
        batch: bool = True,
    ) -> None:
        image_onnx, text_onnx = Path(image_onnx), Path(text_onnx)
        for path, which, key in (
            (image_onnx, "image", "clip_image"),
            (text_onnx, "text", "clip_text"),
        ):
            if not path.is_file():
                raise ModelMissingError(
                    f"The CLIP {which} tower {path} does not exist; set perception.{key} to a "
                    "local ONNX file you exported (livesense ships no CLIP weights)."
                )
        factory = factory or shared_factory()
        if providers:  # explicit onnxruntime providers: a private session, as before
            kw: dict[str, Any] = {"threads": threads, "providers": providers}
            self.image_engine: Engine = _load(image_onnx, "clip-image", kw)
            self.text_engine: Engine = _load(text_onnx, "clip-text", kw)
        else:
            self.image_engine = _load_spec(factory, clip_image_spec(image_onnx), threads)
            self.text_engine = _load_spec(factory, clip_text_spec(text_onnx, max_tokens), threads)

        inputs = self.image_engine.inputs()
        self._pixel = _pick(inputs, "pixel_values", image_onnx, "image")
        shape = self._pixel.shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise _contract(image_onnx, f"its input has shape {shape}, not (N, 3, H, W)")
        self.size = (_dim(shape[2], DEFAULT_SIZE), _dim(shape[3], DEFAULT_SIZE))  # (H, W)
        self._pixel_dtype = np.float16 if "float16" in self._pixel.dtype else np.float32
        self._image_batch = _dim(shape[0], BATCH)

        tinputs = self.text_engine.inputs()
        self._ids = _pick(tinputs, "input_ids", text_onnx, "text")
        names = {i.name for i in tinputs}
        extra = names - {self._ids.name, "attention_mask"}
        if extra:
            raise _contract(text_onnx, f"it needs inputs {sorted(extra)} besides input_ids")
        self._with_mask = "attention_mask" in names
        self._text_batch = _dim(self._ids.shape[0], BATCH)
        fixed = self._ids.shape[1] if len(self._ids.shape) == 2 else None
        self.max_tokens = fixed if isinstance(fixed, int) and fixed > 0 else max_tokens

        from tokenizers import Tokenizer

        local = text_onnx.parent / "tokenizer.json"
        self.tokenizer_path = local if local.is_file() else minilm_tokenizer()
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        pad = self.tokenizer.padding or {}
        pad_id = int(pad.get("pad_id", _pad_id(self.tokenizer)))
        pad_token = str(pad.get("pad_token", self.tokenizer.id_to_token(pad_id) or "[PAD]"))
        self.tokenizer.enable_padding(
            pad_id=pad_id,
            pad_token=pad_token,
            length=self.max_tokens if isinstance(fixed, int) and fixed > 0 else None,
        )
        self._lock = threading.Lock()  # the tokenizer's padding state is shared

        dims = {d for e in (self.image_engine, self.text_engine) if (d := _last(e)) is not None}
        if len(dims) > 1:
            raise _contract(image_onnx, f"the towers' embedding sizes differ ({sorted(dims)})")
        self.dim: int | None = dims.pop() if dims else None
        self.image_batcher: Batcher[np.ndarray, np.ndarray] | None = None
        self.text_batcher: Batcher[str, np.ndarray] | None = None
        if batch and not providers:
            key = f"{image_onnx.resolve()}|{text_onnx.resolve()}"
            self.image_batcher = factory.batcher(
                f"clip-image:{key}", self._image_rows, max_batch=self._image_batch
            )
            self.text_batcher = factory.batcher(
                f"clip-text:{key}", self._text_rows, max_batch=self._text_batch
            )

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray:
        """One RGB uint8 image as a normalised (3, H, W) float32 array."""
        out_h, out_w = self.size
        h, w = image_rgb.shape[:2]
        scale = max(out_h / h, out_w / w)
        size = (max(out_w, round(w * scale)), max(out_h, round(h * scale)))
        resized = cv2.resize(np.ascontiguousarray(image_rgb), size, interpolation=cv2.INTER_CUBIC)
        y0 = (resized.shape[0] - out_h) // 2
        x0 = (resized.shape[1] - out_w) // 2
        crop = resized[y0 : y0 + out_h, x0 : x0 + out_w].astype(np.float32) / 255.0
        return ((crop - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)

    def embed_images(self, images: list[np.ndarray], stream: Hashable | None = None) -> np.ndarray:
        """Image embeddings (N, D) of RGB uint8 (H, W, 3) images."""
        if not images:
            return np.zeros((0, self.dim or 0), np.float32)
        pixels = [self.preprocess(im) for im in images]
        if self.image_batcher is not None:
            return np.stack(self.image_batcher(pixels, stream))
        return np.stack(self._image_rows(pixels))

    def _image_rows(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i in range(0, len(pixels), self._image_batch):
            batch = np.stack(pixels[i : i + self._image_batch])
            feeds = {self._pixel.name: batch.astype(self._pixel_dtype)}
            out.append(self._embed(self.image_engine, feeds))
        return list(np.concatenate(out))

    def embed_texts(self, texts: list[str], stream: Hashable | None = None) -> np.ndarray:
        """Text embeddings (N, D)."""
        if not texts:
            return np.zeros((0, self.dim or 0), np.float32)
        if self.text_batcher is not None:
            return np.stack(self.text_batcher(list(texts), stream))
        return np.stack(self._text_rows(list(texts)))

    def _text_rows(self, texts: list[str]) -> list[np.ndarray]:
        out = []
        for i in range(0, len(texts), self._text_batch):
            with self._lock:
                chunk = [t or " " for t in texts[i : i + self._text_batch]]
                encs = self.tokenizer.encode_batch(chunk)
            feeds = {self._ids.name: np.array([e.ids for e in encs], np.int64)}
            if self._with_mask:
                feeds["attention_mask"] = np.array([e.attention_mask for e in encs], np.int64)
            out.append(self._embed(self.text_engine, feeds))
        return list(np.concatenate(out))

    def _embed(self, engine: Engine, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            first = engine.run(feeds)[0]
        except Exception as e:  # onnxruntime raises its own exception types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _contract(engine.path, f"it failed on its input ({reason})") from None
        emb = np.asarray(first, np.float32)
        if emb.ndim != 2:
            raise _contract(engine.path, f"its first output has shape {emb.shape}, not (N, D)")
        if self.dim is None:
            self.dim = int(emb.shape[1])
        elif emb.shape[1] != self.dim:
            raise _contract(engine.path, f"it makes {emb.shape[1]}-d vectors, not {self.dim}-d")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)


def _load(path: Path, name: str, kw: dict[str, Any]) -> OnnxEngine:
    try:
        return OnnxEngine(path, name=name, **kw)
    except Exception as e:  # a corrupt or non-ONNX file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelMissingError(f"The CLIP model {path} could not be loaded ({reason}).") from None


def _load_spec(factory: EngineFactory, spec: Any, threads: int) -> Engine:
    try:
        return factory.engine(spec, threads=threads)
    except Exception as e:  # a corrupt or non-ONNX file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelMissingError(
            f"The CLIP model {spec.path} could not be loaded ({reason})."
        ) from None


def _pick(inputs: list[TensorInfo], name: str, path: Path, which: str) -> TensorInfo:
    for info in inputs:
        if info.name == name:
            return info
    if len(inputs) == 1 and which == "image":
        return inputs[0]
    raise _contract(path, f"it has no input named '{name}'")


def _dim(value: int | str | None, default: int) -> int:
    return value if isinstance(value, int) and value > 0 else default


def _last(engine: Engine) -> int | None:
    shape = engine.outputs()[0].shape
    d = shape[-1] if shape else None
    return d if isinstance(d, int) and d > 0 else None


def _pad_id(tokenizer: Any) -> int:
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return int(idx)
    return 0


def _contract(path: Path, why: str) -> ModelMissingError:
    return ModelMissingError(
        f"The CLIP model {path} does not follow the slot's contract: {why} "
        "(see livesense/engines/clip.py)."
    )

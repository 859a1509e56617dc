"""Store an ONNX model's float32 weights as float16, cast back to float32 in the graph.

The file is about half the size; the arithmetic stays float32, since ONNX Runtime (and
TensorRT) fold the casts of constant weights once, when the model loads. Used by the
conversion scripts next to this file.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_SIZE = 64
"""Weights with fewer elements (shapes, scales) stay as they are."""


def fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each large float32 initializer replaced by float16 + a Cast node."""
    graph = model.graph
    casts = []
    kept = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_SIZE:
            kept.append(init)
            continue
        half = numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16"
        )
        kept.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model

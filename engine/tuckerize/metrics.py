"""Parameter and MAC counts from an ONNX graph's shapes.

MACs are multiply-accumulates per image (one sample of the leading batch dim) at the input size the
shapes were inferred for. Counted: Conv, ConvTranspose, Gemm and MatMul — the products of weights and
activations. Not counted, as in torchvision's published figures: biases, BatchNormalization,
activations, pooling, elementwise Add/Mul, Softmax, LRN, resizing. The layer formulas (also used by
plan.py for rewritten layers) are the standalone functions below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import onnx

from .onnx_graph import ALL_FLOAT_TYPES, Shape, infer_shapes, node_labels


def conv_macs(out_channels: int, in_channels_per_group: int, kernel: Sequence[int],
              out_spatial: Sequence[int]) -> int:
    """Each output element costs (C_in / group)·k_h·k_w multiply-accumulates."""
    return out_channels * math.prod(out_spatial) * in_channels_per_group * math.prod(kernel)


def matmul_macs(rows: int, inner: int, cols: int) -> int:
    return rows * inner * cols


def param_count(model: onnx.ModelProto) -> int:
    """Elements of all floating-point initializers, counting Identity aliases of them again.

    torch.onnx.export stores equal tensors once behind Identity nodes (the zero biases of a fresh
    VGG-16, say); they are still separate parameters of the network. Integer tensors (shapes,
    indices) and the scalar attributes of Constant nodes (Clip bounds) are not parameters.
    """
    floats = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.data_type in ALL_FLOAT_TYPES}
    total = sum(floats.values())
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in floats:
            floats[node.output[0]] = floats[node.input[0]]
            total += floats[node.input[0]]
    return total


def _per_image(shape: Optional[Shape]) -> Optional[int]:
    """Elements of one sample of a tensor: everything but the leading (batch) dim."""
    if shape is None or any(d is None for d in shape) or len(shape) < 2:
        return None
    return math.prod(shape[1:])


def node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> Optional[int]:
    """MACs of one node per image; 0 for uncounted ops; None when a needed shape is unknown."""
    op = node.op_type
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    output = shapes.get(node.output[0])
    if op == "Conv":
        weight = shapes.get(node.input[1])
        out_elems = _per_image(output)
        if weight is None or out_elems is None:
            return None
        # out_elems = C_out·H·W; every one takes (C_in/g)·k_h·k_w products.
        return out_elems * math.prod(weight[1:])
    if op == "ConvTranspose":
        weight = shapes.get(node.input[1])
        in_elems = _per_image(shapes.get(node.input[0]))
        if weight is None or in_elems is None:
            return None
        # Every input element is scattered through (C_out/g)·k_h·k_w products.
        return in_elems * math.prod(weight[1:])
    a_shape = shapes.get(node.input[0])
    out_elems = _per_image(output)
    if a_shape is None or out_elems is None or a_shape[-1] is None:
        return None
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        inner = a_shape[0] if trans_a else a_shape[-1]
    else:
        inner = a_shape[-1]
    if output is not None and len(output) == 1:
        return output[0] * inner  # vector·matrix: no batch dim
    return out_elems * inner


@dataclass
class GraphMetrics:
    params: int
    macs: int
    node_macs: dict[str, int]
    unknown: list[str]  # labels of nodes whose MACs could not be computed (shape unknown)


def graph_metrics(model: onnx.ModelProto, input_shape: Optional[Sequence[int]] = None,
                  shapes: Optional[dict[str, Shape]] = None) -> GraphMetrics:
    if shapes is None:
        shapes = infer_shapes(model, input_shape)
    per_node: dict[str, int] = {}
    unknown: list[str] = []
    for label, node in zip(node_labels(model), model.graph.node):
        macs = node_macs(node, shapes)
        if macs is None:
            unknown.append(label)
        elif macs:
            per_node[label] = macs
    return GraphMetrics(params=param_count(model), macs=sum(per_node.values()), node_macs=per_node,
                        unknown=unknown)

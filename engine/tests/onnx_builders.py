"""Small hand-built ONNX graphs for the graph, plan, surgery, CLI and run tests."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def make_model(nodes, inputs, outputs, initializers, opset: int = 13, ir_version: Optional[int] = None):
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def value(name: str, shape, dtype=np.float64):
    return helper.make_tensor_value_info(name, DTYPES[dtype], list(shape) if shape is not None else None)


def conv_model(weight: np.ndarray, input_hw: Sequence[int], bias: Optional[np.ndarray] = None,
               opset: int = 13, **attributes) -> onnx.ModelProto:
    """One Conv node `conv` with weight `W` (and bias `b`), dtype of the weight, output shape left to inference."""
    dtype = weight.dtype.type
    S = weight.shape[1] * attributes.get("group", 1)
    inputs = ["x", "W"] + (["b"] if bias is not None else [])
    initializers = [numpy_helper.from_array(weight, "W")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.astype(weight.dtype), "b"))
    node = helper.make_node("Conv", inputs, ["y"], name="conv", **attributes)
    model = make_model([node], [value("x", [1, S, *input_hw], dtype)], [value("y", None, dtype)], initializers,
                       opset)
    return _with_output_shape(model)


def _with_output_shape(model: onnx.ModelProto) -> onnx.ModelProto:
    """The checker wants graph outputs typed with a shape; take it from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in inferred.graph.value_info}
    known.update({v.name: v for v in inferred.graph.output if v.type.tensor_type.HasField("shape")})
    outputs = [known.get(o.name, o) for o in model.graph.output]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return model


def gemm_model(weight: np.ndarray, batch: int = 2, bias: Optional[np.ndarray] = None, **attributes):
    dtype = weight.dtype.type
    trans_b = attributes.get("transB", 0)
    in_dim = weight.shape[1] if trans_b else weight.shape[0]
    out_dim = weight.shape[0] if trans_b else weight.shape[1]
    inputs = ["x", "B"] + (["C"] if bias is not None else [])
    initializers = [numpy_helper.from_array(weight, "B")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.astype(weight.dtype), "C"))
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", **attributes)
    return make_model([node], [value("x", [batch, in_dim], dtype)], [value("y", [batch, out_dim], dtype)],
                      initializers)


def matmul_model(weight: np.ndarray, input_shape: Sequence[int]):
    dtype = weight.dtype.type
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    out_shape = list(input_shape[:-1]) + [weight.shape[1]]
    return make_model([node], [value("x", input_shape, dtype)], [value("y", out_shape, dtype)],
                      [numpy_helper.from_array(weight, "W")])


def low_rank_kernel(rng, T: int, S: int, kh: int, kw: int, r_out: int, r_in: int, dtype=np.float64):
    """A kernel of exact multilinear rank (r_out, r_in): core ×₀ U ×₁ V."""
    core = rng.standard_normal((r_out, r_in, kh, kw))
    U = np.linalg.qr(rng.standard_normal((T, r_out)))[0]
    V = np.linalg.qr(rng.standard_normal((S, r_in)))[0]
    return (np.einsum("oihw,to,si->tshw", core, U, V) * 3.0).astype(dtype)


def tiny_cnn(rng, dtype=np.float32, channels: int = 16, classes: int = 10, size: int = 16,
             structured: bool = True) -> onnx.ModelProto:
    """A grey-image CNN: stem 3×3 (1→C, Tucker-1 material), 3×3 C→2C stride 2 (Tucker-2), 1×1 2C→2C
    (SVD), ReLUs, global pooling, Flatten and a Gemm head. With `structured`, weights have low
    multilinear rank plus noise, so EVBMF finds ranks between 0 and full (as on trained nets)."""
    C = channels

    def kernel(T, S, k, r_out, r_in):
        if structured:
            w = low_rank_kernel(rng, T, S, k, k, r_out, r_in) + 0.05 * rng.standard_normal((T, S, k, k))
        else:
            w = rng.standard_normal((T, S, k, k))
        return (w / np.sqrt(S * k * k)).astype(dtype)

    def matrix(out_dim, in_dim, r):
        w = rng.standard_normal((out_dim, r)) @ rng.standard_normal((r, in_dim)) * 2.0
        w = w + 0.05 * rng.standard_normal((out_dim, in_dim)) if structured else rng.standard_normal((out_dim, in_dim))
        return (w / np.sqrt(in_dim)).astype(dtype)

    tensors = {
        "stem.w": kernel(C, 1, 3, 4, 1), "stem.b": rng.standard_normal(C).astype(dtype) * 0.1,
        "conv2.w": kernel(2 * C, C, 3, 6, 5), "conv2.b": rng.standard_normal(2 * C).astype(dtype) * 0.1,
        "pw.w": matrix(2 * C, 2 * C, 4).reshape(2 * C, 2 * C, 1, 1),
        "fc.w": matrix(classes, 2 * C, 3), "fc.b": rng.standard_normal(classes).astype(dtype) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["input", "stem.w", "stem.b"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["s_relu"], name="stem_relu"),
        helper.make_node("Conv", ["s_relu", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["c2_relu"], name="conv2_relu"),
        helper.make_node("Conv", ["c2_relu", "pw.w"], ["p"], name="pw"),
        helper.make_node("GlobalAveragePool", ["p"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], name="fc", transB=1),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in tensors.items()]
    return make_model(nodes, [value("input", ["N", 1, size, size], dtype)], [value("output", ["N", classes], dtype)],
                      initializers)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64: float32 initializers, Constant values and declared types widened.

    Lets the zoo's float32 exports be checked for exactness at float64 precision (atol 1e-10).
    """
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    graph = wide.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float64),
                                                             attribute.t.name))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    return wide

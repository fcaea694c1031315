"""Carrying out a plan on an ONNX graph: each planned node becomes a chain of smaller nodes.

  Conv k×k, tucker2:  1×1 (S→r_in)  →  k×k core (r_in→r_out; original strides/pads/dilations/
                      auto_pad)  →  1×1 (r_out→T, with the original bias)
  Conv k×k, tucker1:  k×k core (S→r_out; original attributes)  →  1×1 (r_out→T, bias)
  Conv k×k, tucker1in: 1×1 (S→r_in)  →  k×k core (r_in→T; original attributes, bias)
  Conv 1×1, svd:      1×1 (S→r; original strides/pads)  →  1×1 (r→T, bias)
  Gemm, svd:          Gemm(A, first, transB=1)  →  Gemm(·, second, transB=1, alpha, beta, C)
  MatMul, svd:        MatMul(X, firstᵀ)  →  MatMul(·, secondᵀ)

Zero padding commutes with a bias-free 1×1 conv (it maps zeros to zeros), so the first factor may run
before the core's padding, and the bias belongs to the last factor only. The input model is never
modified; the result keeps its opset and IR version.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .errors import EngineInputError
from .onnx_graph import constant_tensors, node_labels, read_only_tensor
from .plan import Plan
from .tucker import svd_factors, tucker1, tucker1_in, tucker2

ProgressFn = Callable[[int, int, str], None]


@dataclass
class RewriteResult:
    model: onnx.ModelProto
    rel_errors: dict[str, float] = field(default_factory=dict)   # layer name → ‖W − Ŵ‖/‖W‖
    # seconds per decomposition kind ('tucker2', 'tucker1', 'svd') and for graph building ('graph')
    timings: dict[str, float] = field(default_factory=dict)


class _Names:
    """Fresh tensor/node names derived from existing ones, never colliding with the graph's."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.taken = {t.name for t in graph.initializer} | {v.name for v in graph.input} | \
                     {v.name for v in graph.output} | {v.name for v in graph.value_info}
        for node in graph.node:
            self.taken.update(node.input)
            self.taken.update(node.output)
            self.taken.add(node.name)

    def fresh(self, base: str) -> str:
        name, counter = base, 1
        while name in self.taken:
            name = f"{base}_{counter}"
            counter += 1
        self.taken.add(name)
        return name


def apply_plan(model: onnx.ModelProto, plan: Plan, hooi_iters: int = 2) -> onnx.ModelProto:
    return rewrite(model, plan, hooi_iters=hooi_iters).model


def rewrite(model: onnx.ModelProto, plan: Plan, hooi_iters: int = 2,
            progress: Optional[ProgressFn] = None) -> RewriteResult:
    """Apply every non-'keep' entry of the plan; returns the new model with per-layer errors."""
    timings = {"graph": 0.0}
    graph_start = time.perf_counter()
    # Everything but the nodes and the weights: copying VGG-16's 553 MB of initializers only to drop the
    # replaced ones took 1.6 s; the ones still read are copied at the end.
    result = _copy_without(model, {"graph"})
    result.graph.CopyFrom(_copy_without(model.graph, {"node", "initializer"}))
    graph = result.graph
    constants = constant_tensors(model)
    labels = node_labels(model)
    names = _Names(model)
    planned = {entry.name: entry for entry in plan.rewritten()}
    unknown = set(planned) - set(labels)
    if unknown:
        raise EngineInputError(
            f"plan names layers {sorted(unknown)[:5]} that the model does not have; was the plan made for "
            "another model?")

    new_nodes: list[onnx.NodeProto] = []
    new_initializers: list[onnx.TensorProto] = []
    rel_errors: dict[str, float] = {}
    total, done = len(planned), 0
    timings["graph"] += time.perf_counter() - graph_start
    for label, node in zip(labels, model.graph.node):
        entry = planned.get(label)
        if entry is None:
            new_nodes.append(node)
            continue
        weight_name = node.input[1]
        if weight_name not in constants:
            raise EngineInputError(f"layer {label!r} ({node.op_type}): weight {weight_name!r} is not a constant")
        weight_proto = constants[weight_name]
        weight = numpy_helper.to_array(weight_proto)
        _check_plan_matches(entry, node, weight)
        start = time.perf_counter()
        factors, rel_errors[label] = _decompose(entry, node, weight, hooi_iters)
        timings[entry.kind] = timings.get(entry.kind, 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        nodes, tensors = _replacement(entry, node, weight_name, factors, weight.dtype, names)
        new_nodes.extend(nodes)
        new_initializers.extend(tensors)
        timings["graph"] += time.perf_counter() - start
        done += 1
        if progress is not None:
            progress(done, total, label)

    start = time.perf_counter()
    graph.node.extend(new_nodes)
    _drop_dead_constants(graph)
    used = _used_names(graph)
    graph.initializer.extend(t for t in model.graph.initializer if t.name in used)
    graph.initializer.extend(new_initializers)
    _drop_declarations(graph, {t.name for t in model.graph.initializer if t.name not in used})
    if result.ir_version < 4:
        # Before IR 4 every initializer must also be declared as a graph input.
        declared = {v.name for v in graph.input}
        for tensor in new_initializers:
            if tensor.name not in declared:
                graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    timings["graph"] += time.perf_counter() - start
    return RewriteResult(result, rel_errors, timings)


def _check_plan_matches(entry, node, weight: np.ndarray) -> None:
    if entry.op != node.op_type:
        raise EngineInputError(f"plan says layer {entry.name!r} is {entry.op} but the model's node is {node.op_type}")
    if entry.weight_shape is not None and list(weight.shape) != list(entry.weight_shape):
        raise EngineInputError(
            f"plan gives layer {entry.name!r} weight shape {entry.weight_shape}, the model has "
            f"{list(weight.shape)}; re-plan for this model")
    if weight.dtype not in (np.float32, np.float64):
        raise EngineInputError(f"layer {entry.name!r}: weight dtype {weight.dtype} cannot be decomposed")
    bounds = _max_ranks(entry.kind, node.op_type, weight, node)
    if len(entry.ranks) != len(bounds) or any(r < 1 or r > b for r, b in zip(entry.ranks, bounds)):
        raise EngineInputError(
            f"layer {entry.name!r}: {entry.kind} ranks {entry.ranks} must be {len(bounds)} integers in "
            f"[1, {bounds}]")


def _max_ranks(kind: str, op: str, weight: np.ndarray, node) -> list[int]:
    if kind == "tucker2":
        return [weight.shape[0], weight.shape[1]]
    if kind == "tucker1":
        return [weight.shape[0]]
    if kind == "tucker1in":
        return [weight.shape[1]]
    if kind == "svd":
        if op == "Conv":
            return [min(weight.shape[0], weight.shape[1])]
        return [min(weight.shape)]
    raise EngineInputError(f"unknown plan kind {kind!r}")


def _gemm_trans_b(node) -> int:
    return next((a.i for a in node.attribute if a.name == "transB"), 0)


def _decompose(entry, node, weight: np.ndarray, hooi_iters: int):
    W = read_only_tensor(weight)
    if entry.kind == "tucker2":
        if W.dim() != 4 or node.op_type != "Conv":
            raise EngineInputError(f"layer {entry.name!r}: tucker2 needs a 2-D Conv weight, got {list(W.shape)}")
        r_out, r_in = entry.ranks
        result = tucker2(W, r_out, r_in, n_iter=hooi_iters)
        return (result.first, result.core, result.last), float(result.rel_error)
    if entry.kind == "tucker1":
        if W.dim() != 4 or node.op_type != "Conv":
            raise EngineInputError(f"layer {entry.name!r}: tucker1 needs a 2-D Conv weight, got {list(W.shape)}")
        result = tucker1(W, entry.ranks[0])
        return (result.core, result.last), float(result.rel_error)
    if entry.kind == "tucker1in":
        if W.dim() != 4 or node.op_type != "Conv":
            raise EngineInputError(f"layer {entry.name!r}: tucker1in needs a 2-D Conv weight, got {list(W.shape)}")
        result = tucker1_in(W, entry.ranks[0])
        return (result.first, result.core), float(result.rel_error)
    if node.op_type == "Conv":
        if W.shape[2:] != (1, 1):
            raise EngineInputError(f"layer {entry.name!r}: svd applies to 1×1 convs, kernel is {list(W.shape[2:])}")
        matrix = W.reshape(W.shape[0], W.shape[1])
    elif node.op_type == "Gemm":
        matrix = W if _gemm_trans_b(node) else W.T
    else:
        matrix = W.T
    result = svd_factors(matrix.contiguous(), entry.ranks[0])
    return (result.first, result.second), float(result.rel_error)


def _tensor(values: torch.Tensor, dtype, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(values.detach().numpy().astype(dtype, copy=False)), name)


def _conv_attributes(node, keep_geometry: bool, kernel) -> dict:
    """The core keeps strides/pads/dilations/auto_pad; the 1×1 factors get none of them."""
    attrs = {"kernel_shape": list(kernel), "group": 1}
    if keep_geometry:
        for attribute in node.attribute:
            if attribute.name in ("strides", "pads", "dilations", "auto_pad"):
                attrs[attribute.name] = helper.get_attribute_value(attribute)
    return attrs


def _replacement(entry, node, weight_name: str, factors, dtype, names: _Names):
    label = entry.name
    x, y = node.input[0], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    op = node.op_type

    if op == "Conv":
        if entry.kind == "tucker2":
            first, core, last = factors
            steps = [("tucker_first", first, False), ("tucker_core", core, True), ("tucker_last", last, False)]
        elif entry.kind == "tucker1":
            core, last = factors
            steps = [("tucker1_core", core, True), ("tucker1_last", last, False)]
        elif entry.kind == "tucker1in":
            first, core = factors
            steps = [("tucker1in_first", first, False), ("tucker1in_core", core, True)]
        else:
            first, second = factors
            steps = [("svd_first", first.reshape(*first.shape, 1, 1), True),
                     ("svd_second", second.reshape(*second.shape, 1, 1), False)]
        nodes, tensors, current = [], [], x
        for position, (suffix, values, keep_geometry) in enumerate(steps):
            is_last = position == len(steps) - 1
            tensor_name = names.fresh(f"{weight_name}__{suffix}")
            tensors.append(_tensor(values, dtype, tensor_name))
            output = y if is_last else names.fresh(f"{label}__{suffix}_out")
            inputs = [current, tensor_name] + ([bias] if is_last and bias else [])
            nodes.append(helper.make_node("Conv", inputs, [output], name=names.fresh(f"{label}__{suffix}"),
                                          **_conv_attributes(node, keep_geometry, values.shape[2:])))
            current = output
        return nodes, tensors

    first, second = factors  # first (r, in), second (out, r): y = second @ (first @ x)
    first_name = names.fresh(f"{weight_name}__svd_first")
    second_name = names.fresh(f"{weight_name}__svd_second")
    hidden = names.fresh(f"{label}__svd_first_out")
    if op == "Gemm":
        tensors = [_tensor(first, dtype, first_name), _tensor(second, dtype, second_name)]
        scale = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("alpha", "beta")}
        nodes = [
            helper.make_node("Gemm", [x, first_name], [hidden], name=names.fresh(f"{label}__svd_first"), transB=1),
            helper.make_node("Gemm", [hidden, second_name] + ([bias] if bias else []), [y],
                             name=names.fresh(f"{label}__svd_second"), transB=1, **scale),
        ]
        return nodes, tensors
    # MatMul computes x·W, so the factors are stored transposed: x·firstᵀ·secondᵀ.
    tensors = [_tensor(first.T.contiguous(), dtype, first_name), _tensor(second.T.contiguous(), dtype, second_name)]
    nodes = [
        helper.make_node("MatMul", [x, first_name], [hidden], name=names.fresh(f"{label}__svd_first")),
        helper.make_node("MatMul", [hidden, second_name], [y], name=names.fresh(f"{label}__svd_second")),
    ]
    return nodes, tensors


def _copy_without(message, skip: set[str]):
    """A copy of a protobuf message without the fields named in `skip`."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name in skip:
            continue
        if _is_repeated(field):
            getattr(copy, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(copy, field.name).CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _is_repeated(field) -> bool:
    """protobuf >= 5.28 (upb) has FieldDescriptor.is_repeated and, from 6, no `label`; older ones only `label`."""
    repeated = getattr(field, "is_repeated", None)
    if repeated is None:
        return field.label == field.LABEL_REPEATED
    return bool(repeated() if callable(repeated) else repeated)


def _drop_dead_constants(graph) -> None:
    """Drop Identity/Constant nodes that nothing reads any more (they carried replaced weights)."""
    while True:
        used = _used_names(graph)
        dead = [i for i, node in enumerate(graph.node)
                if node.op_type in ("Identity", "Constant") and not any(o in used for o in node.output)]
        if not dead:
            return
        for index in reversed(dead):
            del graph.node[index]


def _drop_declarations(graph, removed: set[str]) -> None:
    """Drop the graph inputs (IR < 4 declares initializers as inputs) and value_info of removed weights."""
    if not removed:
        return
    for container in (graph.input, graph.value_info):
        kept = [item for item in container if item.name not in removed]
        del container[:]
        container.extend(kept)


def _used_names(graph) -> set[str]:
    """Every name read by a node (also inside If/Loop/Scan bodies, which see outer names) or output."""
    used = {v.name for v in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for body in bodies:
                used |= _used_names(body)
    return used

"""Per-layer candidate models for the latency rule: ONNX Runtime (in the worker) is the judge.

For every layer a plan would rewrite, two standalone models at the layer's real input shape:
  <stem>.orig.onnx — the single original node with its weight (and bias) as initializers;
  <stem>.repl.onnx — that model carried through surgery.rewrite: the replacement chain.
A k×k conv planned as Tucker-2 also gets the other structures at no more MACs than its Tucker-2 chain
(<stem>.tucker1in.onnx: 1×1 then the k×k core; <stem>.tucker1.onnx: the k×k core then 1×1), so the
clock can choose the structure per layer (plan.choose_structures).
candidates.json lists them; the worker times each pair interleaved with onnxruntime-node and writes
latency-table.json beside it, which plan.make_plan(rule='latency') reads back (latency_table.py).

The replacement is made by the same surgery as the real rewrite, on a one-node model whose node
carries the layer's label as its name, so the plan entry applies to it unchanged.
"""
from __future__ import annotations

import os
import re

import onnx
from onnx import helper

from .atomic import atomic_write_bytes, atomic_write_json
from .errors import EngineInputError
from .onnx_graph import check_structure, constant_tensors, default_opset, node_labels
from .plan import LayerPlan, Plan, alternative_structures
from .surgery import rewrite

CANDIDATES_FILE = "candidates.json"
CANDIDATES_VERSION = 1


def layer_file_stem(index: int, name: str) -> str:
    """A file name for a layer: ONNX names may hold '/', ':' and spaces (torch exports: '/features/0/Conv')."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "layer"
    return f"{index:03d}_{safe[:80]}"


def single_layer_model(model: onnx.ModelProto, entry: LayerPlan) -> onnx.ModelProto:
    """The planned layer's node alone, fed at entry.input_shape, with its constant inputs as initializers."""
    labels = node_labels(model)
    try:
        node = model.graph.node[labels.index(entry.name)]
    except ValueError:
        raise EngineInputError(f"layer {entry.name!r} of the plan is not a node of this model; re-plan for it")
    if entry.input_shape is None or any(not isinstance(d, int) or d <= 0 for d in entry.input_shape):
        raise EngineInputError(
            f"layer {entry.name!r} ({entry.op}): its input shape {entry.input_shape} is not fully known, so it "
            "cannot be timed on its own; give the input size (inputShape / --input-shape)")
    constants = constant_tensors(model)
    initializers = []
    for name in list(node.input)[1:]:
        if not name:
            continue
        if name not in constants:
            raise EngineInputError(f"layer {entry.name!r} ({entry.op}): input {name!r} is not a constant")
        tensor = onnx.TensorProto()
        tensor.CopyFrom(constants[name])
        tensor.name = name
        initializers.append(tensor)
    elem_type = constants[node.input[1]].data_type
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = entry.name
    x, y = node.input[0], node.output[0]
    out_shape = entry.output_shape if entry.output_shape and all(isinstance(d, int) for d in entry.output_shape) \
        else None
    graph = helper.make_graph(
        [copy], f"{entry.name} alone",
        [helper.make_tensor_value_info(x, elem_type, list(entry.input_shape))],
        [helper.make_tensor_value_info(y, elem_type, out_shape)], initializers)
    opset = default_opset(model)
    single = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tuckerize")
    # The original's IR version keeps the pair readable by the same runtimes as the model itself.
    single.ir_version = max(model.ir_version, 4)
    return single


def write_candidates(model: onnx.ModelProto, plan: Plan, out_dir: str, hooi_iters: int = 2,
                     progress=None) -> dict:
    """Write every rewritten layer's original/replacement pair and candidates.json into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    rewritten = plan.rewritten()
    layers = []
    for index, entry in enumerate(rewritten):
        original = single_layer_model(model, entry)
        single_plan = Plan(rule=plan.rule, options=plan.options, input_shape=list(entry.input_shape),
                           layers=[entry])
        result = rewrite(original, single_plan, hooi_iters=hooi_iters)
        check_structure(original)
        check_structure(result.model)
        stem = layer_file_stem(index, entry.name)
        orig_file, repl_file = f"{stem}.orig.onnx", f"{stem}.repl.onnx"
        atomic_write_bytes(os.path.join(out_dir, orig_file), original.SerializeToString())
        atomic_write_bytes(os.path.join(out_dir, repl_file), result.model.SerializeToString())
        alternatives = []
        for alternative in alternative_structures(original, entry, plan.options.get("roundTo")):
            alt_plan = Plan(rule=plan.rule, options=plan.options, input_shape=list(entry.input_shape),
                            layers=[alternative])
            alt_result = rewrite(original, alt_plan, hooi_iters=hooi_iters)
            alt_file = f"{stem}.{alternative.kind}.onnx"
            atomic_write_bytes(os.path.join(out_dir, alt_file), alt_result.model.SerializeToString())
            alternatives.append({"kind": alternative.kind, "ranks": list(alternative.ranks), "repl": alt_file,
                                 "macs": {"after": alternative.macs_after},
                                 "params": {"after": alternative.params_after},
                                 "relError": alt_result.rel_errors.get(entry.name)})
        feed = original.graph.input[0]
        layers.append({
            "name": entry.name, "op": entry.op, "kind": entry.kind, "ranks": list(entry.ranks),
            "inputName": feed.name,
            "dtype": "float64" if feed.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE else "float32",
            "inputShape": list(entry.input_shape),
            "macs": {"before": entry.macs_before, "after": entry.macs_after},
            "params": {"before": entry.params_before, "after": entry.params_after},
            "relError": result.rel_errors.get(entry.name),
            "orig": orig_file, "repl": repl_file, "alternatives": alternatives,
        })
        if progress is not None:
            progress(index + 1, len(rewritten), entry.name)
    manifest = {
        "version": CANDIDATES_VERSION, "rule": plan.rule, "options": plan.options,
        "inputShape": plan.input_shape, "totals": plan.totals, "layers": layers,
        "kept": [{"name": e.name, "reason": e.reason} for e in plan.layers if e.kind == "keep"],
    }
    atomic_write_json(os.path.join(out_dir, CANDIDATES_FILE), manifest)
    return manifest

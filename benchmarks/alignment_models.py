"""Single-layer models for the rank-alignment benchmark (benchmarks/alignment.ts times them).

For each layer kind at a VGG-16/ResNet-sized shape: the original layer, and its replacement chain at a
rank that is a multiple of 1, 4, 8, 16 and 32 but not of the next power of two (so "multiple of 4"
means the rank is 4·odd), all near the same nominal rank. Weights are random: only shapes matter for
time. Writes the models and a manifest.json into the output directory.

Usage: python3 benchmarks/alignment_models.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MULTIPLES = (1, 4, 8, 16, 32)
# kind, label, (in channels, out channels, kernel, spatial) or (in, out) for FC, nominal rank fraction.
CASES = [
    ("tucker2", "3×3 conv 128→128 at 112×112 (VGG-16 conv2_2)", (128, 128, 3, 112), 0.18),
    ("tucker2", "3×3 conv 256→256 at 56×56 (VGG-16 conv3_x)", (256, 256, 3, 56), 0.18),
    ("tucker2", "3×3 conv 512→512 at 28×28 (VGG-16 conv4_x)", (512, 512, 3, 28), 0.18),
    ("svd", "1×1 conv 1024→256 at 14×14 (ResNet-50 res4)", (1024, 256, 1, 14), 0.3),
    ("svd", "FC 4096→4096 (VGG-16 fc7)", (4096, 4096), 0.25),
]


def rank_with_multiple(nominal: int, multiple: int, bound: int) -> int:
    """The rank nearest `nominal` that is a multiple of `multiple` and, below 32, not of 2·multiple."""
    candidates = [r for r in range(multiple, bound + 1, multiple)
                  if multiple == 32 or multiple == 1 and r % 2 == 1 or multiple > 1 and r % (2 * multiple) != 0]
    return min(candidates, key=lambda r: (abs(r - nominal), r))


def _weight(rng, *shape) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _conv_model(name: str, in_shape: list[int], convs: list[tuple[np.ndarray, int]]) -> onnx.ModelProto:
    """A chain of Conv nodes (weight, pad) from input x to output y."""
    nodes, inits, current = [], [], "x"
    for i, (w, pad) in enumerate(convs):
        out = "y" if i == len(convs) - 1 else f"t{i}"
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [out], pads=[pad] * 4))
        current = out
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _fc_model(name: str, mats: list[np.ndarray]) -> onnx.ModelProto:
    nodes, inits, current = [], [], "x"
    for i, m in enumerate(mats):                       # y = x @ m (m: in × out)
        out = "y" if i == len(mats) - 1 else f"t{i}"
        inits.append(numpy_helper.from_array(m, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [out]))
        current = out
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, mats[0].shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def build(out_dir: Path) -> dict:
    rng = np.random.default_rng(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for index, (kind, label, shape, fraction) in enumerate(CASES):
        if len(shape) == 2:
            c_in, c_out = shape
            original = _fc_model("original", [_weight(rng, c_in, c_out)])
            macs_before = c_in * c_out
            input_shape = [1, c_in]
        else:
            c_in, c_out, k, hw = shape
            original = _conv_model("original", [1, c_in, hw, hw], [(_weight(rng, c_out, c_in, k, k), k // 2)])
            macs_before = hw * hw * c_out * c_in * k * k
            input_shape = [1, c_in, hw, hw]
        original_path = out_dir / f"case{index}-original.onnx"
        onnx.save(original, original_path)
        nominal = round(fraction * min(c_in, c_out))
        variants = []
        for multiple in MULTIPLES:
            r = rank_with_multiple(nominal, multiple, min(c_in, c_out))
            if kind == "tucker2":
                chain = _conv_model("chain", input_shape, [(_weight(rng, r, c_in, 1, 1), 0),
                                                            (_weight(rng, r, r, k, k), k // 2),
                                                            (_weight(rng, c_out, r, 1, 1), 0)])
                macs = hw * hw * (c_in * r + r * r * k * k + r * c_out)
                ranks = [r, r]
            elif len(shape) == 2:
                chain = _fc_model("chain", [_weight(rng, c_in, r), _weight(rng, r, c_out)])
                macs = r * (c_in + c_out)
                ranks = [r]
            else:
                chain = _conv_model("chain", input_shape, [(_weight(rng, r, c_in, 1, 1), 0),
                                                            (_weight(rng, c_out, r, 1, 1), 0)])
                macs = hw * hw * r * (c_in + c_out)
                ranks = [r]
            path = out_dir / f"case{index}-m{multiple}.onnx"
            onnx.save(chain, path)
            variants.append({"multiple": multiple, "ranks": ranks, "macs": macs, "model": str(path)})
        cases.append({"kind": kind, "label": label, "inputShape": input_shape, "macs": macs_before,
                      "original": str(original_path), "nominalRank": nominal, "variants": variants})
    manifest = {"cases": cases}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 benchmarks/alignment_models.py OUT_DIR")
    build(Path(sys.argv[1]))

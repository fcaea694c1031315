"""Surgery: forced full-rank rewrites are exact, low-rank kernels are recovered, ONNX Runtime agrees."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from onnx_builders import (conv_model, gemm_model, low_rank_kernel, make_model, matmul_model, tiny_cnn,
                           to_float64, value)
from tuckerize.errors import EngineInputError
from tuckerize.interpret import OnnxModule
from tuckerize.onnx_graph import find_layers, load_model
from tuckerize.plan import layer_costs, make_plan
from tuckerize.surgery import apply_plan, rewrite


def _run(model, x):
    with torch.no_grad():
        return OnnxModule(model).eval()(torch.from_numpy(x))


def _full_rank(model, input_shape=None):
    return make_plan(model, input_shape, rule="ratio", ratio=1.0, force=True)


# (kernel (T, S, kh, kw), input H×W, Conv attributes)
CONV_GRID = [
    ((7, 5, 3, 3), (9, 9), dict(pads=[1, 1, 1, 1])),
    ((7, 5, 3, 3), (10, 9), dict(strides=[2, 2], pads=[0, 1, 2, 1])),               # asymmetric pads
    ((6, 9, 3, 3), (11, 12), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((5, 7, 5, 5), (12, 11), dict(pads=[2, 1, 0, 2], strides=[1, 2])),
    ((9, 5, 1, 7), (8, 15), dict(pads=[0, 3, 0, 3])),
    ((9, 5, 7, 1), (15, 8), dict(pads=[3, 0, 3, 0], dilations=[2, 1])),
    ((13, 5, 11, 11), (35, 35), dict(strides=[4, 4], pads=[2, 2, 2, 2])),          # AlexNet's stem geometry
    ((7, 6, 3, 3), (9, 10), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((7, 6, 4, 4), (9, 10), dict(auto_pad="SAME_LOWER")),
    ((7, 6, 3, 3), (9, 10), dict(auto_pad="VALID")),
    ((11, 3, 7, 7), (17, 17), dict(strides=[2, 2], pads=[3, 3, 3, 3])),             # RGB stem → Tucker-1
    ((11, 1, 3, 3), (9, 9), dict(pads=[1, 1, 1, 1])),                               # grey stem → Tucker-1
    ((9, 7, 1, 1), (9, 8), dict()),                                                 # 1×1 → SVD
    ((9, 7, 1, 1), (9, 8), dict(strides=[2, 2], pads=[1, 0, 1, 1])),                # strided padded 1×1
]
EXPECTED_KIND = {3: "tucker1", 1: "tucker1"}


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape,hw,attrs", CONV_GRID, ids=[f"{s}-{a}" for s, _, a in CONV_GRID])
def test_full_rank_conv_rewrite_is_exact_in_float64(shape, hw, attrs, with_bias):
    rng = np.random.default_rng(sum(shape) + len(attrs))
    weight = rng.standard_normal(shape)
    bias = rng.standard_normal(shape[0]) if with_bias else None
    model = conv_model(weight, hw, bias, **attrs)
    original_bytes = model.SerializeToString()
    plan = _full_rank(model)
    (entry,) = plan.layers
    expected = "svd" if shape[2:] == (1, 1) else EXPECTED_KIND.get(shape[1], "tucker2")
    assert entry.kind == expected
    result = rewrite(model, plan)
    assert model.SerializeToString() == original_bytes, "the input model must not be modified"
    onnx.checker.check_model(result.model, full_check=True)
    chain = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert len(chain) == {"tucker2": 3, "tucker1": 2, "svd": 2}[expected]
    assert ("b" in chain[-1].input) == with_bias and all("b" not in n.input for n in chain[:-1])
    x = rng.standard_normal((2, shape[1], *hw))
    before, after = _run(model, x), _run(result.model, x)
    assert before.shape == after.shape
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=0, atol=1e-10)
    assert result.rel_errors["conv"] < 1e-12


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [
    (0, 1.0, 1.0, (6,)), (1, 1.0, 1.0, (6,)), (1, 0.5, 2.0, (1, 6)), (0, -1.5, 0.25, (3, 6)), (1, 2.0, 1.0, None),
])
def test_full_rank_gemm_rewrite_is_exact(trans_b, alpha, beta, bias_shape):
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((6, 9) if trans_b else (9, 6))
    bias = rng.standard_normal(bias_shape) if bias_shape else None
    model = gemm_model(weight, batch=3, bias=bias, transB=trans_b, alpha=alpha, beta=beta)
    result = rewrite(model, _full_rank(model))
    onnx.checker.check_model(result.model, full_check=True)
    gemms = [n for n in result.model.graph.node if n.op_type == "Gemm"]
    assert [n.name for n in gemms] == ["fc__svd_first", "fc__svd_second"]
    x = rng.standard_normal((3, 9))
    np.testing.assert_allclose(_run(result.model, x).numpy(), _run(model, x).numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("input_shape", [(4, 10), (2, 3, 10)])
def test_full_rank_matmul_rewrite_is_exact(input_shape):
    rng = np.random.default_rng(3)
    model = matmul_model(rng.standard_normal((10, 7)), input_shape)
    result = rewrite(model, _full_rank(model))
    onnx.checker.check_model(result.model, full_check=True)
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "MatMul"]
    x = rng.standard_normal(input_shape)
    np.testing.assert_allclose(_run(result.model, x).numpy(), _run(model, x).numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("T,S,k,r_out,r_in", [(12, 10, 3, 3, 2), (17, 9, 5, 5, 4), (16, 16, 3, 1, 1)])
def test_exact_multilinear_rank_is_found_and_reproduced(T, S, k, r_out, r_in):
    rng = np.random.default_rng(T * S)
    weight = low_rank_kernel(rng, T, S, k, k, r_out, r_in)
    model = conv_model(weight, (11, 11), rng.standard_normal(T), pads=[1, 1, 1, 1])
    plan = make_plan(model, rule="vbmf")
    (entry,) = plan.layers
    assert entry.kind == "tucker2" and entry.ranks == [r_out, r_in]
    result = rewrite(model, plan)
    x = rng.standard_normal((1, S, 11, 11))
    np.testing.assert_allclose(_run(result.model, x).numpy(), _run(model, x).numpy(), rtol=0, atol=1e-10)


def _relative(a, b) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def test_onnxruntime_agrees_with_rewritten_float32_models(tmp_path, run_ort):
    """float32 rewrites of several geometries, run by onnxruntime-node, match the originals."""
    rng = np.random.default_rng(11)
    cases = {
        "tucker2_asym": conv_model(rng.standard_normal((16, 12, 3, 3)).astype(np.float32), (13, 14),
                                   rng.standard_normal(16).astype(np.float32), strides=[2, 2], pads=[0, 1, 2, 1]),
        "tucker2_1x7": conv_model(rng.standard_normal((8, 6, 1, 7)).astype(np.float32), (9, 12), None,
                                  pads=[0, 3, 0, 3]),
        "tucker1_11x11": conv_model(rng.standard_normal((16, 3, 11, 11)).astype(np.float32), (39, 39),
                                    rng.standard_normal(16).astype(np.float32), strides=[4, 4], pads=[2, 2, 2, 2]),
        "same_upper": conv_model(rng.standard_normal((10, 8, 3, 3)).astype(np.float32), (9, 10), None,
                                 auto_pad="SAME_UPPER", strides=[2, 2]),
        "gemm": gemm_model(rng.standard_normal((20, 12)).astype(np.float32), batch=2,
                           bias=rng.standard_normal(20), transB=1, alpha=0.5, beta=2.0),
        "cnn": tiny_cnn(rng),
    }
    for name, model in cases.items():
        compressed = apply_plan(model, _full_rank(model))
        original_path, compressed_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}_c.onnx"
        onnx.save(model, original_path)
        onnx.save(compressed, compressed_path)
        x = rng.standard_normal(_input_dims(model)).astype(np.float32)
        feed = {model.graph.input[0].name: x}
        (expected,), (actual,) = run_ort(original_path, feed), run_ort(compressed_path, feed)
        assert _relative(actual, expected) < 1e-4, name


def _input_dims(model):
    return [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_names_are_derived_unique_and_opset_ir_kept():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 6, 3, 3))
    model = conv_model(weight, (7, 7), rng.standard_normal(8), opset=17, pads=[1, 1, 1, 1])
    model.ir_version = 8
    # Take the name the first factor would get, so the rewrite must pick another.
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1), "W__tucker_first"))
    result = apply_plan(model, _full_rank(model))
    names = [t.name for t in result.graph.initializer]
    assert "W" not in names, "the replaced weight is dropped"
    assert {"W__tucker_first_1", "W__tucker_core", "W__tucker_last", "b"} <= set(names)
    assert [n.name for n in result.graph.node] == ["conv__tucker_first", "conv__tucker_core", "conv__tucker_last"]
    assert result.ir_version == 8 and result.opset_import[0].version == 17
    assert "W__tucker_first" not in [i for n in result.graph.node for i in n.input]


def test_model_fields_stay_and_replaced_weights_leave_no_declarations():
    """The rewrite copies everything but the nodes and the weights: model metadata stays; under IR 3 the
    replaced weight's graph-input declaration and value_info go with it, the new factors are declared."""
    rng = np.random.default_rng(2)
    model = conv_model(rng.standard_normal((8, 6, 3, 3)), (7, 7), rng.standard_normal(8), opset=8, pads=[1, 1, 1, 1])
    model.ir_version = 3
    model.producer_name, model.doc_string = "fields-test", "kept"
    onnx.helper.set_model_props(model, {"owner": "tenant-a"})
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    model.graph.value_info.append(helper.make_tensor_value_info("W", onnx.TensorProto.DOUBLE, [8, 6, 3, 3]))
    result = apply_plan(model, _full_rank(model))
    assert (result.producer_name, result.doc_string) == ("fields-test", "kept")
    assert {p.key: p.value for p in result.metadata_props} == {"owner": "tenant-a"}
    declared = [v.name for v in result.graph.input]
    assert "W" not in declared and "W" not in [v.name for v in result.graph.value_info]
    assert {t.name for t in result.graph.initializer} <= set(declared)
    x = rng.standard_normal((1, 6, 7, 7))
    np.testing.assert_allclose(_run(result, x).numpy(), _run(model, x).numpy(), rtol=0, atol=1e-10)


def test_identity_aliased_weight_and_shared_bias():
    """torch.onnx.export puts deduplicated constants behind Identity nodes; rewrites follow them."""
    rng = np.random.default_rng(5)
    W = rng.standard_normal((8, 6, 3, 3))
    b = np.zeros(8)
    nodes = [
        helper.make_node("Identity", ["W0"], ["W_alias"], name="id_w"),
        helper.make_node("Identity", ["b0"], ["b_alias"], name="id_b"),
        helper.make_node("Conv", ["x", "W_alias", "b_alias"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h", "W2", "b_alias"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(W, "W0"), numpy_helper.from_array(b, "b0"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)), "W2")]
    model = make_model(nodes, [value("x", [1, 6, 7, 7])], [value("y", [1, 8, 7, 7])], inits)
    layers = find_layers(model)
    assert all(layer.eligible for layer in layers), [layer.reason for layer in layers]
    plan = _full_rank(model)
    plan.layer("conv2").kind, plan.layer("conv2").ranks = "keep", []
    result = apply_plan(model, plan)
    onnx.checker.check_model(result, full_check=True)
    assert "id_w" not in [n.name for n in result.graph.node] and "W0" not in [t.name for t in result.graph.initializer]
    assert "id_b" in [n.name for n in result.graph.node], "the bias alias is still read by both convs"
    x = rng.standard_normal((1, 6, 7, 7))
    np.testing.assert_allclose(_run(result, x).numpy(), _run(model, x).numpy(), rtol=0, atol=1e-10)


def test_plan_for_another_model_is_refused():
    rng = np.random.default_rng(1)
    plan = _full_rank(conv_model(rng.standard_normal((8, 6, 3, 3)), (7, 7), pads=[1, 1, 1, 1]))
    other = conv_model(rng.standard_normal((8, 5, 3, 3)), (7, 7), pads=[1, 1, 1, 1])
    with pytest.raises(EngineInputError, match=r"weight shape \[8, 6, 3, 3\].*\[8, 5, 3, 3\]"):
        apply_plan(other, plan)
    plan.layers[0].name = "missing"
    with pytest.raises(EngineInputError, match="does not have"):
        apply_plan(other, plan)
    bad = _full_rank(other)
    bad.layers[0].ranks = [9, 5]
    with pytest.raises(EngineInputError, match="ranks"):
        apply_plan(other, bad)


# --- the zoo ---------------------------------------------------------------------------------------
# Exports at the sizes the interpreter tests use too (AlexNet and VGG-16 fix their pooling at 224).
ZOO_SIZES = {"alexnet": 224, "vgg16": 224, "googlenet": 64, "resnet18": 64, "resnet50": 64, "mobilenet_v2": 64}
# Full-rank factors of a 25088×4096 FC need a 4096² SVD (a minute on 2 cores); the smaller layers of
# every kind already check the same rewrite code.
MAX_ZOO_WEIGHT = 4_200_000


def _representative(plan, eligible):
    """One layer per distinct (kind, op, kernel, strides, pads, dilations): every rewrite the model needs."""
    seen, chosen = set(), set()
    for entry in plan.layers:
        layer = eligible.get(entry.name)
        if entry.kind == "keep" or layer is None or math.prod(entry.weight_shape) > MAX_ZOO_WEIGHT:
            continue
        key = (entry.kind, layer.op, tuple(entry.weight_shape[2:]), tuple(layer.strides), tuple(layer.pads),
               tuple(layer.dilations), layer.bias is not None)
        if key not in seen:
            seen.add(key)
            chosen.add(entry.name)
    return chosen


# Each extra pass over VGG-16 (copy, check, save, an onnxruntime session) costs ~10 s on 2 cores; the
# ratio-0.5 artifact of the two big nets is run once (opset 13), their exactness at both opsets.
BIG = {"alexnet", "vgg16"}


def _subset(plan, chosen):
    for entry in plan.layers:
        if entry.name not in chosen:
            entry.kind, entry.ranks = "keep", []
    return plan


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", list(ZOO_SIZES))
def test_zoo_full_rank_exact_and_ratio_half_smaller(name, opset, zoo_path, run_ort, tmp_path):
    path = zoo_path(name, opset, ZOO_SIZES[name])
    model = load_model(path)
    eligible = {layer.name: layer for layer in find_layers(model) if layer.eligible}
    full = _full_rank(model)
    chosen = _representative(full, eligible)
    assert chosen
    exact = apply_plan(model, _subset(full, chosen), hooi_iters=0)
    onnx.checker.check_model(exact, full_check=True)
    exact_path = tmp_path / "exact.onnx"
    onnx.save(exact, exact_path)
    del exact

    x = np.random.default_rng(opset).standard_normal((1, 3, ZOO_SIZES[name], ZOO_SIZES[name])).astype(np.float32)
    (expected,) = run_ort(path, {"input": x})
    (actual,) = run_ort(exact_path, {"input": x})
    # Factors of float32 weights are computed in float32 (tucker.py): each rewritten layer adds ~1e-5
    # relative error; float64 exactness of whole zoo nets is the next test. Wiring faults give O(1).
    assert _relative(actual, expected) < 1e-3

    half = make_plan(model, rule="ratio", ratio=0.5)
    assert half.totals["params"]["after"] < half.totals["params"]["before"]
    assert half.totals["macs"]["after"] < half.totals["macs"]["before"]
    if name in BIG and opset != 13:
        return
    smaller = apply_plan(model, _subset(half, chosen), hooi_iters=1)
    onnx.checker.check_model(smaller, full_check=True)
    assert smaller.ByteSize() < model.ByteSize()
    smaller_path = tmp_path / "smaller.onnx"
    onnx.save(smaller, smaller_path)
    (approx,) = run_ort(smaller_path, {"input": x})
    assert approx.shape == expected.shape and np.isfinite(approx).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_zoo_full_rank_rewrite_of_every_layer_is_exact_in_float64(name, zoo_path):
    model = to_float64(load_model(zoo_path(name, 13, 64)))
    plan = _full_rank(model)
    assert len(plan.rewritten()) == sum(layer.eligible for layer in find_layers(model))
    exact = apply_plan(model, plan, hooi_iters=0)
    onnx.checker.check_model(exact, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64))
    before, after = _run(model, x).numpy(), _run(exact, x).numpy()
    assert np.abs(before).max() > 1e-3, "outputs must not vanish, or the comparison proves nothing"
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-10 * max(1.0, np.abs(before).max()))


@pytest.mark.parametrize("shape,hw,attrs", [CONV_GRID[1], CONV_GRID[2], CONV_GRID[3], CONV_GRID[6]])
def test_tucker1in_reproduces_a_kernel_of_low_input_rank_and_its_costs(shape, hw, attrs):
    """1×1 (S→r_in) then the k×k core with the layer's geometry and bias: exact when the input mode has rank r_in."""
    T, S, kh, kw = shape
    r_in = max(1, S // 2)
    rng = np.random.default_rng(T * S + kh)
    U = np.linalg.qr(rng.standard_normal((S, r_in)))[0]
    weight = np.einsum("tihw,si->tshw", rng.standard_normal((T, r_in, kh, kw)), U)
    model = conv_model(weight, hw, rng.standard_normal(T), **attrs)
    plan = _full_rank(model)
    (entry,) = plan.layers
    layer = find_layers(model)[0]
    entry.kind, entry.ranks = "tucker1in", [r_in]
    entry.params_after, entry.macs_after = layer_costs(layer, "tucker1in", [r_in], T)
    result = rewrite(model, plan)
    assert result.rel_errors[entry.name] < 1e-12
    assert [n.name for n in result.model.graph.node] == ["conv__tucker1in_first", "conv__tucker1in_core"]
    x = rng.standard_normal((2, S, *hw))
    np.testing.assert_allclose(_run(result.model, x).numpy(), _run(model, x).numpy(), rtol=0, atol=1e-9)
    # The cost model counts what the graph holds.
    params = sum(int(np.prod(t.dims)) for t in result.model.graph.initializer)
    assert params == entry.params_after
    out_hw = int(np.prod(_run(model, x).shape[2:]))
    assert entry.macs_after == hw[0] * hw[1] * S * r_in + out_hw * T * r_in * kh * kw

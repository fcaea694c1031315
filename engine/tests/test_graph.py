"""Loading, shape inference and layer discovery on ONNX graphs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_builders import conv_model, gemm_model, make_model, tiny_cnn, value
from tuckerize.errors import EngineInputError
from tuckerize.onnx_graph import find_layers, infer_shapes, load_model, node_labels, parse_input_shape


def _save(model, path):
    onnx.save(model, path)
    return path


def test_load_model_refuses_bad_files(tmp_path):
    with pytest.raises(EngineInputError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 10)
    with pytest.raises(EngineInputError, match="not an ONNX model"):
        load_model(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(EngineInputError, match="no graph nodes"):
        load_model(empty)


def test_load_model_refuses_external_data(tmp_path):
    rng = np.random.default_rng(0)
    model = conv_model(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), (8, 8))
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    with pytest.raises(EngineInputError, match="external data files"):
        load_model(path)


def test_load_model_refuses_models_without_inputs_and_bad_opsets(tmp_path):
    node = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2), "c"))
    no_inputs = make_model([node], [], [value("y", [2])], [])
    with pytest.raises(EngineInputError, match="no graph inputs"):
        load_model(_save(no_inputs, tmp_path / "no_inputs.onnx"))
    rng = np.random.default_rng(0)
    for opset in (10, 22):
        model = conv_model(rng.standard_normal((4, 2, 3, 3)), (5, 5), opset=13)
        model.opset_import[0].version = opset
        with pytest.raises(EngineInputError, match=f"opset {opset}; supported opsets are 11-21"):
            load_model(_save(model, tmp_path / f"opset{opset}.onnx"))
    model = conv_model(rng.standard_normal((4, 2, 3, 3)), (5, 5), opset=21)
    assert load_model(_save(model, tmp_path / "ok.onnx")).opset_import[0].version == 21


def test_infer_shapes_defaults_and_overrides():
    model = tiny_cnn(np.random.default_rng(0), size=16)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    shapes = infer_shapes(model)
    assert shapes["input"] == (1, 1, 224, 224)
    assert shapes["c2"] == (1, 32, 112, 112) and shapes["output"] == (1, 10)
    shapes = infer_shapes(model, (4, 1, 30, 20))
    assert shapes["c2"] == (4, 32, 15, 10) and shapes["stem.w"] == (16, 1, 3, 3)
    with pytest.raises(EngineInputError, match="gives 3 channels but model input 'input' declares 1"):
        infer_shapes(model, (1, 3, 16, 16))
    with pytest.raises(EngineInputError, match="has 3 dims but model input 'input' has 4"):
        infer_shapes(model, (1, 16, 16))
    with pytest.raises(EngineInputError, match="too small|shape inference failed"):
        infer_shapes(conv_model(np.ones((4, 2, 5, 5)), (8, 8)), (1, 2, 3, 3))  # 5×5 kernel on a 3×3 image


def test_parse_input_shape():
    assert parse_input_shape("1,3,224,224") == (1, 3, 224, 224)
    for bad in ("1,3,a", "1,0,3", ""):
        with pytest.raises(EngineInputError):
            parse_input_shape(bad)


def _layer_reasons(nodes, inputs, inits, outputs):
    model = make_model(nodes, inputs, outputs, inits)
    return {layer.name: (layer.eligible, layer.reason) for layer in find_layers(model)}


def test_find_layers_keeps_what_it_cannot_decompose_with_reasons():
    rng = np.random.default_rng(0)
    arr = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w_grouped": arr(8, 4, 3, 3), "w_dw": arr(8, 1, 3, 3), "w_t": arr(8, 8, 3, 3), "w_1d": arr(8, 8, 3),
        "w_3d": arr(8, 8, 3, 3, 3), "w_ok": arr(8, 8, 3, 3), "g": arr(6, 5), "m": arr(5, 4),
    }.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w_grouped"], ["a"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_dw"], ["b"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["b", "w_t"], ["c"], name="deconv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "c"], ["w_runtime"], name="square"),
        helper.make_node("Conv", ["x", "w_ok", "bias_rt"], ["d"], name="runtime_bias", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w_ok"], ["e"], name="ok", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x1", "w_1d"], ["f"], name="conv1d"),
        helper.make_node("Conv", ["x3", "w_3d"], ["h"], name="conv3d"),
        helper.make_node("Gemm", ["v", "g"], ["i"], name="gemm_transA", transA=1),
        helper.make_node("Gemm", ["v2", "v3"], ["j"], name="gemm_dynamic_b", transB=1),
        helper.make_node("MatMul", ["v4", "v5"], ["k"], name="matmul_dynamic"),
        helper.make_node("MatMul", ["m", "v6"], ["l"], name="matmul_const_first"),
        helper.make_node("MatMul", ["v6", "m"], ["n"], name="matmul_ok"),
    ]
    inputs = [value("x", [1, 8, 6, 6]), value("x1", [1, 8, 10]), value("x3", [1, 8, 5, 5, 5]),
              value("bias_rt", [8]), value("v", [6, 2]), value("v2", [2, 7]), value("v3", [3, 7]),
              value("v4", [2, 3]), value("v5", [3, 4]), value("v6", [4, 5])]
    outputs = [value(n, None) for n in ["w_runtime", "d", "e", "f", "h", "i", "j", "k", "l", "n"]]
    for o in outputs:  # the checker is not involved: find_layers only needs types
        o.type.tensor_type.ClearField("shape")
    reasons = _layer_reasons(nodes, inputs, inits, outputs)
    assert reasons["ok"] == (True, None)
    assert reasons["matmul_ok"] == (True, None)
    expected = {
        "grouped": "grouped conv (group=2)", "depthwise": "depthwise conv (group=8)",
        "deconv": "ConvTranspose is not decomposed", "runtime_bias": "bias 'bias_rt' is computed at run time",
        "conv1d": "1-D convolution", "conv3d": "3-D convolution", "gemm_transA": "transA=1",
        "gemm_dynamic_b": "weight 'v3' is computed at run time", "matmul_dynamic": "both inputs computed at run time",
        "matmul_const_first": "first input",
    }
    for name, fragment in expected.items():
        eligible, reason = reasons[name]
        assert not eligible and fragment in reason, (name, reason)


def test_layer_attributes_and_shapes():
    rng = np.random.default_rng(0)
    model = conv_model(rng.standard_normal((8, 4, 3, 5)), (11, 13), rng.standard_normal(8), strides=[2, 1],
                       pads=[1, 2, 0, 2], dilations=[1, 2])
    (layer,) = find_layers(model)
    assert (layer.name, layer.op, layer.weight, layer.bias) == ("conv", "Conv", "W", "b")
    assert layer.weight_shape == (8, 4, 3, 5) and layer.input_shape == (1, 4, 11, 13)
    assert layer.output_shape == (1, 8, 5, 9)
    assert (layer.strides, layer.pads, layer.dilations, layer.group) == ([2, 1], [1, 2, 0, 2], [1, 2], 1)
    (fc,) = find_layers(gemm_model(rng.standard_normal((6, 9)), transB=1))
    assert fc.eligible and fc.matrix_shape == (6, 9) and fc.trans_b == 1


def test_node_labels_are_unique():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="same"), helper.make_node("Relu", ["a"], ["b"], name="same"),
             helper.make_node("Relu", ["b"], ["c"])]
    model = make_model(nodes, [value("x", [1])], [value("c", [1])], [])
    assert node_labels(model) == ["Relu_0", "Relu_1", "Relu_2"]


@pytest.mark.parametrize("opset", [13, 17])
def test_mobilenet_v2_depthwise_convs_are_kept_with_a_reason(opset, zoo_path):
    model = load_model(zoo_path("mobilenet_v2", opset, 64))
    layers = find_layers(model)
    depthwise = [layer for layer in layers if layer.group > 1]
    assert len(depthwise) == 17
    assert all(not layer.eligible and layer.reason.startswith("depthwise conv") for layer in depthwise)
    others = [layer for layer in layers if layer.group == 1]
    assert others and all(layer.eligible for layer in others), [l.reason for l in others if not l.eligible]


def test_load_model_reads_the_same_model_as_onnx_load(tmp_path):
    """load_model parses from a mapping of the file: the result is the model onnx.load reads, weights included."""
    rng = np.random.default_rng(1)
    model = conv_model(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), (8, 8))
    model.producer_name = "mapped-load-test"
    path = _save(model, tmp_path / "model.onnx")
    assert load_model(path).SerializeToString() == onnx.load(str(path)).SerializeToString()

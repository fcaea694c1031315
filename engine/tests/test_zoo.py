"""The model zoo exports, and the interpreter on them against onnxruntime-node.

Small inputs (64×64) where the architecture allows; AlexNet, VGG-16 and VGG-S need 224×224 (their
classifier input is fixed), so they run once each, at opset 13, from the shared export cache.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper, shape_inference

from tuckerize.errors import EngineInputError
from tuckerize.interpret import OnnxModule
from tuckerize.zoo import build_zoo_model, export_zoo_model

SMALL = ["resnet18", "resnet50", "mobilenet_v2", "googlenet"]
CASES = [(name, opset, 64) for name in SMALL for opset in (13, 17)] + [
    ("alexnet", 13, 224), ("vgg16", 13, 224), ("vggs", 13, 224)]


def image(size: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("name,opset,size", CASES, ids=[f"{n}-opset{o}-{s}" for n, o, s in CASES])
def test_interpreter_matches_onnxruntime(name, opset, size, zoo_path, run_ort):
    path = zoo_path(name, opset, size)
    model = onnx.load(path)
    assert opset_of(model) == opset
    x = image(size)
    want = run_ort(path, {"input": x})[0]
    with torch.no_grad():
        got = OnnxModule(model).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (1, 1000)
    scale = float(np.abs(want).max())
    # random weights must still give a non-degenerate output, or the comparison proves nothing
    assert float(want.std()) > 0.05 * scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_dynamic_batch_export_runs_any_batch(zoo_path, run_ort):
    path = zoo_path("resnet18", 13, 64, dynamic_batch=True)
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = image(64, batch=3, seed=1)
    want = run_ort(path, {"input": x})[0]
    with torch.no_grad():
        got = OnnxModule(model).eval()(torch.from_numpy(x)).numpy()
    assert want.shape == got.shape == (3, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def conv_gemm_counts(model: onnx.ModelProto) -> tuple[int, int, int]:
    """(weights, biases, MACs) of the Conv and Gemm nodes, from inferred shapes."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    weights = biases = macs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = dims[node.input[1]]
        weights += math.prod(w)
        if len(node.input) > 2:
            biases += math.prod(dims[node.input[2]])
        per_output = math.prod(w[1:]) if node.op_type == "Conv" else w[1]
        macs += math.prod(shapes[node.output[0]]) * per_output
    return weights, biases, macs


def test_vggs_matches_the_published_size(zoo_path):
    model = onnx.load(zoo_path("vggs", 13, 224))
    weights, biases, macs = conv_gemm_counts(model)
    # Chatfield et al. 2014 / Kim et al. 2016 Table 1: 103 M weights, 2640 M MACs ("FLOPs") at 224×224
    assert weights == 102_897_440 and biases == 11_080
    assert macs == 2_637_708_320
    assert abs(weights - 103e6) / 103e6 < 0.01 and abs(macs - 2.64e9) / 2.64e9 < 0.01
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LRN") == 1 and ops.count("Conv") == 5 and ops.count("Gemm") == 3
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for p in pools for a in p.attribute if a.name == "ceil_mode")


def test_export_is_deterministic_and_seeded(tmp_path):
    first = export_zoo_model("resnet18", tmp_path / "a.onnx", opset=13, input_size=32)
    second = export_zoo_model("resnet18", tmp_path / "b.onnx", opset=13, input_size=32)
    third = export_zoo_model("resnet18", tmp_path / "c.onnx", opset=13, input_size=32, seed=1)
    weights = [{i.name: numpy_helper.to_array(i) for i in onnx.load(p).graph.initializer}
               for p in (first, second, third)]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(np.array_equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_export_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_zoo_model("resnet18", calibrate_input_size=32)
    assert torch.equal(torch.rand(3), expected)


def test_batch_norm_statistics_are_calibrated():
    model = build_zoo_model("mobilenet_v2", calibrate_input_size=32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not model.training
    assert all(not torch.equal(n.running_var, torch.ones_like(n.running_var)) for n in norms)


def test_unknown_zoo_model_is_an_input_error(tmp_path):
    with pytest.raises(EngineInputError, match="unknown zoo model 'lenet'; choose one of alexnet"):
        export_zoo_model("lenet", tmp_path / "x.onnx")


def test_export_too_small_for_the_classifier_is_an_input_error(tmp_path):
    with pytest.raises(EngineInputError, match="exporting alexnet at 64x64 .*need 224"):
        export_zoo_model("alexnet", tmp_path / "x.onnx", input_size=64)


def test_cache_leaves_no_temporary_files(zoo_path):
    path = zoo_path("resnet18", 13, 64)
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

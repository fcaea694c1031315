"""Params and MACs from shapes: hand-checked formulas and torchvision's published figures."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_builders import conv_model, gemm_model, make_model, matmul_model, tiny_cnn, value
from tuckerize.metrics import graph_metrics, param_count
from tuckerize.onnx_graph import load_model
from tuckerize.plan import make_plan
from tuckerize.surgery import apply_plan

# torchvision's model cards (GFLOPS = multiply-accumulates, 224×224, batch 1).
PUBLISHED_GMACS = {"alexnet": 0.71, "vgg16": 15.47, "googlenet": 1.50, "resnet18": 1.81, "resnet50": 4.09,
                   "mobilenet_v2": 0.30}
EXPORT_SIZES = {"alexnet": 224, "vgg16": 224, "googlenet": 64, "resnet18": 64, "resnet50": 64, "mobilenet_v2": 64}


@pytest.mark.parametrize("name", list(PUBLISHED_GMACS))
def test_zoo_macs_at_224_match_torchvision(name, zoo_path):
    # Exports made at 64×64 are re-inferred at 224: only shapes are needed, no run.
    model = load_model(zoo_path(name, 13, EXPORT_SIZES[name]))
    metrics = graph_metrics(model, (1, 3, 224, 224))
    assert not metrics.unknown
    assert metrics.macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], rel=0.01)


@pytest.mark.parametrize("name,params", [("alexnet", 61_100_840), ("vgg16", 138_357_544)])
def test_params_of_batchnorm_free_nets_equal_torchvision(name, params, zoo_path):
    assert param_count(load_model(zoo_path(name, 13, 224))) == params


def test_conv_gemm_matmul_formulas():
    rng = np.random.default_rng(0)
    # 8 outputs of 5×4 per image, each (6/2)·3·3 products; the batch of 3 does not count.
    grouped = conv_model(rng.standard_normal((8, 3, 3, 3)), (10, 8), group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    grouped.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    metrics = graph_metrics(grouped)
    assert metrics.macs == 8 * 5 * 4 * 3 * 3 * 3 and metrics.params == 8 * 3 * 3 * 3
    assert graph_metrics(gemm_model(rng.standard_normal((9, 4)), batch=5, bias=np.ones(4))).macs == 9 * 4
    # A (2, 7, 10) · (10, 6) MatMul: 7 rows per sample.
    assert graph_metrics(matmul_model(rng.standard_normal((10, 6)), (2, 7, 10))).macs == 7 * 10 * 6


def test_conv_transpose_and_uncounted_ops():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2]),
             helper.make_node("Relu", ["y"], ["r"]), helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2])]
    model = make_model(nodes, [value("x", [1, 4, 5, 5])], [value("p", None)],
                       [numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)), "w"),
                        numpy_helper.from_array(np.arange(4, dtype=np.int64), "indices")])
    metrics = graph_metrics(model)
    assert metrics.macs == 4 * 5 * 5 * 6 * 3 * 3
    assert metrics.params == 4 * 6 * 3 * 3, "integer initializers are not parameters"
    assert metrics.node_macs == {"up": metrics.macs}


def test_plan_costs_equal_the_rewritten_graphs_metrics():
    """The plan's per-layer formulas and the graph count agree on the actual rewritten graph."""
    rng = np.random.default_rng(2)
    model = tiny_cnn(rng, size=18)
    for rule, kwargs in (("ratio", {"ratio": 0.5}), ("ratio", {"ratio": 1.0, "force": True}), ("vbmf", {})):
        plan = make_plan(model, (2, 1, 18, 18), rule=rule, **kwargs)
        assert plan.rewritten(), rule
        after = graph_metrics(apply_plan(model, plan), (2, 1, 18, 18))
        assert (after.params, after.macs) == (plan.totals["params"]["after"], plan.totals["macs"]["after"]), rule

"""Plans: rank rules, keep decisions with reasons, budgets, JSON round trip."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from onnx_builders import conv_model, gemm_model, low_rank_kernel, tiny_cnn
from tuckerize.errors import EngineInputError
from tuckerize.onnx_graph import load_model
from tuckerize.plan import LayerPlan, Plan, make_plan
from tuckerize.ranks import weakened_rank


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn(np.random.default_rng(4), size=16)


def test_kinds_and_ratio_ranks(cnn):
    plan = make_plan(cnn, rule="ratio", ratio=0.3)
    kinds = {entry.name: (entry.kind, entry.ranks) for entry in plan.layers}
    # stem: 1 input channel → Tucker-1 on the output mode only; 1×1 conv and Gemm → SVD.
    assert kinds["stem"] == ("tucker1", [math.ceil(0.3 * 16)])
    assert kinds["conv2"] == ("tucker2", [math.ceil(0.3 * 32), math.ceil(0.3 * 16)])
    assert kinds["pw"] == ("svd", [math.ceil(0.3 * 32)])
    assert kinds["fc"] == ("svd", [math.ceil(0.3 * 10)])
    assert all(entry.evbmf is None for entry in plan.layers), "rule ratio needs no EVBMF"
    assert plan.totals["params"]["after"] < plan.totals["params"]["before"]
    assert plan.totals["macs"]["ratio"] == pytest.approx(plan.totals["macs"]["after"] / plan.totals["macs"]["before"])


def test_vbmf_finds_structure_and_records_both_unfoldings(cnn):
    plan = make_plan(cnn, rule="vbmf")
    conv2 = plan.layer("conv2")
    assert conv2.kind == "tucker2" and conv2.ranks == [6, 5]
    assert set(conv2.evbmf) == {"out", "in"} and conv2.evbmf["out"]["dim"] == 32
    assert conv2.evbmf["out"]["sigma2"] > 0 and conv2.evbmf["in"]["threshold"] > 0
    assert plan.layer("pw").ranks == [4] and plan.layer("fc").ranks == [3]
    assert plan.layer("stem").kind == "tucker1" and plan.layer("stem").ranks == [4]


def test_rank_zero_and_non_shrinking_layers_are_kept_with_reasons():
    rng = np.random.default_rng(0)
    noise = conv_model(rng.standard_normal((24, 20, 3, 3)), (9, 9), pads=[1, 1, 1, 1])
    (entry,) = make_plan(noise, rule="vbmf").layers
    assert entry.kind == "keep" and "EVBMF rank 0" in entry.reason
    assert entry.params_after == entry.params_before
    small = conv_model(rng.standard_normal((6, 5, 3, 3)), (9, 9), pads=[1, 1, 1, 1])
    (entry,) = make_plan(small, rule="ratio", ratio=0.9).layers
    assert entry.kind == "keep" and "would not shrink" in entry.reason
    (forced,) = make_plan(small, rule="ratio", ratio=0.9, force=True).layers
    assert forced.kind == "tucker2" and forced.reason.startswith("forced")


def test_strength_weakens_evbmf_ranks(cnn):
    assert weakened_rank(64, 10, 1.0) == 10 and weakened_rank(64, 10, 0.5) == 37 and weakened_rank(64, 0, 1.0) == 0
    base = make_plan(cnn, rule="vbmf")
    weak = make_plan(cnn, rule="vbmf", strength=0.5)
    for b, w in zip(base.rewritten(), weak.layers):
        if w.kind == "keep":
            continue
        bounds = [b.weight_shape[0], b.weight_shape[1]] if b.kind == "tucker2" else None
        assert all(wr >= br for wr, br in zip(w.ranks, b.ranks))
        if bounds:
            assert w.ranks == [weakened_rank(min(bounds[0], b.weight_shape[1] * 9), b.ranks[0], 0.5),
                               weakened_rank(min(bounds[1], b.weight_shape[0] * 9), b.ranks[1], 0.5)]


def test_round_to_gives_multiples_within_bounds(cnn):
    plan = make_plan(cnn, rule="ratio", ratio=0.3, round_to=4, force=True)
    for entry in plan.rewritten():
        for rank, dim in zip(entry.ranks, [entry.weight_shape[0], entry.weight_shape[1]]):
            assert rank % 4 == 0 or rank == dim


@pytest.mark.parametrize("target_key", ["target_macs", "target_params"])
@pytest.mark.parametrize("target", [0.5, 0.3])
def test_budget_lands_within_two_percent(cnn, target_key, target):
    plan = make_plan(cnn, rule="budget", **{target_key: target})
    metric = "macs" if target_key == "target_macs" else "params"
    assert plan.totals[metric]["ratio"] == pytest.approx(target, rel=0.02)
    assert plan.totals["target"] == {"metric": metric, "ratio": target, "achieved": plan.totals[metric]["ratio"]}
    assert "achievedStrength" in plan.options


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_budget_on_zoo_models(name, zoo_path):
    model = load_model(zoo_path(name, 13, 64))
    plan = make_plan(model, rule="budget", target_macs=0.5)
    assert plan.totals["macs"]["ratio"] == pytest.approx(0.5, rel=0.02)


def test_unreachable_budget_says_what_is_reachable():
    rng = np.random.default_rng(0)
    model = conv_model(rng.standard_normal((4, 3, 3, 3)), (9, 9), pads=[1, 1, 1, 1])
    with pytest.raises(EngineInputError, match="unreachable.*reachable range"):
        make_plan(model, rule="budget", target_macs=0.05)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rule="latency"), "latency"),
    (dict(rule="ratio"), "needs a ratio"),
    (dict(rule="ratio", ratio=0.0), r"ratio must be in \(0, 1\]"),
    (dict(rule="ratio", ratio=1.5), r"ratio must be in \(0, 1\]"),
    (dict(rule="vbmf", strength=0.0), "strength"),
    (dict(rule="budget"), "exactly one of targetMacs or targetParams"),
    (dict(rule="budget", target_macs=0.5, target_params=0.5), "exactly one"),
    (dict(rule="budget", target_macs=1.0), r"fraction of the original to keep, in \(0, 1\)"),
    (dict(rule="vbmf", target_macs=0.5), "need rule 'budget'"),
    (dict(rule="ratio", ratio=0.5, round_to=0), "roundTo"),
    (dict(rule="svd"), "not one of"),
    (dict(rule="vbmf", ratio=0.5), "ratio applies only to rule 'ratio'"),
    (dict(rule="ratio", ratio=0.5, strength=0.5), "applies to rule 'vbmf'"),
])
def test_bad_options_are_input_errors(cnn, kwargs, match):
    with pytest.raises(EngineInputError, match=match):
        make_plan(cnn, **kwargs)


def test_json_round_trip(cnn):
    plan = make_plan(cnn, rule="vbmf", round_to=2)
    plan.layers[0].rel_error = 0.125
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert json.loads(plan.to_json())["layers"][1]["evbmf"]["out"]["rank"] == plan.layers[1].evbmf["out"]["rank"]
    with pytest.raises(EngineInputError, match="not valid JSON"):
        Plan.from_json("{")
    with pytest.raises(EngineInputError, match="malformed"):
        Plan.from_dict({"rule": "vbmf", "inputShape": [1], "layers": [{"name": "x"}]})
    with pytest.raises(EngineInputError, match="kind"):
        LayerPlan.from_dict({**plan.layers[0].to_dict(), "kind": "cp"})


def test_gemm_orientation_and_costs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))  # (in=40, out=30) as transB=0 stores it
    plan = make_plan(gemm_model(w, batch=1, bias=np.zeros(30)), rule="vbmf")
    (entry,) = plan.layers
    assert entry.kind == "svd" and entry.ranks == [3]
    assert entry.params_before == 40 * 30 + 30 and entry.params_after == 3 * (40 + 30) + 30
    assert entry.macs_before == 40 * 30 and entry.macs_after == 3 * (40 + 30)


def test_exact_low_rank_kernel_ranks():
    rng = np.random.default_rng(9)
    weight = low_rank_kernel(rng, 20, 12, 3, 3, 4, 3)
    (entry,) = make_plan(conv_model(weight, (8, 8), pads=[1, 1, 1, 1]), rule="vbmf").layers
    assert entry.ranks == [4, 3] and entry.evbmf["out"]["rank"] == 4 and entry.evbmf["in"]["rank"] == 3

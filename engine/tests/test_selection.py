"""Layer selection and the rank floor (plan.py, method 'improved') against the paper's exact method."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tuckerize.errors import EngineInputError
from tuckerize.plan import RANK_FLOOR, SELECTION_REASON, make_plan

MODELS = Path(__file__).resolve().parents[2] / "assets" / "models"


@pytest.fixture(scope="module")
def resnet():
    return onnx.load(str(MODELS / "fmnist-resnet.onnx"))


def test_paper_method_rewrites_every_layer_at_evbmf_ranks(resnet):
    plan = make_plan(resnet, [1, 1, 28, 28], rule="vbmf", method="paper")
    stem = plan.layer("/stem/stem.0/Conv")
    assert stem.kind == "tucker1" and stem.ranks == [1]       # EVBMF's rank 1 on the 1-channel stem
    assert plan.layer("/stages/stages.2/shortcut/shortcut.0/Conv").kind == "svd"
    assert not any(e.reason and e.reason.startswith(SELECTION_REASON) for e in plan.layers)


def test_improved_method_keeps_cheap_lossy_layers_with_the_reason_and_floors_ranks(resnet):
    paper = make_plan(resnet, [1, 1, 28, 28], rule="vbmf", method="paper")
    plan = make_plan(resnet, [1, 1, 28, 28], rule="vbmf", method="improved")
    selected = [e for e in plan.layers if e.reason and e.reason.startswith(SELECTION_REASON)]
    assert {e.name for e in selected} == {"/stages/stages.2/shortcut/shortcut.0/Conv",
                                          "/stages/stages.4/shortcut/shortcut.0/Conv"}
    assert all("% of the model's MACs" in e.reason and "weight error" in e.reason for e in selected)
    # The stem at the floor's rank 8 would cost more than the original conv, so it is kept too.
    assert plan.layer("/stem/stem.0/Conv").kind == "keep"
    assert all(r >= RANK_FLOOR for e in plan.rewritten() for r in e.ranks)
    # What selection keeps is small: the MACs reduction stays above 4x (paper 5.0x).
    assert 1 / plan.totals["macs"]["ratio"] >= 4.0
    assert plan.totals["macs"]["ratio"] - paper.totals["macs"]["ratio"] < 0.03


def test_budget_rule_keeps_the_selected_layers_and_meets_its_target(resnet):
    plan = make_plan(resnet, [1, 1, 28, 28], rule="budget", target_macs=0.25, target={"block": 1}, method="improved")
    assert plan.layer("/stages/stages.2/shortcut/shortcut.0/Conv").kind == "keep"
    assert abs(plan.totals["macs"]["ratio"] - 0.25) <= 0.25 * 0.02 + 1e-9


def test_unknown_method_is_refused(resnet):
    with pytest.raises(EngineInputError, match="method 'fast' is not one of"):
        make_plan(resnet, [1, 1, 28, 28], method="fast")

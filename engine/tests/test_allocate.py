"""Rank allocation by response energy (allocate.py): the curves it reads and the plans it writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from onnx_builders import conv_model, tiny_cnn
from tuckerize.allocate import allocate_by_energy, energy_curves
from tuckerize.options import plan_kwargs
from tuckerize.plan import make_plan, rank_bounds
from tuckerize.onnx_graph import find_layers

ENGINE_DIR = Path(__file__).resolve().parents[1]


def _plan(model, input_shape=None, **options):
    return make_plan(model, input_shape, **plan_kwargs({"rule": "vbmf", **options}, None, "improved"))


def test_curves_see_the_subspace_the_data_and_weights_use():
    """Inputs that vary in 2 of 8 channels keep all the input-mode energy at rank 2; a kernel whose output
    rows span 3 directions keeps all the output-mode energy at rank 3."""
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((12, 3))
    weight = (basis @ rng.standard_normal((3, 8 * 9))).reshape(12, 8, 3, 3).astype(np.float32)
    model = conv_model(weight, (10, 10), pads=[1, 1, 1, 1])
    plan = make_plan(model, None, rule="ratio", ratio=0.5, force=True, method="improved", target={"block": 1})
    assert plan.layers[0].kind == "tucker2"
    images = torch.zeros(64, 8, 10, 10)
    images[:, :2] = torch.randn(64, 2, 10, 10)
    curves = energy_curves(model, plan, images)["conv"]
    assert curves["in"][2] == pytest.approx(1.0) and curves["in"][1] < 0.99
    assert curves["out"][3] == pytest.approx(1.0) and curves["out"][2] < 0.99
    assert all(np.all(np.diff(c) >= -1e-12) for c in curves.values())


@pytest.mark.parametrize("multiple", [1, 4])
def test_allocation_keeps_the_plans_macs_bounds_and_block(multiple):
    rng = np.random.default_rng(4)
    model = tiny_cnn(rng, size=28, channels=16)
    base = _plan(model, target={"block": 1})
    assert base.rewritten(), "the tiny CNN has layers to rewrite"
    images = torch.randn(96, 1, 28, 28)
    allocated = allocate_by_energy(model, base, images, multiple)
    assert allocated.totals["macs"]["after"] <= base.totals["macs"]["after"]
    assert allocated.totals["params"]["after"] <= base.totals["params"]["after"]
    layers = {layer.name: layer for layer in find_layers(model)}
    for entry in allocated.rewritten():
        bounds = rank_bounds(entry.kind, layers[entry.name])
        assert all(1 <= r <= b and (r == b or r % multiple == 0) for r, b in zip(entry.ranks, bounds)), entry
    record = allocated.options["allocation"]
    assert record["images"] == 96 and record["multiple"] == multiple
    assert record["ranksBefore"] == {e.name: e.ranks for e in base.rewritten()}
    assert base.options.get("allocation") is None, "the base plan is not modified"


def test_a_dataset_job_plans_with_the_allocation(tmp_path):
    """A job with images and method 'improved' (the default) re-allocates; the paper's method does not."""
    model = tmp_path / "cnn28.onnx"
    onnx.save(tiny_cnn(np.random.default_rng(5), size=28), model)
    plans = {}
    for method in ("improved", "paper"):
        out = tmp_path / method
        job = {"jobId": f"job-{method}", "model": str(model), "dataset": "builtin:fashion-mnist",
               "outputDir": str(out), "workDir": str(tmp_path / f"work-{method}"), "threads": 1, "seed": 3,
               "options": {"rule": "vbmf", "method": method, "calibrationSamples": 128}}
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps(job))
        result = subprocess.run([sys.executable, "-m", "tuckerize", "run", str(path)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ENGINE_DIR)}, timeout=600)
        assert result.returncode == 0, result.stderr
        plans[method] = json.loads((out / "plan.json").read_text())
        events = [json.loads(line) for line in result.stdout.splitlines()]
        logged = any("re-allocated by response energy" in e.get("message", "") for e in events)
        assert logged == (method == "improved")
    assert plans["improved"]["options"]["allocation"]["images"] == 128
    assert "allocation" not in plans["paper"]["options"]

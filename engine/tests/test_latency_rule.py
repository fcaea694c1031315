"""The latency rule: ONNX Runtime's per-layer timings decide which rewrites stay; the MACs target is re-balanced.

Timings here are injected tables (the TS test test/latency.test.ts measures real ones); the candidates
command's models are checked with onnxruntime-node, the tests' judge.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_builders import tiny_cnn
from tuckerize import cli
from tuckerize.candidates import CANDIDATES_FILE, layer_file_stem, write_candidates
from tuckerize.errors import EngineInputError
from tuckerize.onnx_graph import load_model
from tuckerize.plan import LATENCY_MIN_SPEEDUP, Plan, make_plan

ENGINE_DIR = Path(__file__).resolve().parents[1]
REASON = re.compile(r"^replacement only (\d+\.\d\d)× as fast in ONNX Runtime \((\S+) ms → (\S+) ms at ([\d×]+)\); kept$")


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn(np.random.default_rng(4), size=16)


def _table(times: dict, model_ms=None, plan=None) -> dict:
    """A latency-table.json as the worker writes it; ranks/shape/MACs copied from `plan` when given."""
    layers = {}
    for name, (orig, repl) in times.items():
        entry = {"origMs": orig, "replMs": repl, "speedup": orig / repl}
        if plan is not None:
            layer = plan.layer(name)
            entry |= {"kind": layer.kind, "ranks": layer.ranks, "inputShape": layer.input_shape,
                      "macs": {"before": layer.macs_before, "after": layer.macs_after}}
        layers[name] = entry
    return {"version": 1, "threads": 1, "runs": 20, "ortVersion": "test", "layers": layers,
            "model": None if model_ms is None else {"origMs": model_ms}}


def test_a_slow_replacement_is_kept_with_the_measured_reason(cnn):
    base = make_plan(cnn, rule="vbmf")
    assert base.layer("conv2").kind == "tucker2" and base.layer("pw").kind == "svd"
    table = _table({"conv2": (1.23, 1.27), "pw": (0.50, 0.25), "fc": (0.2, 0.1)}, plan=base)
    plan = make_plan(cnn, rule="latency", latency_table=table)
    conv2 = plan.layer("conv2")
    assert conv2.kind == "keep" and conv2.ranks == [] and conv2.macs_after == conv2.macs_before
    assert conv2.reason == "replacement only 0.97× as fast in ONNX Runtime (1.23 ms → 1.27 ms at 1×16×16×16); kept"
    assert conv2.evbmf == base.layer("conv2").evbmf, "the EVBMF analysis stays in the report"
    # Faster ones keep exactly the EVBMF plan's ranks (no target to re-balance).
    for name in ("pw", "fc"):
        assert (plan.layer(name).kind, plan.layer(name).ranks) == (base.layer(name).kind, base.layer(name).ranks)
    latency = plan.totals["latency"]
    assert latency["keptSlow"] == ["conv2"] and latency["basis"] == "timed-layers"
    # conv2 keeps its 1.23 ms, pw and fc run their replacements: (1.23 + 0.25 + 0.1) / (1.23 + 0.5 + 0.2).
    assert latency["predictedRatio"] == pytest.approx((1.23 + 0.25 + 0.1) / 1.93)
    # The stem was rewritten by EVBMF but not timed: named, not silently counted.
    assert latency["untimed"] == ["stem"]
    assert Plan.from_json(plan.to_json()).totals["latency"] == latency


def test_threshold_is_five_percent(cnn):
    base = make_plan(cnn, rule="vbmf")
    just_below = 1.0 / (LATENCY_MIN_SPEEDUP - 1e-6)
    table = _table({"conv2": (1.0, just_below), "pw": (LATENCY_MIN_SPEEDUP, 1.0)}, plan=base)
    plan = make_plan(cnn, rule="latency", latency_table=table)
    assert plan.layer("conv2").kind == "keep" and REASON.match(plan.layer("conv2").reason)
    assert plan.layer("pw").kind == "svd", "exactly 1.05× is fast enough"


def test_whole_model_time_adds_the_untimed_remainder(cnn):
    base = make_plan(cnn, rule="vbmf")
    table = _table({"conv2": (2.0, 1.0), "pw": (1.0, 2.0)}, model_ms=10.0, plan=base)
    plan = make_plan(cnn, rule="latency", latency_table=table, target_latency=0.8)
    latency = plan.totals["latency"]
    # remainder 10 − 3 = 7 ms unchanged; conv2 now 1 ms, pw kept at 1 ms.
    assert latency["basis"] == "model" and latency["predictedRatio"] == pytest.approx(0.9)
    assert latency["targetRatio"] == 0.8 and plan.options["targetLatency"] == 0.8


def test_rebalancing_lands_within_two_percent_with_slow_layers_fixed(zoo_path):
    model = load_model(zoo_path("resnet18", 13, 64))
    budget = make_plan(model, rule="budget", target_macs=0.5)
    rewritten = [e for e in budget.layers if e.kind == "tucker2"]
    slow = [rewritten[1].name, rewritten[4].name]
    times = {e.name: ((1.0, 1.2) if e.name in slow else (1.0, 0.5)) for e in budget.rewritten()}
    plan = make_plan(model, rule="latency", latency_table=_table(times, plan=budget), target_macs=0.5)
    assert plan.totals["macs"]["ratio"] == pytest.approx(0.5, rel=0.02)
    assert plan.totals["target"] == {"metric": "macs", "ratio": 0.5, "achieved": plan.totals["macs"]["ratio"]}
    for name in slow:
        entry = plan.layer(name)
        assert entry.kind == "keep" and entry.macs_after == entry.macs_before
        assert REASON.match(entry.reason).group(1) == "0.83"
    # The others carry the kept layers' share: ranks never above the plain budget's, some strictly below.
    others = [(plan.layer(e.name), e) for e in budget.rewritten() if e.name not in slow]
    assert all(new.kind == old.kind and all(a <= b for a, b in zip(new.ranks, old.ranks)) for new, old in others)
    assert any(new.ranks != old.ranks for new, old in others)
    # Their replacements were timed at the budget's ranks; lower ranks are rescaled by MACs and say so.
    assert set(plan.totals["latency"]["rescaled"]) == {new.name for new, old in others if new.ranks != old.ranks}


def test_target_out_of_reach_after_keeping_names_the_kept_layers(cnn):
    budget = make_plan(cnn, rule="budget", target_macs=0.5)
    table = _table({"conv2": (1.0, 2.0), "pw": (1.0, 0.5), "fc": (1.0, 0.5)}, plan=budget)
    with pytest.raises(EngineInputError, match=r"after keeping 1 layer\(s\).*\(conv2\).*unreachable"):
        make_plan(cnn, rule="latency", latency_table=table, target_macs=0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rule="latency"), "worker must time candidates first"),
    (dict(rule="latency", latency_table={"layers": []}), "'layers': {name: {origMs, replMs}}"),
    (dict(rule="latency", latency_table={"layers": {"conv2": {"origMs": 1.0, "replMs": 0}}}),
     r"layers\['conv2'\].replMs must be a positive number"),
    (dict(rule="latency", latency_table={"layers": {"pw": {"origMs": 1, "replMs": 1, "ranks": ["x"]}}}),
     r"layers\['pw'\].ranks must be a list of positive integers"),
    (dict(rule="latency", latency_table={"layers": {}}, target_params=0.5), "use targetMacs"),
    (dict(rule="latency", latency_table={"layers": {}}, target_latency=1.5), r"targetLatency .* in \(0, 1\)"),
    (dict(rule="budget", target_macs=0.5, target_latency=0.5), "targetLatency needs rule 'latency'"),
    (dict(rule="vbmf", latency_table={"layers": {}}), "applies only to rule 'latency'"),
])
def test_bad_latency_options_are_input_errors(cnn, kwargs, match):
    with pytest.raises(EngineInputError, match=match):
        make_plan(cnn, **kwargs)


def test_candidates_command_writes_models_onnxruntime_runs(tmp_path, cnn, run_ort, capsys):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn, path)
    out = tmp_path / "cand"
    # Full ranks, forced: each replacement must compute what its original node computes.
    assert cli.main(["candidates", str(path), "-o", str(out), "--rule", "ratio", "--ratio", "1.0", "--force",
                     "--input-shape", "2,1,16,16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / CANDIDATES_FILE).read_text())
    assert summary["layers"] == len(manifest["layers"]) == 4
    assert [(l["name"], l["kind"]) for l in manifest["layers"]] == [
        ("stem", "tucker1"), ("conv2", "tucker2"), ("pw", "svd"), ("fc", "svd")]
    rng = np.random.default_rng(0)
    for layer in manifest["layers"]:
        orig, repl = onnx.load(out / layer["orig"]), onnx.load(out / layer["repl"])
        assert [n.op_type for n in orig.graph.node] == [layer["op"]]
        assert len(repl.graph.node) == {"tucker2": 3, "tucker1": 2, "svd": 2}[layer["kind"]]
        assert layer["inputShape"][0] == 2
        x = rng.standard_normal(layer["inputShape"]).astype(np.float32)
        (y_orig,), (y_repl,) = run_ort(out / layer["orig"], {layer["inputName"]: x}), \
            run_ort(out / layer["repl"], {layer["inputName"]: x})
        assert y_orig.shape[0] == 2
        np.testing.assert_allclose(y_repl, y_orig, rtol=1e-3, atol=1e-4 * np.abs(y_orig).max())
    assert manifest["layers"][1]["inputShape"] == [2, 16, 16, 16]
    assert manifest["layers"][1]["macs"]["after"] > manifest["layers"][1]["macs"]["before"], "full rank costs more"
    assert [p.name for p in out.rglob("*.tmp")] == []


def test_candidates_files_are_safe_names():
    assert layer_file_stem(3, "/features/features.0/Conv") == "003_features_features.0_Conv"
    assert layer_file_stem(0, "...") == "000_layer"


def test_candidates_only_for_rewritten_layers_and_kept_ones_listed(tmp_path, cnn):
    plan = make_plan(cnn, rule="budget", target_macs=0.5)
    manifest = write_candidates(cnn, plan, str(tmp_path))
    assert [l["name"] for l in manifest["layers"]] == [e.name for e in plan.rewritten()]
    assert [k["name"] for k in manifest["kept"]] == [e.name for e in plan.layers if e.kind == "keep"]
    assert all(l["ranks"] == plan.layer(l["name"]).ranks for l in manifest["layers"])


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR)}
    return subprocess.run([sys.executable, "-m", "tuckerize", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_rule_latency_without_table_exits_2(tmp_path, cnn):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn, path)
    proc = _cli("candidates", path, "-o", tmp_path / "c", "--rule", "latency")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "worker must time candidates first" in proc.stderr
    proc = _cli("analyze", path, "--rule", "latency", "--latency-table", tmp_path / "missing.json")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def _job(tmp_path: Path, model: Path, options: dict) -> Path:
    job = {"jobId": "lat-1", "model": str(model), "dataset": None, "outputDir": str(tmp_path / "out"),
           "workDir": str(tmp_path / "work"), "threads": 1, "seed": 0, "options": options}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def _run(job: Path):
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR)}
    proc = subprocess.run([sys.executable, "-m", "tuckerize", "run", str(job)], capture_output=True, text=True,
                          env=env, timeout=300)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_run_job_uses_the_latency_table_and_reports_it(tmp_path, cnn):
    model = tmp_path / "cnn.onnx"
    onnx.save(cnn, model)
    # Unaligned ranks (block 1): at the host's block the 1x1 "pw" would be kept as saving nothing, before any timing.
    base = make_plan(cnn, rule="budget", target_macs=0.6, target={"block": 1})
    table_path = tmp_path / "latency-table.json"
    times = {e.name: (1.0, 0.5) for e in base.rewritten()} | {"pw": (0.3, 0.4)}
    table_path.write_text(json.dumps(_table(times, model_ms=5.0, plan=base)))
    options = {"rule": "latency", "targetMacs": 0.6, "targetLatency": 0.7, "latencyTable": str(table_path),
               "target": {"block": 1}}
    code, events, err = _run(_job(tmp_path, model, options))
    assert code == 0, err
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    pw = next(l for l in plan["layers"] if l["name"] == "pw")
    assert pw["kind"] == "keep" and REASON.match(pw["reason"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["latency"]["keptSlow"] == ["pw"]
    assert report["totals"]["macs"]["ratio"] == pytest.approx(0.6, rel=0.02)
    assert events[-1]["summary"]["latency"]["targetRatio"] == 0.7
    # A re-timed table (same path, other numbers) must not resume from the first run's checkpoint.
    table_path.write_text(json.dumps(_table({e.name: (1.0, 0.5) for e in base.rewritten()}, plan=base)))
    code, events, err = _run(_job(tmp_path, model, options))
    assert code == 0, err
    assert not any("resumed" in e.get("message", "") for e in events)
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert next(l for l in plan["layers"] if l["name"] == "pw")["kind"] == "svd"


@pytest.mark.parametrize("options,match", [
    ({"rule": "latency", "latencyTable": "relative/table.json"}, "options.latencyTable: 'relative/table.json' does not match"),
    ({"rule": "latency", "targetMacs": 0.5}, "rule=latency needs latencyTable"),
])
def test_run_job_latency_input_errors(tmp_path, cnn, options, match):
    model = tmp_path / "cnn.onnx"
    onnx.save(cnn, model)
    code, _, err = _run(_job(tmp_path, model, options))
    assert code == 2 and match in err, err


def test_layers_timed_alone_above_the_model_time_leave_no_remainder(cnn):
    base = make_plan(cnn, rule="vbmf")
    table = _table({"conv2": (4.0, 1.0), "pw": (2.0, 1.0)}, model_ms=5.0, plan=base)
    latency = make_plan(cnn, rule="latency", latency_table=table).totals["latency"]
    assert latency["predictedRatio"] == pytest.approx(2.0 / 6.0)
    assert latency["originalMs"] == 5.0 and latency["predictedMs"] == pytest.approx(5.0 / 3.0)


def _with_alternatives(table: dict, name: str, alternatives: list[dict], rel_error: float) -> dict:
    table["layers"][name] |= {"relError": rel_error, "alternatives": alternatives}
    return table


def _structures(plan, name: str) -> dict:
    """conv2's Tucker-1 structures at no more MACs than its Tucker-2 chain, as candidates.py sizes them."""
    from tuckerize.plan import alternative_structures
    return {e.kind: e for e in alternative_structures(_cnn_model, plan.layer(name))}


_cnn_model = tiny_cnn(np.random.default_rng(4), size=16)


def test_the_clock_picks_a_faster_tucker1_structure_within_the_error_slack():
    base = make_plan(_cnn_model, rule="vbmf")
    conv2 = base.layer("conv2")
    structures = _structures(base, "conv2")
    assert set(structures) == {"tucker1in", "tucker1"}
    assert all(s.macs_after <= conv2.macs_after for s in structures.values()), "no more MACs than Tucker-2"
    t1in = structures["tucker1in"]
    alt = [{"kind": "tucker1in", "ranks": t1in.ranks, "replMs": 0.40, "relError": 0.11,
            "macs": {"after": t1in.macs_after}},
           {"kind": "tucker1", "ranks": structures["tucker1"].ranks, "replMs": 0.45, "relError": 0.10,
            "macs": {"after": structures["tucker1"].macs_after}}]
    table = _with_alternatives(_table({"conv2": (1.0, 0.5), "pw": (0.5, 0.25)}, plan=base), "conv2", alt, 0.10)
    plan = make_plan(_cnn_model, rule="latency", latency_table=table)
    chosen = plan.layer("conv2")
    assert (chosen.kind, chosen.ranks) == ("tucker1in", t1in.ranks)
    assert chosen.macs_after == t1in.macs_after and chosen.params_after == t1in.params_after
    assert chosen.reason == (f"structure chosen by the clock: tucker1in at ranks {t1in.ranks} ran in 0.4 ms against "
                             f"tucker2 at {conv2.ranks} in 0.5 ms (original 1 ms), weight error 0.110 against 0.100")
    latency = plan.totals["latency"]
    assert latency["structures"] == ["conv2"] and latency["keptSlow"] == []
    assert "conv2" not in latency["rescaled"], "the chosen structure's own time is used"
    # Too much error for the time (slack 1.25×), or not 5 % faster: Tucker-2 stays.
    for replMs, rel_error in ((0.40, 0.13), (0.48, 0.10)):
        alt[0] |= {"replMs": replMs, "relError": rel_error}
        alt[1] |= {"replMs": 0.49, "relError": 0.5}
        table = _with_alternatives(_table({"conv2": (1.0, 0.5)}, plan=base), "conv2", alt, 0.10)
        assert make_plan(_cnn_model, rule="latency", latency_table=table).layer("conv2").kind == "tucker2"


def test_a_structure_chosen_by_the_clock_is_fixed_while_the_budget_rebalances():
    budget = make_plan(_cnn_model, rule="budget", target_macs=0.5)
    conv2 = budget.layer("conv2")
    assert conv2.kind == "tucker2"
    t1 = _structures(budget, "conv2")["tucker1"]
    alt = [{"kind": "tucker1", "ranks": t1.ranks, "replMs": 0.3, "relError": None, "macs": {"after": t1.macs_after}}]
    times = {e.name: (1.0, 0.5) for e in budget.rewritten()}
    table = _with_alternatives(_table(times, plan=budget), "conv2", alt, 0.2)
    plan = make_plan(_cnn_model, rule="latency", latency_table=table, target_macs=0.5)
    assert (plan.layer("conv2").kind, plan.layer("conv2").ranks) == ("tucker1", t1.ranks)
    assert plan.totals["macs"]["ratio"] == pytest.approx(0.5, rel=0.02)
    assert plan.totals["latency"]["structures"] == ["conv2"]


def test_candidates_time_tucker1_structures_beside_tucker2(tmp_path, run_ort):
    plan = make_plan(_cnn_model, rule="vbmf")
    manifest = write_candidates(_cnn_model, plan, str(tmp_path))
    by_name = {l["name"]: l for l in manifest["layers"]}
    assert [a["kind"] for a in by_name["conv2"]["alternatives"]] == ["tucker1in", "tucker1"]
    assert all(not l["alternatives"] for n, l in by_name.items() if l["kind"] != "tucker2")
    conv2 = by_name["conv2"]
    x = np.random.default_rng(1).standard_normal(conv2["inputShape"]).astype(np.float32)
    (y,) = run_ort(tmp_path / conv2["orig"], {conv2["inputName"]: x})
    for alternative in conv2["alternatives"]:
        assert alternative["macs"]["after"] <= conv2["macs"]["after"]
        model = onnx.load(tmp_path / alternative["repl"])
        assert len(model.graph.node) == 2
        (y_alt,) = run_ort(tmp_path / alternative["repl"], {conv2["inputName"]: x})
        # The replacement approximates the layer with the error the engine reported for the weights.
        assert y_alt.shape == y.shape and 0 <= alternative["relError"] < 1

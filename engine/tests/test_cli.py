"""The command line: analyze and compress outputs, one-line errors with exit 2, crashes with exit 1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_builders import tiny_cnn
from tuckerize import cli
from tuckerize.plan import Plan

ENGINE_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cnn.onnx"
    onnx.save(tiny_cnn(np.random.default_rng(1), size=16), path)
    return path


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR)}
    return subprocess.run([sys.executable, "-m", "tuckerize", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_analyze_table_and_json(cnn_path, capsys):
    # --target 1: the ranks as the rule picks them, unrounded (test_alignment covers the rounding).
    assert cli.main(["analyze", str(cnn_path), "--input-shape", "1,1,16,16", "--target", "1"]) == 0
    table = capsys.readouterr().out
    for fragment in ("conv2", "tucker2[6, 5]", "6/32", "5/16", "tucker1[4]", "svd[3]", "params:", "macs:"):
        assert fragment in table, fragment
    assert cli.main(["analyze", str(cnn_path), "--json", "--rule", "ratio", "--ratio", "0.5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["rule"] == "ratio" and plan["layers"][1]["evbmf"]["out"]["rank"] == 6, "analyze shows EVBMF ranks"


def test_compress_writes_model_and_plan(cnn_path, tmp_path, capsys):
    out, plan_out = tmp_path / "sub" / "small.onnx", tmp_path / "plan.json"
    assert cli.main(["compress", str(cnn_path), "-o", str(out), "--plan-out", str(plan_out), "--profile",
                     "--target", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "4 of 4 layers rewritten" in lines[0]
    profile = json.loads(lines[1])["profile"]
    assert set(profile) >= {"svd", "sigma2", "hooi", "graph", "total"}
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    plan = Plan.from_json(plan_out.read_text())
    assert [e.kind for e in plan.layers] == ["tucker1", "tucker2", "svd", "svd"]
    assert all(e.rel_error is not None and e.rel_error < 0.2 for e in plan.layers)
    assert [p.name for p in tmp_path.rglob("*.tmp")] == [], "no temp files left behind"


@pytest.mark.parametrize("args,match,code", [
    (["compress", "{model}", "-o", "{tmp}/x.onnx", "--rule", "ratio", "--ratio", "1.5"], r"ratio must be in \(0, 1\]",
     "invalid_option"),
    (["compress", "{model}"], "required: -o/--output", "usage"),
    (["analyze", "{tmp}/missing.onnx"], "does not exist", "invalid_model"),
    (["analyze", "{model}", "--input-shape", "1,1,x"], "--input-shape", "usage"),
    (["analyze", "{model}", "--rule", "latency"], "latency", "invalid_option"),
    (["candidates", "{model}", "-o", "{tmp}/c", "--rule", "latency", "--latency-table", "{tmp}/none.json"],
     "does not exist", "invalid_latency_table"),
    (["compress", "{model}", "-o", "{tmp}/x.onnx", "--rule", "budget", "--target-macs", "0.001"], "unreachable",
     "target_unreachable"),
    (["frobnicate"], "invalid choice", "usage"),
])
def test_input_errors_are_one_line_exit_2(cnn_path, tmp_path, capsys, args, match, code):
    args = [a.format(model=cnn_path, tmp=tmp_path) for a in args]
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("tuckerize: error: ") and err.count("\n") == 1
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "x.onnx").exists()
    # The worker's copy: the last stdout line, with a code, and no server path in what users see.
    event = json.loads(out.splitlines()[-1])
    assert event["event"] == "error" and event["code"] == code, event
    assert __import__("re").search(match, event["detail"]), event
    assert str(tmp_path) not in event["detail"]
    if code == "target_unreachable":
        # The worker moves its own MACs target into this range instead of parsing the detail.
        low, high = event["data"]["range"]
        assert event["field"] == "targetMacs" and 0 < low < high <= 1 and not low <= 0.001


def test_real_process_exit_codes(cnn_path, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not onnx")
    proc = _cli("compress", bad, "-o", tmp_path / "out.onnx")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not an ONNX model" in proc.stderr
    proc = _cli("analyze", cnn_path, "--ratio")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "expected one argument" in proc.stderr
    proc = _cli("compress", cnn_path, "-o", tmp_path / "out.onnx", "--rule", "ratio", "--ratio", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(tmp_path / "out.onnx")) and (tmp_path / "out.onnx").is_file()


def test_unexpected_failures_exit_1_with_traceback(cnn_path, tmp_path, capsys):
    # The output path is an existing directory: os.replace fails with an OSError, which is not an input
    # error the engine knows about, so it surfaces as a crash (exit 1) with the traceback.
    target = tmp_path / "taken"
    target.mkdir()
    assert cli.main(["compress", str(cnn_path), "-o", str(target), "--rule", "ratio", "--ratio", "0.5"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" in err and "IsADirectoryError" in err
    event = json.loads(out.splitlines()[-1])
    assert event["code"] == "internal_error" and "IsADirectoryError" in event["detail"]
    assert str(tmp_path) not in event["detail"]
    assert list(tmp_path.glob(".*.tmp")) == [], "the temp file is removed when the replace fails"

"""run.py with calibration and with options.maxAccuracyDrop (search.py): report sections, events, refusals."""
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

from onnx_builders import tiny_cnn
from test_finetune import teacher_labels, write_npz
from tuckerize.errors import EngineInputError
from tuckerize.search import MAX_TARGET, MIN_TARGET, next_target, validate

ENGINE_DIR = Path(__file__).resolve().parents[1]


def _run_job(tmp_path: Path, options: dict, labelled: bool = True):
    # Two of its layers are rewritten at the rank floor: the 3×3 conv (Tucker-2) and the 1×1 conv (SVD).
    model = tiny_cnn(np.random.default_rng(2), size=16)
    onnx.save(model, tmp_path / "model.onnx")
    images = np.random.default_rng(3).uniform(0, 1, (240, 1, 16, 16)).astype(np.float32)
    dataset = write_npz(tmp_path / "data.npz", images, teacher_labels(model, images) if labelled else None)
    job = {"jobId": "search", "model": str(tmp_path / "model.onnx"), "dataset": dataset,
           "outputDir": str(tmp_path / "out"), "workDir": str(tmp_path / "work"), "threads": 1, "seed": 0,
           "options": dict(options, target={"block": 1})}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "tuckerize", "run", str(tmp_path / "job.json")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ENGINE_DIR)}, timeout=600)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    report = json.loads((tmp_path / "out" / "report.json").read_text()) if proc.returncode == 0 else None
    return proc.returncode, events, report


def test_next_target_bisects_towards_the_most_compressed_candidate_within_the_limit():
    assert next_target([{"targetMacs": 0.2, "withinLimit": True}]) == pytest.approx((MIN_TARGET * 0.2) ** 0.5)
    assert next_target([{"targetMacs": 0.2, "withinLimit": False}]) == pytest.approx((0.2 * MAX_TARGET) ** 0.5)
    tried = [{"targetMacs": 0.2, "withinLimit": True}, {"targetMacs": 0.1, "withinLimit": False}]
    assert next_target(tried) == pytest.approx(0.02 ** 0.5)
    tried.append({"targetMacs": 0.102, "withinLimit": True})
    assert next_target(tried) is None          # bracket [0.1, 0.102] closed


def test_validate_refuses_other_rules_and_missing_data():
    assert validate({"maxAccuracyDrop": 0.5}, True) == 0.5
    for options, has_dataset, fragment in [({"maxAccuracyDrop": 0}, True, "in \\(0, 100\\]"),
                                           ({"maxAccuracyDrop": 1, "rule": "budget"}, True, "rule 'vbmf'"),
                                           ({"maxAccuracyDrop": 1}, False, "labelled dataset")]:
        with pytest.raises(EngineInputError, match=fragment) as info:
            validate(options, has_dataset)
        assert info.value.field == "maxAccuracyDrop"


def test_calibrated_run_reports_accuracy_with_and_without_calibration(tmp_path):
    code, events, report = _run_job(tmp_path, {"calibrationSamples": 64})
    assert code == 0, events[-3:]
    section = report["calibration"]
    assert section["samples"] == 64 and section["layers"]
    assert all(layer.get("relErrorAfter", 0) <= layer.get("relErrorBefore", 0) + 1e-9 for layer in section["layers"])
    heldout = section["heldout"]
    assert {"withoutCalibration", "withCalibration", "original"} <= set(heldout)
    assert heldout["withCalibration"]["meanKL"] <= heldout["withoutCalibration"]["meanKL"] + 1e-6
    assert any(e.get("stage") == "rewrite" and str(e.get("message", "")).startswith("calibrated ") for e in events)
    assert report["method"] == "improved" and report["search"] is None


def test_accuracy_target_returns_the_most_compressed_candidate_within_the_limit_and_its_curve(tmp_path):
    code, events, report = _run_job(tmp_path, {"maxAccuracyDrop": 60, "calibrationSamples": 32})
    assert code == 0, events[-3:]
    search, curve = report["search"], report["tradeoff"]
    assert search["met"] is True and search["maxAccuracyDrop"] == 60
    within = [c for c in search["candidates"] if c.get("withinLimit")]
    chosen = next(c for c in search["candidates"] if c["candidate"] == search["chosen"])
    assert chosen["macsRatio"] == min(c["macsRatio"] for c in within)
    assert report["totals"]["macs"]["ratio"] == pytest.approx(chosen["macsRatio"], rel=0.02)
    assert curve == sorted(curve, key=lambda c: c["macsRatio"]) and {"macsRatio", "accuracy"} <= set(curve[0])
    per_candidate = [e for e in events if e.get("stage") == "plan" and "candidate" in e]
    assert len(per_candidate) == len(search["candidates"]) >= 2
    # Each candidate is made as a vbmf job's plan is: ranks re-allocated by response energy on the images.
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["rule"] == "budget" and plan["options"]["allocation"]["images"] == 32


def test_a_job_with_fine_tuning_starts_it_from_the_calibrated_candidate(tmp_path):
    """The brief fine-tune only scores candidates: the job's own steps start from the chosen candidate's
    calibrated weights, so the returned model had exactly the fine-tuning the job asked for."""
    code, events, report = _run_job(tmp_path, {"maxAccuracyDrop": 60, "calibrationSamples": 32,
                                               "finetune": {"steps": 3}})
    assert code == 0, events[-3:]
    search = report["search"]
    chosen = next(c for c in search["candidates"] if c["candidate"] == search["chosen"])
    assert report["finetune"]["steps"] == 3
    assert report["accuracy"]["compressed"]["top1"] == pytest.approx(chosen["accuracyBeforeFinetune"])


def test_accuracy_target_says_so_when_no_candidate_meets_the_limit(tmp_path):
    # The labels are the original's own predictions (top-1 100 %); a brief fine-tune at a learning rate of
    # 5 moves every candidate off them, so none stays within 0.01 points.
    code, events, report = _run_job(tmp_path, {"maxAccuracyDrop": 0.01, "calibrationSamples": 32,
                                               "finetune": {"lr": 5.0, "steps": 1}})
    assert code == 0, events[-3:]
    search = report["search"]
    assert search["met"] is False and "no candidate stayed within" in search["message"]
    best = max(c["accuracy"] for c in search["candidates"] if "accuracy" in c)
    assert next(c for c in search["candidates"] if c["candidate"] == search["chosen"])["accuracy"] == best
    assert events[-1]["summary"]["search"]["met"] is False


def test_accuracy_target_without_labels_is_bad_input(tmp_path):
    code, events, _ = _run_job(tmp_path, {"maxAccuracyDrop": 1}, labelled=False)
    assert code == 2
    error = next(e for e in events if e["event"] == "error")
    assert error["field"] == "maxAccuracyDrop" and "labels" in error["detail"]

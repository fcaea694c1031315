"""`python3 -m tuckerize run job.json`: the worker's contract, exercised as a real process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_builders import tiny_cnn

ENGINE_DIR = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["analyze", "plan", "rewrite", "evaluate", "write"]


def _write_job(tmp_path: Path, model: Path, **overrides) -> Path:
    job = {"jobId": "job-1", "model": str(model), "dataset": None, "outputDir": str(tmp_path / "out"),
           "workDir": str(tmp_path / "work"), "threads": 1, "seed": 3, "options": {"rule": "vbmf"}}
    job.update(overrides)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def _start(job_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR)}
    return subprocess.Popen([sys.executable, "-m", "tuckerize", "run", str(job_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _run(job_path: Path):
    proc = _start(job_path)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, [json.loads(line) for line in out.splitlines()], err


@pytest.fixture()
def cnn_path(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(tiny_cnn(np.random.default_rng(2), size=16), path)
    return path


def test_run_writes_artifacts_and_speaks_json_lines(tmp_path, cnn_path, run_ort):
    # The paper's method: every eligible layer at EVBMF's ranks (the default's rank floor of 8 would keep
    # two of this small net's four layers; test_selection.py covers that).
    code, events, err = _run(_write_job(tmp_path, cnn_path, options={"rule": "vbmf", "inputShape": [2, 1, 16, 16],
                                                                      "target": {"block": 1}, "method": "paper"}))
    assert code == 0, err
    assert all(e["event"] in ("progress", "log", "result") for e in events)
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert sorted(set(stages), key=stages.index) == STAGE_ORDER, "stages appear once each, in order"
    assert stages == sorted(stages, key=STAGE_ORDER.index)
    per_layer = [e for e in events if e["event"] == "progress" and e["stage"] == "rewrite" and e["done"] > 0]
    assert [e["done"] for e in per_layer] == [1, 2, 3, 4] and all(e["total"] == 4 for e in per_layer)
    result = events[-1]
    assert result["event"] == "result" and result["artifact"] == "compressed.onnx"
    assert result["summary"]["layers"] == {"rewritten": 4, "kept": 0}

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["compressed.onnx", "plan.json", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"model", "options", "layers", "totals", "accuracy", "finetune", "timings"}
    assert report["accuracy"] is None and report["finetune"] is None
    assert list(report["timings"]) == STAGE_ORDER
    assert report["model"]["inputShape"] == [2, 1, 16, 16] and report["model"]["opset"] == 13
    assert report["totals"]["macs"]["after"] < report["totals"]["macs"]["before"]
    plan = json.loads((out / "plan.json").read_text())
    assert [layer["kind"] for layer in plan["layers"]] == ["tucker1", "tucker2", "svd", "svd"]
    # The structured weights are low-rank plus a little noise: the rewrite moves outputs only slightly.
    assert 0 < report["fidelity"]["relativeError"] < 0.2

    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    (expected,), (actual,) = run_ort(cnn_path, {"input": x}), run_ort(out / "compressed.onnx", {"input": x})
    assert actual.shape == expected.shape
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.2


def test_retry_resumes_from_the_checkpoint(tmp_path, cnn_path):
    job = _write_job(tmp_path, cnn_path, options={"rule": "ratio", "ratio": 0.5})
    assert _run(job)[0] == 0
    first = (tmp_path / "out" / "compressed.onnx").read_bytes()
    (tmp_path / "out" / "compressed.onnx").unlink()
    code, events, err = _run(job)
    assert code == 0, err
    assert any("resumed" in e.get("message", "") for e in events)
    assert (tmp_path / "out" / "compressed.onnx").read_bytes() == first
    # Other options must not reuse that checkpoint.
    job = _write_job(tmp_path, cnn_path, options={"rule": "ratio", "ratio": 0.25})
    code, events, _ = _run(job)
    assert code == 0 and not any("resumed" in e.get("message", "") for e in events)


@pytest.mark.parametrize("mutate,match,code,field", [
    (lambda job: "{not json", "not valid JSON", "invalid_job", None),
    (lambda job: json.dumps([1, 2]), "must hold a JSON object", "invalid_job", None),
    (lambda job: json.dumps({**job, "model": "relative/model.onnx"}), "'model' must be an absolute path",
     "invalid_job", "model"),
    (lambda job: json.dumps({**job, "model": "/nonexistent/model.onnx"}), "does not exist", "invalid_model", None),
    (lambda job: json.dumps({k: v for k, v in job.items() if k != "outputDir"}), "missing field 'outputDir'",
     "invalid_job", "outputDir"),
    (lambda job: json.dumps({**job, "threads": 0}), "'threads' must be an integer >= 1", "invalid_job", "threads"),
    (lambda job: json.dumps({**job, "options": {"rule": "vbmf", "ratoi": 0.5}}), "unknown option", "invalid_option",
     "ratoi"),
    (lambda job: json.dumps({**job, "options": {"rule": "ratio", "ratio": 2}}),
     r"options.ratio: 2 is greater than the maximum of 1", "invalid_option", "ratio"),
    (lambda job: json.dumps({**job, "options": {"rule": "latency"}}), "rule=latency needs latencyTable",
     "invalid_option", "latencyTable"),
    (lambda job: json.dumps({**job, "options": {"finetune": {"clipGradNorm": 1e9}}}), "clipGradNorm",
     "invalid_option", "finetune.clipGradNorm"),
    (lambda job: json.dumps({**job, "options": {"inputShape": [1, 3, 16, 16]}}), "gives 3 channels", "invalid_model",
     None),
])
def test_bad_jobs_exit_2_with_one_line(tmp_path, cnn_path, mutate, match, code, field):
    job = json.loads(_write_job(tmp_path, cnn_path).read_text())
    path = tmp_path / "bad.json"
    path.write_text(mutate(job))
    code_, events, err = _run(path)
    assert code_ == 2 and err.count("\n") == 1 and err.startswith("tuckerize: error: "), err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "out" / "compressed.onnx").exists()
    error = events[-1]
    assert error["event"] == "error" and error["code"] == code and error.get("field") == field, error
    assert str(tmp_path) not in error["detail"] and "/nonexistent" not in error["detail"]
    assert [e for e in events if e["event"] == "error"] == [error]


def test_sigterm_stops_the_job_promptly(tmp_path, zoo_path):
    """A SIGTERM while the job runs ends the engine with 143 and leaves no partial artifacts."""
    job = _write_job(tmp_path, zoo_path("resnet18", 13, 64), options={"rule": "ratio", "ratio": 0.5})
    proc = _start(job)
    # The first progress line: the handler is installed and seconds of work (21 layers) lie ahead.
    json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_run_on_an_exported_mobilenet_v2(tmp_path, zoo_path, run_ort):
    path = zoo_path("mobilenet_v2", 13, 64)
    job = _write_job(tmp_path, path, threads=2, options={"rule": "budget", "targetMacs": 0.5, "roundTo": 8})
    code, events, err = _run(job)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["macs"]["ratio"] == pytest.approx(0.5, rel=0.02)
    assert all(r % 8 == 0 or r in layer["weightShape"] for layer in report["layers"] for r in layer["ranks"])
    depthwise = [layer for layer in report["layers"] if layer["reason"] and "depthwise" in layer["reason"]]
    assert len(depthwise) == 17 and all(layer["kind"] == "keep" for layer in depthwise)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (out,) = run_ort(tmp_path / "out" / "compressed.onnx", {"input": x})
    assert out.shape == (1, 1000) and np.isfinite(out).all()


@pytest.mark.parametrize("finetune", [None, {"steps": 3, "maxSamples": 128, "batchSize": 32}],
                         ids=["evaluate-only", "finetune"])
def test_dataset_jobs_report_accuracy(tmp_path, finetune):
    """The run pipeline hands dataset jobs to finetune.py and files its sections in the report."""
    model = tmp_path / "cnn28.onnx"
    onnx.save(tiny_cnn(np.random.default_rng(5), size=28), model)  # 1×28×28 in, 10 classes out: Fashion-MNIST
    options = {"rule": "ratio", "ratio": 0.5, **({"finetune": finetune} if finetune else {})}
    code, events, err = _run(_write_job(tmp_path, model, dataset="builtin:fashion-mnist", options=options))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    expected_stages = STAGE_ORDER[:3] + ["calibrate"] + (["finetune"] if finetune else []) + STAGE_ORDER[3:]
    assert list(report["timings"]) == expected_stages
    accuracy = report["accuracy"]
    assert accuracy["labels"] is True and accuracy["samples"] > 0
    assert 0 <= accuracy["original"]["top1"] <= 1 and 0 <= accuracy["compressed"]["agreement"] <= 1
    if finetune:
        assert report["finetune"]["steps"] == 3 and accuracy["finetuned"] is not None
    else:
        assert report["finetune"] is None and accuracy["finetuned"] is None
    assert events[-1]["summary"]["accuracy"] == accuracy

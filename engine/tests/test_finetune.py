"""Fine-tuning with distillation: loss goes down, agreement goes up, BN stats follow, write-back runs in
onnxruntime-node, and a SIGKILLed engine resumes from its checkpoint to exactly the uninterrupted weights."""
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
import torch
from onnx import TensorProto, helper, numpy_helper

from tuckerize.errors import EngineInputError
from tuckerize.finetune import (distillation_loss, evaluate_stage, parse_options, run_finetune_stage,
                                trainable_parameters)
from tuckerize.interpret import OnnxModule

ENGINE_DIR = Path(__file__).resolve().parents[1]
CLASSES = 10


def tiny_cnn(seed: int, noise: float = 0.0, base_seed: int = None, size: int = 8) -> onnx.ModelProto:
    """Sub/Div normalisation -> Conv+BN+Relu -> strided Conv+Relu -> GlobalAveragePool -> Gemm (10 classes).

    Weights come from `base_seed` (default `seed`); `noise` adds seeded Gaussian perturbation, so a
    student can start as a damaged copy of its teacher.
    """
    rng = np.random.default_rng(seed if base_seed is None else base_seed)
    weights = {
        "mean": np.array([[[[0.5]]]], np.float32), "std": np.array([[[[0.25]]]], np.float32),
        "w1": rng.normal(0, 0.6, (8, 1, 3, 3)).astype(np.float32),
        "bn_scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_bias": rng.normal(0, 0.1, 8).astype(np.float32),
        "bn_mean": rng.normal(0, 0.1, 8).astype(np.float32), "bn_var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (12, 8, 3, 3)).astype(np.float32), "b2": rng.normal(0, 0.1, 12).astype(np.float32),
        "fc_w": rng.normal(0, 0.6, (CLASSES, 12)).astype(np.float32), "fc_b": rng.normal(0, 0.1, CLASSES).astype(np.float32),
    }
    if noise:
        perturb = np.random.default_rng(seed + 1000)
        for key in ("w1", "w2", "fc_w"):
            weights[key] = (weights[key] + perturb.normal(0, noise, weights[key].shape)).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Conv", ["normed", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b1"], epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def teacher_labels(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return OnnxModule(model).eval()(torch.from_numpy(x)).argmax(1).numpy()


@pytest.fixture(scope="module")
def teacher():
    return tiny_cnn(seed=1)


@pytest.fixture(scope="module")
def student():
    return tiny_cnn(seed=2, base_seed=1, noise=0.35)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(0, 1, (480, 1, 8, 8)).astype(np.float32)


def write_npz(path: Path, x: np.ndarray, y=None) -> str:
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(path, **arrays)
    return str(path)


def job_for(tmp_path: Path, dataset: str, finetune: dict, seed: int = 0, work: str = "work") -> dict:
    return {"jobId": "test", "model": str(tmp_path / "model.onnx"), "dataset": dataset,
            "outputDir": str(tmp_path / "out"), "workDir": str(tmp_path / work), "threads": 1, "seed": seed,
            "options": {"finetune": finetune}}


def collect():
    events = []
    return events, events.append


def test_parse_options_defaults_and_refusals():
    options = parse_options(None)
    assert (options.epochs, options.steps, options.optimizer, options.lr, options.distill) == (1, None, "sgd", 0.01, True)
    assert parse_options({"optimizer": "adamw"}).lr == 3e-4
    assert parse_options({"steps": 7}).epochs is None
    assert parse_options(None).clip_grad_norm == 5.0 and parse_options({"clipGradNorm": 0}).clip_grad_norm == 0.0
    for bad, fragment in [({"lr": -1}, "lr"), ({"optimizer": "rmsprop"}, "optimizer"), ({"epochs": 0}, "epochs"),
                          ({"batchSize": 1}, "batchSize"), ({"alpha": 1.5}, "alpha"), ({"distill": "yes"}, "distill"),
                          ({"temperature": 0}, "temperature"), ({"epoch": 1}, "unknown"),
                          ({"clipGradNorm": -1}, "clipGradNorm")]:
        with pytest.raises(EngineInputError, match=fragment):
            parse_options(bad)


def test_distillation_loss_matches_hinton_formula():
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(5, 7), torch.randn(5, 7)
    temperature = 3.0
    p = torch.softmax(teacher_logits / temperature, 1)
    q = torch.softmax(student_logits / temperature, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean() * temperature ** 2
    assert torch.allclose(distillation_loss(student_logits, teacher_logits, temperature), expected, atol=1e-6)
    assert float(distillation_loss(teacher_logits, teacher_logits, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_trainable_parameters_skip_the_input_normalisation(student):
    names = {name for name, _ in trainable_parameters(OnnxModule(student), student)}
    assert names == {"w1", "bn_scale", "bn_bias", "w2", "b2", "fc_w", "fc_b"}


def test_a_few_steps_with_labels_lower_the_loss(tmp_path, teacher, student, images):
    dataset = write_npz(tmp_path / "labelled.npz", images, teacher_labels(teacher, images))
    job = job_for(tmp_path, dataset, {"epochs": 3, "batchSize": 32, "lr": 0.05})
    events, emit = collect()
    trained, sections = run_finetune_stage(job, teacher, student, emit)
    history = sections["finetune"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    accuracy = sections["accuracy"]
    assert accuracy["labels"] is True and accuracy["samples"] == 48
    assert accuracy["original"]["top1"] == 1.0  # the labels are the teacher's own predictions
    assert accuracy["finetuned"]["top1"] > accuracy["compressed"]["top1"]
    assert "top5" in accuracy["finetuned"]
    report = sections["finetune"]
    assert report["loss"]["crossEntropy"] and report["loss"]["distillation"]
    assert report["steps"] == 3 * (432 // 32) and report["imagesPerSecond"] > 0
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == report["steps"]
    assert all(e["stage"] == "finetune" for e in progress)
    assert {"loss", "imagesPerSecond", "etaSeconds"} <= set(progress[-1])


def test_distillation_without_labels_improves_agreement(tmp_path, teacher, student, images):
    dataset = write_npz(tmp_path / "unlabelled.npz", images)
    job = job_for(tmp_path, dataset, {"epochs": 4, "batchSize": 32, "lr": 0.05})
    trained, sections = run_finetune_stage(job, teacher, student, lambda event: None)
    accuracy = sections["accuracy"]
    assert accuracy["labels"] is False and "top1" not in accuracy["compressed"]
    before, after = accuracy["compressed"], accuracy["finetuned"]
    assert before["agreement"] < 0.9
    assert after["agreement"] > before["agreement"]
    assert after["meanKL"] < before["meanKL"]
    assert sections["finetune"]["loss"] == {"distillation": True, "crossEntropy": False, "alpha": 1.0,
                                            "temperature": 4.0, "featureWeight": 0.0}

    initial = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    final = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
    assert not np.array_equal(initial["bn_mean"], final["bn_mean"])  # BN ran in train mode
    assert not np.array_equal(initial["w2"], final["w2"])
    np.testing.assert_array_equal(initial["mean"], final["mean"])  # normalisation constants stay frozen
    np.testing.assert_array_equal(initial["std"], final["std"])


def test_write_back_runs_in_onnxruntime_node(tmp_path, teacher, student, images, run_ort):
    dataset = write_npz(tmp_path / "labelled.npz", images, teacher_labels(teacher, images))
    job = job_for(tmp_path, dataset, {"steps": 20, "batchSize": 32, "optimizer": "adamw"})
    trained, _ = run_finetune_stage(job, teacher, student, lambda event: None)
    path = tmp_path / "trained.onnx"
    onnx.save(trained, str(path))
    batch = images[:16]
    (ort_logits,) = run_ort(path, {"input": batch})
    with torch.no_grad():
        module_logits = OnnxModule(trained).eval()(torch.from_numpy(batch)).numpy()
        untrained_logits = OnnxModule(student).eval()(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(ort_logits, module_logits, rtol=1e-4, atol=1e-5)
    assert np.abs(ort_logits - untrained_logits).max() > 1e-3


def test_evaluate_stage_reports_labels_and_agreement(tmp_path, teacher, student, images):
    dataset = write_npz(tmp_path / "labelled.npz", images, teacher_labels(teacher, images))
    events, emit = collect()
    accuracy = evaluate_stage(job_for(tmp_path, dataset, None), teacher, student, emit)
    assert accuracy["original"]["top1"] == 1.0 and accuracy["finetuned"] is None
    assert 0.0 <= accuracy["compressed"]["top1"] == accuracy["compressed"]["agreement"] < 1.0
    assert accuracy["compressed"]["meanKL"] > 0 and accuracy["samples"] == 48
    assert [e["stage"] for e in events] == ["evaluate"] * 3
    assert evaluate_stage(job_for(tmp_path, None, None), teacher, student, emit) is None


def test_builtin_fashion_mnist_fine_tunes_a_28x28_model(tmp_path):
    teacher = tiny_cnn(seed=5, size=28)
    student = tiny_cnn(seed=6, base_seed=5, noise=0.3, size=28)
    job = job_for(tmp_path, "builtin:fashion-mnist",
                  {"steps": 4, "batchSize": 32, "maxSamples": 256, "evalSamples": 100})
    _, sections = run_finetune_stage(job, teacher, student, lambda event: None)
    assert sections["accuracy"]["samples"] == 100 and sections["accuracy"]["labels"] is True
    assert sections["finetune"]["trainSamples"] == 256 and sections["finetune"]["steps"] == 4
    assert "test split" in sections["accuracy"]["split"]


def test_refusals_name_the_problem(tmp_path, teacher, student, images):
    unlabelled = write_npz(tmp_path / "unlabelled.npz", images)
    with pytest.raises(EngineInputError, match="needs labels"):
        run_finetune_stage(job_for(tmp_path, unlabelled, {"distill": False}), teacher, student, lambda e: None)
    with pytest.raises(EngineInputError, match="needs a dataset"):
        run_finetune_stage(job_for(tmp_path, None, {}), teacher, student, lambda e: None)
    out_of_range = write_npz(tmp_path / "bad_labels.npz", images, np.full(len(images), CLASSES, np.int64))
    with pytest.raises(EngineInputError, match="out of range"):
        run_finetune_stage(job_for(tmp_path, out_of_range, {}), teacher, student, lambda e: None)
    wrong_shape = write_npz(tmp_path / "wrong_shape.npz", images[:, :, :6, :6])
    with pytest.raises(EngineInputError, match="axis 2"):
        run_finetune_stage(job_for(tmp_path, wrong_shape, {}), teacher, student, lambda e: None)


def test_checkpoint_of_other_options_is_ignored(tmp_path, teacher, student, images):
    dataset = write_npz(tmp_path / "labelled.npz", images, teacher_labels(teacher, images))
    run_finetune_stage(job_for(tmp_path, dataset, {"steps": 3, "batchSize": 32}), teacher, student, lambda e: None)
    events, emit = collect()
    run_finetune_stage(job_for(tmp_path, dataset, {"steps": 3, "batchSize": 32, "lr": 0.02}), teacher, student, emit)
    messages = [e["message"] for e in events if e["event"] == "log"]
    assert any("ignoring checkpoint" in m for m in messages)
    assert not any("resumed" in m for m in messages)


def _engine(module: str, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ENGINE_DIR), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("entry", ["finetune-stage", "run-pipeline"])
def test_sigkill_after_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, teacher, student, images, entry):
    """`python3 -m tuckerize.finetune` (the stage alone) and `python3 -m tuckerize run` (the whole engine)."""
    dataset = write_npz(tmp_path / "labelled.npz", images, teacher_labels(teacher, images))
    onnx.save(teacher, str(tmp_path / "teacher.onnx"))
    onnx.save(student, str(tmp_path / "student.onnx"))
    finetune = {"epochs": 12, "batchSize": 16, "lr": 0.05, "checkpointEvery": 5}  # 12 x 27 = 324 steps

    def run_job(name: str, kill_after_checkpoint: bool):
        job = job_for(tmp_path, dataset, finetune, seed=11, work=f"work-{name}")
        job["model"], job["outputDir"] = str(tmp_path / "teacher.onnx"), str(tmp_path / f"out-{name}")
        os.makedirs(job["outputDir"])
        job_path = tmp_path / f"{name}.json"
        job_path.write_text(json.dumps(job))
        if entry == "finetune-stage":
            out = tmp_path / f"{name}.onnx"
            module, args = "tuckerize.finetune", [str(job_path), job["model"], str(tmp_path / "student.onnx"), str(out)]
        else:
            out = Path(job["outputDir"]) / "compressed.onnx"
            module, args = "tuckerize", ["run", str(job_path)]
        if kill_after_checkpoint:
            process = _engine(module, args)
            for line in process.stdout:
                if "checkpoint saved" in line:
                    process.send_signal(signal.SIGKILL)
                    break
            process.wait(timeout=120)
            assert process.returncode == -signal.SIGKILL
            assert not out.exists()
        process = _engine(module, args)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        return out, [json.loads(line) for line in stdout.splitlines()]

    interrupted, events = run_job("killed", kill_after_checkpoint=True)
    resumed = [e["message"] for e in events if e["event"] == "log" and "resumed from step" in e["message"]]
    assert len(resumed) == 1
    resumed_step = int(resumed[0].split("step ")[1].split(" ")[0])
    assert 0 < resumed_step < 324
    first_step = next(e for e in events if e["event"] == "progress" and e["stage"] == "finetune" and e["done"] > 0)
    assert first_step["done"] > resumed_step

    uninterrupted, _ = run_job("straight", kill_after_checkpoint=False)
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(interrupted)).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(uninterrupted)).graph.initializer}
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    if entry == "finetune-stage":
        initial = numpy_helper.to_array(next(t for t in student.graph.initializer if t.name == "w2"))
        assert not np.array_equal(a["w2"], initial)

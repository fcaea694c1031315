"""Reference models: the shipped ONNX files match their training records; the training script runs and resumes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tuckerize.data import load_fashion_mnist
from tuckerize.interpret import OnnxModule
from tuckerize.reference import ARCHS, augment, build, count_params_macs, lr_at, train

MODELS = Path(__file__).resolve().parents[2] / "assets" / "models"
ENGINE_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_images():
    test = load_fashion_mnist("test")
    return test.x[:500].numpy(), test.y[:500].numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_model_matches_its_record(arch, test_images, run_ort):
    record = json.loads((MODELS / f"{arch}.json").read_text())
    for key in ("command", "seed", "epochs", "device", "torch", "testAccuracy", "params", "macs", "wallSeconds"):
        assert key in record, key
    assert (MODELS / f"{arch}.md").read_text().startswith(f"# {arch}")
    model = onnx.load(str(MODELS / f"{arch}.onnx"))
    onnx.checker.check_model(model)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == record["onnx"]["opset"] == 13
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [n.op_type for n in model.graph.node[:2]] == ["Sub", "Div"]  # normalisation inside the graph

    x, y = test_images
    (logits,) = run_ort(MODELS / f"{arch}.onnx", {"input": x})
    assert logits.shape == (500, 10)
    accuracy = float((logits.argmax(1) == y).mean())
    assert abs(accuracy - record["testAccuracy"]) <= 0.02, (accuracy, record["testAccuracy"])
    if arch == "fmnist-vgg":
        assert record["testAccuracy"] >= 0.93 and 1_000_000 <= record["params"] <= 3_000_000
    else:
        assert record["testAccuracy"] >= 0.92

    with torch.no_grad():
        module_logits = OnnxModule(model).eval()(torch.from_numpy(x[:32])).numpy()
    np.testing.assert_allclose(module_logits, logits[:32], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_count_params_and_macs(arch):
    model = build(arch)
    params, macs = count_params_macs(model)
    assert params == sum(p.numel() for p in model.parameters())
    if arch == "fmnist-vgg":
        # convs at 28, 14, 7 (two each) + FC 1728x512 + 512x10
        convs = 28 * 28 * 9 * (1 * 48 + 48 * 48) + 14 * 14 * 9 * (48 * 96 + 96 * 96) + 7 * 7 * 9 * (96 * 192 + 192 * 192)
        assert macs == convs + 1728 * 512 + 512 * 10
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_augment_crops_and_flips_within_the_padding():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28) + 1
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):
        # every output row is a shifted (maybe flipped) window of one input row, or zero padding
        nonzero = out[i, 0][out[i, 0] > 0]
        assert set(nonzero.tolist()) <= set(x[i, 0].flatten().tolist())
        assert nonzero.numel() >= 24 * 24


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_at(0, 100, 10, 0.1) == pytest.approx(0.01)
    assert lr_at(9, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 0.1) == pytest.approx(0.05)
    assert lr_at(100, 100, 10, 0.1) == pytest.approx(0.0)


def test_training_cli_exports_a_runnable_model_and_resumes(tmp_path, run_ort):
    command = [sys.executable, "-m", "tuckerize.reference", "train", "--arch", "fmnist-resnet", "--epochs", "2",
               "--seed", "3", "--out", str(tmp_path), "--device", "cpu", "--max-samples", "256",
               "--batch-size", "64", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ENGINE_DIR), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "fmnist-resnet.json").read_text())
    assert record["epochs"] == 2 and len(record["history"]) == 2 and record["trainSamples"] == 256
    assert record["device"].startswith("cpu") and record["onnx"]["opset"] == 13
    x = load_fashion_mnist("test").x[:4].numpy()
    (logits,) = run_ort(tmp_path / "fmnist-resnet.onnx", {"input": x})
    assert logits.shape == (4, 10) and np.isfinite(logits).all()

    # A second call finds the finished checkpoint, trains nothing more and exports the same weights.
    messages = []
    again = train("fmnist-resnet", 2, 3, tmp_path, "cpu", max_samples=256, batch_size=64, log=messages.append)
    assert any("resumed fmnist-resnet" in m and "after epoch 2" in m for m in messages)
    assert again["history"] == record["history"] and again["testAccuracy"] == record["testAccuracy"]

"""The engine's device: named in every report; the CUDA paths (fine-tuning on the GPU, its checkpoint with
the CUDA RNG state, resuming from it) run where a GPU is present and are skipped with the reason elsewhere."""
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
from tuckerize.checkpoints import load_checkpoint
from tuckerize.device import describe, device_name

ENGINE_DIR = Path(__file__).resolve().parents[1]
NO_GPU = "no CUDA device visible to torch: the CUDA paths are covered on a GPU worker (make test there)"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)


def _run_job(tmp_path: Path, options: dict, env: dict | None = None) -> tuple[int, str]:
    model = tmp_path / "cnn28.onnx"
    if not model.exists():
        onnx.save(tiny_cnn(np.random.default_rng(5), size=28), model)
    job = {"jobId": "job-gpu", "model": str(model), "dataset": "builtin:fashion-mnist", "outputDir": str(tmp_path / "out"),
           "workDir": str(tmp_path / "work"), "threads": 1, "seed": 3, "options": options}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "tuckerize", "run", str(tmp_path / "job.json")], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ENGINE_DIR), **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible; the GPU tests below cover it")
def test_cpu_worker_reports_cpu(tmp_path):
    assert device_name() == "cpu"
    assert describe() == {"name": "cpu", "type": "cpu", "torch": torch.__version__}
    code, output = _run_job(tmp_path, {"rule": "ratio", "ratio": 0.5})
    assert code == 0, output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["device"]["name"] == "cpu"


def test_hidden_gpus_mean_cpu(tmp_path):
    """CUDA_VISIBLE_DEVICES is how a worker is given its GPU; an empty value gives it none."""
    code, output = _run_job(tmp_path, {"rule": "ratio", "ratio": 0.5}, env={"CUDA_VISIBLE_DEVICES": ""})
    assert code == 0, output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["device"]["type"] == "cpu"


@needs_gpu
def test_gpu_is_named_with_its_memory():
    info = describe()
    assert info["type"] == "cuda" and info["name"] == torch.cuda.get_device_name(0) == device_name()
    assert info["memoryBytes"] > 0 and info["cuda"]


@needs_gpu
def test_finetune_on_gpu_checkpoints_and_resumes(tmp_path):
    """Fine-tuning runs on the GPU, its checkpoint holds the CUDA RNG state, and a second run resumes from it."""
    options = {"rule": "ratio", "ratio": 0.5, "finetune": {"steps": 40, "checkpointEvery": 10, "maxSamples": 512, "batchSize": 32}}
    code, output = _run_job(tmp_path, options)
    assert code == 0, output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["device"]["type"] == "cuda"
    assert report["finetune"]["device"] == torch.cuda.get_device_name(0)
    state = load_checkpoint(tmp_path / "work" / "finetune.ckpt", map_location="cpu")
    assert "cuda" in state["rng"], "the checkpoint holds the CUDA RNG state"
    first = report["finetune"]
    # The same job again on this host: plan, rewrite and fine-tuning resume from the checkpoints.
    code, output = _run_job(tmp_path, options)
    assert code == 0, output
    again = json.loads((tmp_path / "out" / "report.json").read_text())["finetune"]
    assert again["steps"] == first["steps"]
    assert "fine-tuning resumed from step" in output

"""Shared pytest fixtures for the engine tests.

Helpers every test file may use, as fixtures or plain imports (this directory is on sys.path):
  zoo_path(name, opset, input_size=224, dynamic_batch=False) -> Path   cached torchvision/VGG-S exports
  run_ort(model_path, feeds) -> list[np.ndarray]                        onnxruntime-node, the judge
    (the fixture reuses one node process per session; ort_runner.run_ort spawns one per call)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
ENGINE_DIR = TESTS_DIR.parent
# `make test` sets PYTHONPATH=engine; this keeps a bare `pytest engine/tests` working too.
for directory in (str(ENGINE_DIR), str(TESTS_DIR)):
    if directory not in sys.path:
        sys.path.insert(0, directory)

import torch  # noqa: E402

from ort_runner import OrtServer  # noqa: E402
from zoo_cache import zoo_path as _zoo_path  # noqa: E402

# Two cores are shared by every test process on CI machines; more threads only oversubscribe them.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def zoo_path():
    """zoo_path(name, opset, input_size=224, dynamic_batch=False) -> Path of a cached zoo export."""
    return _zoo_path


@pytest.fixture(scope="session")
def run_ort():
    """run_ort(model_path, feeds: {input name: np.ndarray}) -> outputs in graph order (onnxruntime-node).

    One node process serves the whole session; `from ort_runner import run_ort` is the one-shot form.
    """
    with OrtServer() as server:
        yield server.run

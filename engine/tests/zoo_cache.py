"""Cached zoo exports for the tests: exporting VGG-16 takes tens of seconds and ~550 MB, so once per machine.

Files live under <repo>/.cache/zoo/torch-<version>/ (gitignored). Concurrent pytest processes serialise
on a lock file per model, and each export lands in a temp file that is renamed into place, so no reader
ever sees a half-written model.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import torch

from tuckerize.zoo import export_zoo_model

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "zoo" / f"torch-{torch.__version__}"


def zoo_path(name: str, opset: int, input_size: int = 224, dynamic_batch: bool = False) -> Path:
    """Path of the zoo model `name` exported at `opset` for batch-1 input 3×input_size×input_size."""
    suffix = "-dynbatch" if dynamic_batch else ""
    path = CACHE_DIR / f"{name}-opset{opset}-{input_size}{suffix}.onnx"
    if path.is_file():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():  # another process finished it while we waited
                return path
            fd, tmp_name = tempfile.mkstemp(dir=CACHE_DIR, prefix=f".{path.stem}.", suffix=".tmp")
            os.close(fd)
            try:
                export_zoo_model(name, tmp_name, opset=opset, input_size=input_size,
                                 dynamic_batch=dynamic_batch)
                os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; other users' processes read the cache
                os.replace(tmp_name, path)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path

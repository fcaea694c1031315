"""Run an ONNX model with onnxruntime-node, the tests' judge (the service verifies artifacts with it too).

`run_ort(model_path, feeds)` spawns `node engine/tests/ort_run.mjs` and trades tensors through raw files
in a temp dir plus a small JSON manifest, so large activations never go through JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[1]
ORT_SCRIPT = TESTS_DIR / "ort_run.mjs"

# numpy dtype -> onnxruntime-node tensor type; bool travels as one byte per element.
_TO_ORT = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.bool_): "bool",
    np.dtype(np.float16): "float16",
}
_FROM_ORT = {name: dtype for dtype, name in _TO_ORT.items()}


class OrtRunError(RuntimeError):
    """onnxruntime-node refused the model or the feeds; the message carries node's stderr."""


def run_ort(
    model_path: str | os.PathLike,
    feeds: dict[str, np.ndarray],
    threads: int = 1,
    optimization: str = "all",
    timeout: float = 600.0,
) -> list[np.ndarray]:
    """Outputs of `model_path` for `feeds` ({input name: array}), in the graph's output order."""
    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise FileNotFoundError(f"run_ort: no model file at {model_path}")
    with tempfile.TemporaryDirectory(prefix="ort_run_") as tmp:
        tmp_dir = Path(tmp)
        inputs = []
        for index, (name, value) in enumerate(feeds.items()):
            array = np.asarray(value)
            if array.dtype not in _TO_ORT:
                raise TypeError(f"run_ort: input {name!r} has dtype {array.dtype}; "
                                f"use one of {sorted(str(d) for d in _TO_ORT)}")
            file = tmp_dir / f"in{index}.bin"
            # '<' pins little-endian, which is what the JS typed arrays read on every supported host.
            np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tofile(file)
            inputs.append({"name": name, "dtype": _TO_ORT[array.dtype], "shape": list(array.shape),
                           "file": str(file)})
        manifest = tmp_dir / "manifest.json"
        manifest.write_text(json.dumps({"model": str(model_path), "threads": threads,
                                        "optimization": optimization, "inputs": inputs,
                                        "outputDir": str(tmp_dir)}))
        try:
            proc = subprocess.run(["node", str(ORT_SCRIPT), str(manifest)], cwd=REPO_ROOT,
                                  capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise OrtRunError("run_ort: `node` is not on PATH; install Node 20 (see README)") from exc
        if proc.returncode != 0:
            raise OrtRunError(f"onnxruntime-node failed on {model_path.name} (exit {proc.returncode}): "
                              f"{proc.stderr.strip() or proc.stdout.strip()}")
        outputs = []
        for spec in json.loads((tmp_dir / "outputs.json").read_text()):
            dtype = _FROM_ORT.get(spec["dtype"])
            if dtype is None:
                raise OrtRunError(f"run_ort: output {spec['name']!r} has unsupported type {spec['dtype']}")
            data = np.fromfile(spec["file"], dtype=dtype.newbyteorder("<"))
            outputs.append(data.astype(dtype, copy=False).reshape(spec["shape"]))
        return outputs

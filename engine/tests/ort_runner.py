"""Run ONNX models with onnxruntime-node, the tests' judge (the service verifies artifacts with it too).

`run_ort(model_path, feeds)` spawns `node engine/tests/ort_run.mjs` once per call. `OrtServer` keeps one
node process for many calls (node + onnxruntime start-up is ~0.3 s, which hundreds of small op graphs
would pay each); the `run_ort` fixture in conftest.py uses one per test session. Tensors travel
through raw files in a temp dir plus a small JSON manifest, so large activations never go through JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Optional

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
    """onnxruntime-node refused the model or the feeds; the message carries its error text."""


def _write_manifest(tmp_dir: Path, model_path: Path, feeds: dict[str, np.ndarray], threads: int,
                    optimization: str) -> Path:
    inputs = []
    for index, (name, value) in enumerate(feeds.items()):
        array = np.asarray(value)
        if array.dtype not in _TO_ORT:
            raise TypeError(f"run_ort: input {name!r} has dtype {array.dtype}; "
                            f"use one of {sorted(str(d) for d in _TO_ORT)}")
        file = tmp_dir / f"in{index}.bin"
        # '<' pins little-endian, which is what the JS typed arrays read on every supported host.
        np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tofile(file)
        inputs.append({"name": name, "dtype": _TO_ORT[array.dtype], "shape": list(array.shape), "file": str(file)})
    manifest = tmp_dir / "manifest.json"
    manifest.write_text(json.dumps({"model": str(model_path), "threads": threads, "optimization": optimization,
                                    "inputs": inputs, "outputDir": str(tmp_dir)}))
    return manifest


def _read_outputs(tmp_dir: Path) -> list[np.ndarray]:
    outputs = []
    for spec in json.loads((tmp_dir / "outputs.json").read_text()):
        dtype = _FROM_ORT.get(spec["dtype"])
        if dtype is None:
            raise OrtRunError(f"run_ort: output {spec['name']!r} has unsupported type {spec['dtype']}")
        data = np.fromfile(spec["file"], dtype=dtype.newbyteorder("<"))
        outputs.append(data.astype(dtype, copy=False).reshape(spec["shape"]))
    return outputs


def _model_file(model_path: str | os.PathLike) -> Path:
    path = Path(model_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"run_ort: no model file at {path}")
    return path


def _node_command(*args: str) -> list[str]:
    return ["node", str(ORT_SCRIPT), *args]


def run_ort(
    model_path: str | os.PathLike,
    feeds: dict[str, np.ndarray],
    threads: int = 1,
    optimization: str = "all",
    timeout: float = 600.0,
) -> list[np.ndarray]:
    """Outputs of `model_path` for `feeds` ({input name: array}), in the graph's output order."""
    path = _model_file(model_path)
    with tempfile.TemporaryDirectory(prefix="ort_run_") as tmp:
        manifest = _write_manifest(Path(tmp), path, feeds, threads, optimization)
        try:
            proc = subprocess.run(_node_command(str(manifest)), cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=timeout)
        except FileNotFoundError as exc:
            raise OrtRunError("run_ort: `node` is not on PATH; install Node 20 (see README)") from exc
        if proc.returncode != 0:
            raise OrtRunError(f"onnxruntime-node failed on {path.name} (exit {proc.returncode}): "
                              f"{proc.stderr.strip() or proc.stdout.strip()}")
        return _read_outputs(Path(tmp))


class OrtServer:
    """One long-lived `node ort_run.mjs --serve` process; `run` has run_ort's signature and results.

    A model that crashes node does not poison later calls: the next call starts a fresh process.
    """

    def __init__(self, threads: int = 1, optimization: str = "all"):
        self.threads = threads
        self.optimization = optimization
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: Optional[IO[bytes]] = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._stderr = tempfile.TemporaryFile()
            try:
                self._proc = subprocess.Popen(_node_command("--serve"), cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
            except FileNotFoundError as exc:
                raise OrtRunError("run_ort: `node` is not on PATH; install Node 20 (see README)") from exc
        return self._proc

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()[-4000:]

    def run(self, model_path: str | os.PathLike, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        path = _model_file(model_path)
        with tempfile.TemporaryDirectory(prefix="ort_run_") as tmp:
            manifest = _write_manifest(Path(tmp), path, feeds, self.threads, self.optimization)
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{manifest}\n")
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                if not line:
                    code = proc.wait()
                    raise OrtRunError(f"onnxruntime-node exited (code {code}) while running {path.name}: "
                                      f"{self._stderr_tail()}")
                if line.startswith("ORT_RUN "):
                    break  # anything else on stdout is onnxruntime's own logging
            reply = json.loads(line[len("ORT_RUN "):])
            if not reply["ok"]:
                raise OrtRunError(f"onnxruntime-node failed on {path.name}: {reply['error']}")
            return _read_outputs(Path(tmp))

    __call__ = run

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "OrtServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

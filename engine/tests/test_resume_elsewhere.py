"""A job may resume on another worker, whose WORK_DIR (and so the staged dataset's path) differs: the
fine-tuning checkpoint is keyed by the dataset's bytes, not its path."""
from __future__ import annotations

import numpy as np

from onnx_builders import tiny_cnn
from tuckerize.finetune import _fingerprint, parse_options


def test_checkpoint_key_follows_dataset_bytes_not_path(tmp_path):
    model = tiny_cnn(np.random.default_rng(1), size=16)
    options = parse_options({"steps": 5})
    here, there, other = tmp_path / "a" / "dataset.npz", tmp_path / "b" / "dataset.npz", tmp_path / "c" / "dataset.npz"
    for path, content in ((here, b"same bytes"), (there, b"same bytes"), (other, b"other bytes")):
        path.parent.mkdir()
        path.write_bytes(content)
    key = lambda dataset: _fingerprint({"dataset": str(dataset), "seed": 0}, model, options)  # noqa: E731
    assert key(here) == key(there)
    assert key(here) != key(other)
    assert key("builtin:fashion-mnist") != key(here)

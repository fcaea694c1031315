"""Datasets: built-in Fashion-MNIST, .npz (float/uint8, labelled or not, pickles refused), .zip image folders."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tuckerize.data import load_dataset, read_idx, split_indices
from tuckerize.errors import EngineInputError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


class _Payload:
    """Pickling this records a call that creates `marker`; a safe loader must never make that call."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_builtin_fashion_mnist_test_split():
    dataset = load_dataset("builtin:fashion-mnist", [None, 1, 28, 28], split="test")
    assert dataset.x.shape == (10000, 1, 28, 28) and dataset.x.dtype == torch.float32
    assert dataset.y.shape == (10000,) and dataset.y.dtype == torch.int64
    assert float(dataset.x.min()) == 0.0 and float(dataset.x.max()) == 1.0
    assert sorted(torch.unique(dataset.y).tolist()) == list(range(10))
    assert dataset.info["classes"] == 10 and dataset.info["labelled"] is True
    raw = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal((dataset.x[5, 0] * 255).round().numpy().astype(np.uint8), raw[5])


def test_builtin_refuses_other_shapes_and_names():
    with pytest.raises(EngineInputError, match="axis 1"):
        load_dataset("builtin:fashion-mnist", [1, 3, 28, 28], split="test")
    with pytest.raises(EngineInputError, match="unknown built-in"):
        load_dataset("builtin:cifar10")
    with pytest.raises(EngineInputError, match="split"):
        load_dataset("builtin:fashion-mnist", split="validation")


def test_npz_float32_labelled(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 3, 5, 4)).astype(np.float32)
    y = np.arange(12) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.int32))
    dataset = load_dataset(str(tmp_path / "d.npz"), [None, 3, 5, 4])
    assert torch.equal(dataset.x, torch.from_numpy(x))
    assert dataset.y.dtype == torch.int64 and dataset.y.tolist() == y.tolist()
    assert dataset.info["classes"] == 4 and dataset.info["labelled"] and dataset.info["count"] == 12


def test_npz_uint8_unlabelled_is_scaled(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    np.savez_compressed(tmp_path / "u.npz", x=x)
    dataset = load_dataset(str(tmp_path / "u.npz"), ["N", 1, 4, 4])
    assert dataset.y is None and dataset.info["labelled"] is False and dataset.info["classes"] is None
    np.testing.assert_array_equal(dataset.x.numpy(), x.astype(np.float32) / 255.0)
    assert "x/255" in dataset.info["preprocessing"]


def test_npz_mean_std_normalisation(tmp_path):
    x = np.full((2, 2, 1, 1), 0.5, np.float32)
    np.savez(tmp_path / "m.npz", x=x)
    dataset = load_dataset(str(tmp_path / "m.npz"), mean=[0.5, 0.25], std=[1.0, 0.5])
    assert dataset.x[:, 0].flatten().tolist() == [0.0, 0.0]
    assert dataset.x[:, 1].flatten().tolist() == [0.5, 0.5]


def test_npz_object_array_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    np.savez(tmp_path / "evil.npz", x=np.zeros((1, 1, 2, 2), np.float32), y=payload)
    with pytest.raises(EngineInputError, match="object"):
        load_dataset(str(tmp_path / "evil.npz"))
    assert not marker.exists()
    np.savez(tmp_path / "evil_x.npz", x=payload)
    with pytest.raises(EngineInputError, match="object"):
        load_dataset(str(tmp_path / "evil_x.npz"))
    assert not marker.exists()
    # The fixture is live: numpy with pickles allowed does run the payload.
    np.load(tmp_path / "evil.npz", allow_pickle=True)["y"]
    assert marker.exists()


@pytest.mark.parametrize("arrays, fragment", [
    ({"images": np.zeros((1, 1, 2, 2), np.float32)}, "no array 'x'"),
    ({"x": np.zeros((3, 2, 2), np.float32)}, "4-D"),
    ({"x": np.zeros((2, 1, 2, 2), np.int16)}, "dtype int16"),
    ({"x": np.zeros((2, 1, 2, 2), np.float32), "y": np.zeros(3, np.int64)}, "one label per sample"),
    ({"x": np.zeros((2, 1, 2, 2), np.float32), "y": np.array([0.5, 1.0])}, "integers"),
    ({"x": np.zeros((2, 1, 2, 2), np.float32), "y": np.array([0, -1])}, "negative"),
    ({"x": np.full((1, 1, 2, 2), np.nan, np.float32)}, "NaN"),
])
def test_npz_refusals(tmp_path, arrays, fragment):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EngineInputError, match=fragment):
        load_dataset(str(tmp_path / "bad.npz"))


def test_npz_shape_must_match_model_input(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(EngineInputError, match=r"axis 3 is 8, not 7"):
        load_dataset(str(tmp_path / "s.npz"), [None, 1, 8, 7])


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(EngineInputError, match=".npz"):
        load_dataset(str(tmp_path / "d.csv"))
    with pytest.raises(EngineInputError, match="does not exist"):
        load_dataset(str(tmp_path / "nothing.npz"))


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def test_zip_class_folders_grayscale_with_resize_and_center_crop(tmp_path):
    half = np.zeros((8, 16), np.uint8)
    half[:, 8:] = 255  # 16 wide x 8 high: left half black, right half white
    rng = np.random.default_rng(2)
    members = {
        "data/shirt/a.png": _png(half),
        "data/shirt/b.jpg": _png(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), "JPEG"),
        "data/bag/c.png": _png(rng.integers(0, 256, (20, 30), dtype=np.uint8)),
        "data/.DS_Store/x.png": b"ignored",
        "__MACOSX/data/bag/._c.png": b"ignored",
    }
    dataset = load_dataset(_zip(tmp_path / "images.zip", members), [None, 1, 8, 8])
    assert dataset.x.shape == (3, 1, 8, 8)
    assert dataset.info["classNames"] == ["bag", "shirt"] and dataset.info["classes"] == 2
    assert dataset.y.tolist() == [0, 1, 1]  # data/bag/c, data/shirt/a, data/shirt/b
    # Shorter side 8 stays 8, so the 16x8 image is only center-cropped to columns 4..11.
    expected = np.zeros((8, 8), np.float32)
    expected[:, 4:] = 1.0
    np.testing.assert_array_equal(dataset.x[1, 0].numpy(), expected)
    assert float(dataset.x.min()) >= 0.0 and float(dataset.x.max()) <= 1.0
    assert "center crop 8x8" in dataset.info["preprocessing"] and "grayscale" in dataset.info["preprocessing"]


def test_zip_rgb_numeric_classes_and_unlabelled(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    labelled = load_dataset(_zip(tmp_path / "n.zip", {"7/a.png": _png(image), "2/b.png": _png(image)}),
                            [1, 3, 6, 6])
    assert labelled.y.tolist() == [2, 7] and labelled.info["classes"] == 8
    np.testing.assert_array_equal(labelled.x[0].permute(1, 2, 0).numpy(), image.astype(np.float32) / 255.0)
    flat = load_dataset(_zip(tmp_path / "f.zip", {"a.png": _png(image), "b.png": _png(image)}), [1, 3, 6, 6])
    assert flat.y is None and flat.info["labelled"] is False and len(flat) == 2


@pytest.mark.parametrize("members, fragment", [
    ({"../evil.png": b"x"}, "unsafe path"),
    ({"/abs/a.png": b"x"}, "unsafe path"),
    ({"cat/notes.txt": b"x"}, "not a PNG/JPEG"),
    ({"cat/a.png": b"not an image"}, "could not be decoded"),
    ({"cat/a.png": None, "b.png": None}, "one layout"),
    ({"a/b/c/d.png": None}, "nested too deep"),
    ({"big.png": bytes(4_000_000)}, "zip bomb"),
    ({}, "no PNG/JPEG"),
])
def test_zip_refusals(tmp_path, members, fragment):
    image = _png(np.zeros((4, 4), np.uint8))
    members = {name: image if data is None else data for name, data in members.items()}
    with pytest.raises(EngineInputError, match=fragment):
        load_dataset(_zip(tmp_path / "bad.zip", members), [None, 1, 4, 4])


def test_zip_needs_static_model_input(tmp_path):
    path = _zip(tmp_path / "z.zip", {"a.png": _png(np.zeros((4, 4), np.uint8))})
    with pytest.raises(EngineInputError, match="dynamic"):
        load_dataset(path, [None, 1, "H", "W"])
    with pytest.raises(EngineInputError, match="4 channels"):
        load_dataset(path, [None, 4, 4, 4])


def test_split_indices_is_deterministic_and_disjoint():
    train, heldout = split_indices(100, 0.2, seed=5)
    again_train, again_heldout = split_indices(100, 0.2, seed=5)
    assert torch.equal(train, again_train) and torch.equal(heldout, again_heldout)
    assert len(heldout) == 20 and len(train) == 80
    assert sorted(train.tolist() + heldout.tolist()) == list(range(100))
    assert not torch.equal(heldout, split_indices(100, 0.2, seed=6)[1])
    assert len(split_indices(100, 0.5, seed=0, max_heldout=7)[1]) == 7
    with pytest.raises(EngineInputError):
        split_indices(1, 0.5)


def test_cli_describes_or_refuses(tmp_path):
    import json
    import subprocess
    import sys

    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    np.savez(tmp_path / "ok.npz", x=np.zeros((5, 1, 3, 3), np.uint8), y=np.array([0, 2, 2, 1, 2]))
    done = subprocess.run([sys.executable, "-m", "tuckerize.data", str(tmp_path / "ok.npz"), "--input-shape", "N,1,3,3"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["count"] == 5 and summary["classes"] == 3 and summary["labelCounts"] == {"0": 1, "1": 1, "2": 3}
    refused = subprocess.run([sys.executable, "-m", "tuckerize.data", str(tmp_path / "ok.npz"), "--input-shape", "1,1,4,4"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "axis 2" in refused.stderr and refused.stdout == ""

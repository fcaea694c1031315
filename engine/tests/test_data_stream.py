"""A .zip image dataset is decoded batch by batch with a bounded cache, never into one (N, C, H, W) tensor
(issue 12: 15 PNGs with inputShape [1, 3, 8192, 8192] took a worker from 4 to 14 GB)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tuckerize.data import ImageZipTensor, describe, load_dataset, split_indices

ENGINE = Path(__file__).resolve().parents[1]


def _zip(path: Path, count: int, size: int = 8, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
            archive.writestr(f"{'cat' if i % 2 else 'dog'}/{i:03d}.png", buffer.getvalue())
    return str(path)


def test_batches_match_an_eager_decode_and_subsets_share_the_cache(tmp_path):
    path = _zip(tmp_path / "d.zip", 12)
    dataset = load_dataset(path, [None, 3, 8, 8])
    assert isinstance(dataset.x, ImageZipTensor) and dataset.x.shape == (12, 3, 8, 8)
    eager = torch.stack([dataset.x[i] for i in range(12)])
    assert torch.equal(dataset.x[torch.tensor([3, 0, 7])], eager[[3, 0, 7]])
    assert torch.equal(dataset.x[2:5], eager[2:5]) and torch.equal(dataset.x[4, 1], eager[4, 1])
    train_idx, heldout_idx = split_indices(len(dataset), 0.25, seed=1)
    train = dataset.subset(train_idx)
    assert isinstance(train.x, ImageZipTensor) and len(train) == 9
    assert torch.equal(train.x[torch.arange(9)], eager[train_idx]) and torch.equal(train.y, dataset.y[train_idx])
    assert dataset.info["spec"] == "d.zip", "the spec names the file, not the server's directory"
    summary = describe(dataset)
    assert 0.0 <= summary["min"] < summary["max"] <= 1.0


def test_the_cache_is_bounded_and_images_past_it_are_decoded_again(tmp_path):
    path = Path(_zip(tmp_path / "d.zip", 10))
    members = sorted(info.filename for info in zipfile.ZipFile(path).infolist())
    images = ImageZipTensor(path, members, 3, 8, 8, 8, cache_bytes=3 * 8 * 8 * 4 * 4)  # room for 4 images
    first = images[torch.arange(10)]
    assert len(images._source["cache"]) == 4
    decoded = images._source["decodedBytes"]
    assert torch.equal(images[torch.arange(10)], first)
    assert images._source["decodedBytes"] > decoded, "the 6 uncached images were decoded again"


def test_memory_stays_bounded_by_the_batch_for_large_inputs(tmp_path):
    # 40 small PNGs at a 1024 x 1024 RGB model input: one tensor would take 40 x 12 MiB = 480 MiB.
    path = _zip(tmp_path / "big.zip", 40, size=16)
    script = f"""
import json, resource, torch
from tuckerize.data import load_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dataset = load_dataset({path!r}, [1, 3, 1024, 1024])
batch = dataset.x[torch.tensor([0, 1])]
print(json.dumps({{"growthKiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "batch": list(batch.shape)}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(ENGINE), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    measured = json.loads(result.stdout)
    assert measured["batch"] == [2, 3, 1024, 1024]
    # The decoded-image cache (256 MiB) holds at most 21 of these images; the whole set would need 480 MiB.
    assert measured["growthKiB"] < 300 * 1024, measured

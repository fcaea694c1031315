"""Datasets for fine-tuning and evaluation: the built-in Fashion-MNIST, `.npz` arrays, `.zip` image folders.

Every loader returns a `Dataset` whose `x` is float32 NCHW exactly as the model takes it (pixels in
[0, 1] unless mean/std were asked for) and whose `y` holds int64 labels or is None (unlabelled data is
valid: fine-tuning then distils from the original model). Uploads are untrusted: `.npz` members are read
with pickles disallowed after checking their headers, `.zip` members are read in memory with size
limits (never extracted), and every refusal raises EngineInputError naming the file, member and value.

A `.zip` of images is not decoded into one (N, C, H, W) tensor: its `x` is an `ImageZipTensor` that decodes
the images a batch asks for (`x[indices]`, `x[a:b]`) and caches decoded images up to ZIP_DECODE_CACHE_BYTES,
so a job's memory is bounded by the batch and the cache whatever the number and size of the images.
`info["spec"]` names the file, never its directory: it ends up in reports.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import EngineInputError

BUILTIN_FASHION_MNIST = "builtin:fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# Limits on untrusted uploads: a dataset lives in memory as float32, so these bound what a job can take.
MAX_ARRAY_BYTES = 4 * 1024 ** 3
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_MEMBER_BYTES = 32 * 1024 ** 2
MAX_ZIP_TOTAL_BYTES = 4 * 1024 ** 3
MAX_COMPRESSION_RATIO = 200  # PNG/JPEG barely compress further; a higher ratio is a zip bomb
MAX_IMAGE_PIXELS = 64 * 1024 ** 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Decoded .zip images kept in memory for the next epochs; past it images are decoded again when asked for.
ZIP_DECODE_CACHE_BYTES = 256 * 1024 ** 2


class ImageZipTensor:
    """The (N, C, H, W) float32 images of a .zip, decoded when indexed.

    Indexing with an int, a slice, a list or an index tensor returns a real tensor of the selected images
    (the way a batch is taken); `take(indices)` returns a view of a subset without decoding anything. Views
    share one cache of decoded images, bounded by `cache_bytes`. Optional per-channel normalisation is
    applied to what is returned.
    """

    def __init__(self, path: Path, members: Sequence[str], channels: int, height: int, width: int, side: int,
                 cache_bytes: int = ZIP_DECODE_CACHE_BYTES):
        self._source = {"path": path, "archive": None, "members": list(members), "target": (channels, height, width, side),
                        "cache": {}, "cacheLimit": max(0, cache_bytes // (channels * height * width * 4)),
                        "decodedBytes": 0}
        self._rows = torch.arange(len(members))
        self._mean: Optional[torch.Tensor] = None
        self._std: Optional[torch.Tensor] = None

    @property
    def shape(self) -> torch.Size:
        channels, height, width, _ = self._source["target"]
        return torch.Size((len(self._rows), channels, height, width))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, indices) -> "ImageZipTensor":
        view = object.__new__(ImageZipTensor)
        view._source, view._mean, view._std = self._source, self._mean, self._std
        view._rows = self._rows[torch.as_tensor(indices, dtype=torch.long)]
        return view

    def normalised(self, mean: torch.Tensor, std: torch.Tensor) -> "ImageZipTensor":
        view = self.take(torch.arange(len(self._rows)))
        view._mean, view._std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        return view

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # x[rows, channel, ...]: the rows decoded, the rest indexed as usual
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], int) else rows[(slice(None), *key[1:])]
        if isinstance(key, int):
            return self[torch.tensor([key])][0]
        rows = self._rows[key] if isinstance(key, slice) else self._rows[torch.as_tensor(key, dtype=torch.long)]
        batch = torch.stack([self._image(int(row)) for row in rows.reshape(-1)]) if rows.numel() else \
            torch.empty((0, *self.shape[1:]), dtype=torch.float32)
        if self._mean is not None:
            batch = (batch - self._mean) / self._std
        return batch

    def batches(self, size: int = 256):
        for start in range(0, len(self), size):
            yield self[start:start + size]

    def min(self) -> torch.Tensor:
        return torch.stack([batch.min() for batch in self.batches()]).min()

    def max(self) -> torch.Tensor:
        return torch.stack([batch.max() for batch in self.batches()]).max()

    def _image(self, row: int) -> torch.Tensor:
        source = self._source
        cached = source["cache"].get(row)
        if cached is not None:
            return cached
        if source["archive"] is None:
            source["archive"] = zipfile.ZipFile(source["path"])
        filename = source["path"].name
        member = source["members"][row]
        with source["archive"].open(member) as handle:
            data = handle.read(MAX_ZIP_MEMBER_BYTES + 1)
        if len(data) > MAX_ZIP_MEMBER_BYTES:
            raise EngineInputError(f"{filename}: member {member!r} exceeds {MAX_ZIP_MEMBER_BYTES} bytes")
        source["decodedBytes"] += len(data)
        from PIL import Image
        image = _decode_image(Image, filename, member, data, *source["target"])
        if len(source["cache"]) < source["cacheLimit"]:
            source["cache"][row] = image
        return image


@dataclass
class Dataset:
    x: "torch.Tensor | ImageZipTensor"  # (N, C, H, W) float32
    y: Optional[torch.Tensor]          # (N,) int64, or None when unlabelled
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, indices: torch.Tensor) -> "Dataset":
        info = dict(self.info, count=int(indices.numel()))
        x = self.x.take(indices) if isinstance(self.x, ImageZipTensor) else self.x[indices]
        return Dataset(x, None if self.y is None else self.y[indices], info)


def load_dataset(spec: str, input_shape: Optional[Sequence] = None, split: str = "train",
                 data_dir: Optional[os.PathLike] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None) -> Dataset:
    """Load `spec` ("builtin:fashion-mnist", or a path to .npz / .zip) as model-ready NCHW float32.

    input_shape: the model input [N, C, H, W]; ints are checked, None/str/<=0 entries are dynamic.
    split: "train" or "test" for the built-in set; an uploaded file is one set (use `split_indices`).
    mean/std: per-channel normalisation applied after scaling to [0, 1] (leave None when the model
    normalises inside its graph, as the reference models do).
    """
    if spec == BUILTIN_FASHION_MNIST:
        dataset = load_fashion_mnist(split, data_dir)
    elif spec.startswith("builtin:"):
        raise EngineInputError(f"unknown built-in dataset {spec!r}; the built-in one is {BUILTIN_FASHION_MNIST!r}")
    else:
        path = Path(spec)
        if not path.is_file():
            raise EngineInputError(f"dataset file {spec!r} does not exist; upload it again")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            dataset = load_npz(path)
        elif suffix == ".zip":
            dataset = load_image_zip(path, input_shape)
        else:
            raise EngineInputError(
                f"dataset {path.name!r} has suffix {suffix!r}; use .npz (arrays x, y) or .zip (class folders of PNG/JPEG)")
    dataset = _normalise(dataset, mean, std)
    check_input_shape(dataset, input_shape)
    return dataset


def check_input_shape(dataset: Dataset, input_shape: Optional[Sequence]) -> None:
    """Refuse a dataset whose C, H, W differ from the static dims of the model input."""
    if input_shape is None:
        return
    if len(input_shape) != 4:
        raise EngineInputError(f"model input has shape {list(input_shape)}; image datasets need a 4-D NCHW input")
    got = list(dataset.x.shape[1:])
    for axis, (want, have) in enumerate(zip(input_shape[1:], got), start=1):
        if _static(want) is not None and int(want) != have:
            raise EngineInputError(
                f"dataset {dataset.info.get('spec')!r} has samples of shape {got} (C, H, W) but the model input "
                f"expects {list(input_shape[1:])}: axis {axis} is {have}, not {want}; "
                "provide data of the model's shape (a .zip of images is resized to it)")


def split_indices(n: int, heldout_fraction: float = 0.1, seed: int = 0,
                  max_heldout: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train / held-out index split: the same (n, fraction, seed) always gives the same split."""
    if not 0.0 < heldout_fraction < 1.0:
        raise EngineInputError(f"held-out fraction {heldout_fraction} must lie strictly between 0 and 1")
    if n < 2:
        raise EngineInputError(f"a dataset of {n} sample(s) cannot be split into training and held-out parts")
    n_heldout = min(n - 1, max(1, int(round(n * heldout_fraction))))
    if max_heldout is not None:
        n_heldout = max(1, min(n_heldout, max_heldout))
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    heldout = order[:n_heldout].sort().values
    train = order[n_heldout:].sort().values
    return train, heldout


# --- built-in Fashion-MNIST ---------------------------------------------------------------------------

def load_fashion_mnist(split: str = "train", data_dir: Optional[os.PathLike] = None) -> Dataset:
    if split not in ("train", "test"):
        raise EngineInputError(f"Fashion-MNIST split {split!r} does not exist; use 'train' or 'test'")
    root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise EngineInputError(f"Fashion-MNIST files in {root} disagree: images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    info = {"spec": BUILTIN_FASHION_MNIST, "split": split, "count": int(x.shape[0]), "shape": list(x.shape[1:]),
            "classes": 10, "classNames": FASHION_MNIST_CLASSES, "labelled": True,
            "preprocessing": "raw 28x28 grayscale pixels scaled to [0,1] (x/255), NCHW"}
    return Dataset(x, y, info)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: magic 0x0000 08 ndim, big-endian dims, uint8 data), gzip or plain."""
    if not path.is_file():
        raise EngineInputError(
            f"{path} is missing; install Debian's dataset-fashion-mnist package (make setup) or pass --data DIR")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise EngineInputError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise EngineInputError(f"{path} declares dims {dims} but holds {body.size} bytes of data")
    return body.reshape(dims)


# --- .npz ---------------------------------------------------------------------------------------------

def load_npz(path: Path) -> Dataset:
    """Arrays `x` (N,C,H,W float or uint8) and optional `y` (N integer labels); pickles are never loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
            if "x" not in members:
                raise EngineInputError(
                    f"{path.name}: no array 'x' (found {sorted(members)}); save with np.savez(f, x=images, y=labels)")
            for key in ("x", "y"):
                if key in members:
                    _check_npy_header(path.name, archive, members[key], key)
    except zipfile.BadZipFile as err:
        raise EngineInputError(f"{path.name} is not a valid .npz (zip) file: {err}") from err

    try:
        with np.load(path, allow_pickle=False) as arrays:
            x = arrays["x"]
            y = arrays["y"] if "y" in arrays.files else None
    except ValueError as err:  # numpy's refusal of object arrays, or a corrupt member
        raise EngineInputError(f"{path.name}: {err}") from err

    if x.ndim != 4:
        raise EngineInputError(f"{path.name}: x has shape {list(x.shape)}; it must be 4-D (N, C, H, W)")
    if x.shape[0] == 0:
        raise EngineInputError(f"{path.name}: x holds no samples")
    if x.dtype == np.uint8:
        images = torch.from_numpy(x.astype(np.float32) / 255.0)
        scale = "uint8 pixels scaled to [0,1] (x/255)"
    elif x.dtype.kind == "f":
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(images).all():
            raise EngineInputError(f"{path.name}: x contains NaN or infinite values")
        scale = f"{x.dtype} values used as given (cast to float32)"
    else:
        raise EngineInputError(f"{path.name}: x has dtype {x.dtype}; use float32 or uint8")

    labels = None
    classes = None
    if y is not None:
        if y.dtype.kind not in "iu":
            raise EngineInputError(f"{path.name}: y has dtype {y.dtype}; labels must be integers")
        if y.shape != (x.shape[0],):
            raise EngineInputError(f"{path.name}: y has shape {list(y.shape)}; it must be ({x.shape[0]},), one label per sample")
        if y.min() < 0:
            raise EngineInputError(f"{path.name}: y contains the negative label {int(y.min())}; labels are class indices >= 0")
        labels = torch.from_numpy(y.astype(np.int64))
        classes = int(labels.max()) + 1
    info = {"spec": path.name, "count": int(images.shape[0]), "shape": list(images.shape[1:]), "classes": classes,
            "labelled": labels is not None, "preprocessing": f"npz: {scale}, NCHW as stored"}
    return Dataset(images, labels, info)


def _check_npy_header(filename: str, archive: zipfile.ZipFile, member: str, key: str) -> None:
    """Read only the .npy header: refuse object dtypes and oversized arrays before numpy decompresses them."""
    with archive.open(member) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        except ValueError as err:
            raise EngineInputError(f"{filename}: array {key!r} has an unreadable header: {err}") from err
    if dtype.hasobject:
        raise EngineInputError(
            f"{filename}: array {key!r} has dtype {dtype} (Python objects); object arrays are refused because "
            "loading them would run pickled code; save plain numeric arrays")
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise EngineInputError(
            f"{filename}: array {key!r} of shape {list(shape)} needs {size / 1e9:.1f} GB; the limit is "
            f"{MAX_ARRAY_BYTES / 1e9:.1f} GB: upload a smaller sample")


# --- .zip of class folders ----------------------------------------------------------------------------

def load_image_zip(path: Path, input_shape: Optional[Sequence], resize: Optional[int] = None) -> Dataset:
    """Images in CLASS/IMAGE.png (optionally under one top folder), or all at the top level (unlabelled).

    Preprocessing (stated in info): decode, convert to grayscale (C=1) or RGB (C=3), resize the shorter
    side to `resize` (default max(H, W)) with bilinear filtering, center-crop H x W, scale to [0, 1].
    Class indices: the folder names themselves when all are non-negative integers (so they can match
    the model's output indices), else their sorted order (torchvision ImageFolder's rule).
    """
    channels, height, width = _image_target(path.name, input_shape)
    side = resize if resize is not None else max(height, width)
    if side < max(height, width):
        raise EngineInputError(f"resize {side} is smaller than the crop {height}x{width}")
    try:
        import PIL.Image  # noqa: F401  (ImageZipTensor decodes with it)
    except ImportError as err:  # pragma: no cover - Pillow ships with Debian's torchvision
        raise EngineInputError("decoding a .zip image dataset needs Pillow (python3-pil)") from err

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise EngineInputError(f"{path.name} is not a valid zip file: {err}") from err
    with archive:
        entries = _image_members(path.name, archive)
        relative = _strip_common_folder([PurePosixPath(info.filename).parts for info in entries])
        depths = {len(parts) for parts in relative}
        if depths - {1, 2}:
            deep = next(info.filename for info, parts in zip(entries, relative) if len(parts) > 2)
            raise EngineInputError(f"{path.name}: member {deep!r} is nested too deep; use CLASS/IMAGE.png")
        if depths == {1, 2}:
            raise EngineInputError(
                f"{path.name}: some images sit in class folders and some at the top level; use one layout")
        labelled = depths == {2}
        class_names = sorted({parts[0] for parts in relative}) if labelled else []
        class_index = _class_indices(class_names)

        labels = torch.tensor([class_index[parts[0]] for parts in relative], dtype=torch.int64) if labelled else None
        declared = sum(info.file_size for info in entries)
        if declared > MAX_ZIP_TOTAL_BYTES:
            raise EngineInputError(f"{path.name}: images declare {declared} bytes in total; the limit is {MAX_ZIP_TOTAL_BYTES}")
    images = ImageZipTensor(path, [info.filename for info in entries], channels, height, width, side)
    # Decode (and cache) the first image now, so an undecodable archive is refused before any work starts.
    images[0]  # noqa: B018

    mode = "grayscale" if channels == 1 else "RGB"
    info = {"spec": path.name, "count": len(entries), "shape": [channels, height, width],
            "classes": (max(class_index.values()) + 1) if labelled else None, "labelled": labelled,
            "preprocessing": (f"zip: decode PNG/JPEG, convert to {mode}, resize shorter side to {side} (bilinear), "
                              f"center crop {height}x{width}, scale to [0,1] (x/255), NCHW")}
    if labelled:
        info["classNames"] = class_names
    return Dataset(images, labels, info)


def _image_target(filename: str, input_shape: Optional[Sequence]) -> tuple[int, int, int]:
    if input_shape is None or len(input_shape) != 4:
        raise EngineInputError(f"{filename}: decoding images needs the model's 4-D input shape (N, C, H, W)")
    dims = [_static(d) for d in input_shape[1:]]
    if any(d is None for d in dims):
        raise EngineInputError(
            f"{filename}: the model input {list(input_shape)} has dynamic C/H/W; give options.inputShape [N,C,H,W]")
    channels, height, width = dims
    if channels not in (1, 3):
        raise EngineInputError(f"{filename}: the model takes {channels} channels; image datasets give 1 (gray) or 3 (RGB)")
    return channels, height, width


def _image_members(filename: str, archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise EngineInputError(f"{filename}: {len(members)} members exceed the limit of {MAX_ZIP_MEMBERS}")
    entries = []
    for info in members:
        name = info.filename
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
            raise EngineInputError(f"{filename}: member {name!r} has an unsafe path (absolute, '..' or drive)")
        if info.is_dir() or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if not name.lower().endswith(IMAGE_SUFFIXES):
            raise EngineInputError(f"{filename}: member {name!r} is not a PNG/JPEG image; remove it")
        if info.file_size > MAX_ZIP_MEMBER_BYTES:
            raise EngineInputError(f"{filename}: member {name!r} declares {info.file_size} bytes; the limit is {MAX_ZIP_MEMBER_BYTES}")
        if info.compress_size > 0 and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
            raise EngineInputError(f"{filename}: member {name!r} compresses {info.file_size / info.compress_size:.0f}:1; "
                                   "refused as a possible zip bomb")
        entries.append(info)
    if not entries:
        raise EngineInputError(f"{filename}: no PNG/JPEG images found")
    entries.sort(key=lambda info: info.filename)
    return entries


def _strip_common_folder(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop one top folder shared by every image when the layout below it is TOP/CLASS/IMAGE."""
    tops = {parts[0] for parts in paths}
    if len(tops) == 1 and all(len(parts) == 3 for parts in paths):
        return [parts[1:] for parts in paths]
    return paths


def _class_indices(names: list[str]) -> dict[str, int]:
    if names and all(name.isdigit() for name in names):
        return {name: int(name) for name in names}
    return {name: index for index, name in enumerate(names)}


def _decode_image(Image, filename: str, member: str, data: bytes, channels: int, height: int, width: int,
                  side: int) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise EngineInputError(f"{filename}: member {member!r} is {image.format}, not PNG/JPEG")
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise EngineInputError(f"{filename}: member {member!r} is {image.width}x{image.height} pixels; "
                                       f"the limit is {MAX_IMAGE_PIXELS}")
            image = image.convert("L" if channels == 1 else "RGB")
            scale = side / min(image.width, image.height)
            size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
            image = image.resize(size, Image.BILINEAR)
            left = (image.width - width) // 2
            top = (image.height - height) // 2
            image = image.crop((left, top, left + width, top + height))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except EngineInputError:
        raise
    except Exception as err:  # Pillow raises many types for corrupt images
        raise EngineInputError(f"{filename}: member {member!r} could not be decoded: {err}") from err
    if channels == 1:
        return torch.from_numpy(pixels).unsqueeze(0)
    return torch.from_numpy(pixels).permute(2, 0, 1)


# --- helpers ------------------------------------------------------------------------------------------

def _normalise(dataset: Dataset, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Dataset:
    if mean is None and std is None:
        return dataset
    channels = dataset.x.shape[1]
    mean_t = torch.tensor(list(mean) if mean is not None else [0.0] * channels, dtype=torch.float32)
    std_t = torch.tensor(list(std) if std is not None else [1.0] * channels, dtype=torch.float32)
    if mean_t.numel() != channels or std_t.numel() != channels:
        raise EngineInputError(f"mean/std need {channels} values (one per channel), got {mean_t.tolist()} / {std_t.tolist()}")
    if (std_t <= 0).any():
        raise EngineInputError(f"std values must be positive, got {std_t.tolist()}")
    if isinstance(dataset.x, ImageZipTensor):
        x = dataset.x.normalised(mean_t, std_t)
    else:
        x = (dataset.x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)
    info = dict(dataset.info, preprocessing=dataset.info["preprocessing"] +
                f", then (x - {mean_t.tolist()}) / {std_t.tolist()}")
    return Dataset(x, dataset.y, info)


def _static(dim) -> Optional[int]:
    """An int > 0 is a static dim; None, a symbolic name or 0/-1 (ONNX's 'unknown') is dynamic."""
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and int(dim) > 0:
        return int(dim)
    return None


def describe(dataset: Dataset) -> dict:
    """What a dataset holds, for the service to record at upload: info plus per-class counts."""
    summary = dict(dataset.info)
    if dataset.y is not None:
        counts = torch.bincount(dataset.y)
        summary["labelCounts"] = {str(label): int(n) for label, n in enumerate(counts.tolist()) if n}
    summary["min"], summary["max"] = float(dataset.x.min()), float(dataset.x.max())
    return summary


def main(argv=None) -> int:
    """`python3 -m tuckerize.data SPEC [--input-shape N,C,H,W] [--split train|test]`: validate and describe.

    Prints one JSON object (count, shape, classes, labelled, preprocessing, labelCounts, min, max);
    on a refused dataset prints the reason on stderr and exits 2.
    """
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python3 -m tuckerize.data", description=main.__doc__.split("\n")[0])
    parser.add_argument("spec", help="builtin:fashion-mnist, or a .npz / .zip path")
    parser.add_argument("--input-shape", help="model input N,C,H,W; a non-positive or non-numeric entry is dynamic")
    parser.add_argument("--split", default="train", choices=["train", "test"], help="built-in dataset split")
    args = parser.parse_args(argv)
    shape = None
    if args.input_shape:
        shape = [int(d) if d.strip().lstrip("-").isdigit() else None for d in args.input_shape.split(",")]
    try:
        summary = describe(load_dataset(args.spec, shape, split=args.split))
    except EngineInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

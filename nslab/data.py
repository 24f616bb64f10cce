"""CIFAR-100 held on the training device as uint8, with augmentation on device tensors.

Two sources, tried in order, both in ``data_dir``:

1. ``cifar100_uint8.npz``: uint8 ``x_train`` (N, 32, 32, 3), ``y_train`` (N,),
   ``x_test``, ``y_test``: how an offline machine supplies the data set.
2. torchvision's ``CIFAR100(data_dir, download=True)``: the ordinary download.

The seed recipe: RandomCrop(32, padding=4) with zero fill and a horizontal flip,
then Normalize with the CIFAR-10 statistics the seed code used.
"""
from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

ARRAY_FILE = "cifar100_uint8.npz"
KEYS = ("x_train", "y_train", "x_test", "y_test")
# The seed code normalised with CIFAR-10's statistics (NOTES.md); kept for fidelity.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
NUM_CLASSES = 100


@dataclass
class Split:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64, on one device.

    ``fingerprint``: a hash of exactly these images and labels (recorded in config.json, so that a run
    never resumes on other data).
    """

    x: torch.Tensor
    y: torch.Tensor
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.y)


def load_arrays(data_dir: str) -> dict[str, np.ndarray]:
    """The four arrays from ``data_dir``: the array file if present, else torchvision's download."""
    path = os.path.join(data_dir, ARRAY_FILE)
    if os.path.exists(path):
        return _read_array_file(path)
    if data_dir and not os.path.isdir(data_dir) and os.path.exists(data_dir):
        raise FileNotFoundError(f"data_dir={data_dir!r} is a file: expected a folder holding {ARRAY_FILE}")
    try:
        from torchvision.datasets import CIFAR100

        train = CIFAR100(data_dir, train=True, download=True)
        test = CIFAR100(data_dir, train=False, download=True)
    except Exception as err:  # any download failure: say what was expected instead
        raise FileNotFoundError(
            f"no CIFAR-100 in data_dir={data_dir!r}: expected {path} (uint8 arrays {list(KEYS)}) "
            f"or torchvision's download into that folder, which failed ({type(err).__name__}: {err}). "
            f"Set data_dir or NSLAB_DATA_DIR to a folder holding {ARRAY_FILE}, or run where the download works."
        ) from None  # the download's own traceback (urllib, sockets) says nothing more to a user
    arrays = {"x_train": train.data, "y_train": np.asarray(train.targets, dtype=np.int64),
              "x_test": test.data, "y_test": np.asarray(test.targets, dtype=np.int64)}
    _check_arrays(arrays, data_dir)
    return arrays


def _read_array_file(path: str) -> dict[str, np.ndarray]:
    """The arrays of ``path``, memory-mapped from an uncompressed cache when one can be kept.

    Decompressing the 168 MB file takes about 1.5 s on a laptop core; the cache (``$NSLAB_CACHE_DIR``,
    else ``~/.cache/nslab``) holds each array as a ``.npy``, so the next run maps it and a subset reads
    only its own rows. The cache is keyed by the file's path, size and modification time.
    """
    cached = _cached_arrays(path)
    if cached is not None:
        return cached
    try:
        with np.load(path) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise ValueError(f"it lacks the arrays {missing}")
            arrays = {k: f[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is not a usable CIFAR-100 array file ({err}): expected an .npz with uint8 "
                         f"x_train (N,32,32,3), y_train (N,), x_test (M,32,32,3), y_test (M,)") from None
    _check_arrays(arrays, path)
    _write_cache(path, arrays)
    return arrays


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Shapes, dtypes and label values, checked before any training: a bad label would fail mid-run."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{where}: x_{split} has shape {x.shape} and dtype {x.dtype}, y_{split} {y.shape}; "
                             f"expected uint8 (N,32,32,3) with N labels in a 1-d array")
        if len(y) == 0:
            raise ValueError(f"{where}: the {split} split is empty")
        if y.dtype.kind not in "iu":
            raise ValueError(f"{where}: y_{split} holds {y.dtype} labels: expected integers 0..{NUM_CLASSES - 1}")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise ValueError(f"{where}: y_{split} holds labels outside 0..{NUM_CLASSES - 1} "
                             f"(min {y.min()}, max {y.max()})")


def _cache_folder(path: str) -> str:
    st = os.stat(path)
    key = hashlib.blake2b(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=8)
    root = os.environ.get("NSLAB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nslab")
    return os.path.join(root, f"cifar100-{key.hexdigest()}")


def _cached_arrays(path: str) -> dict[str, np.ndarray] | None:
    folder = _cache_folder(path)
    try:
        return {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r") for k in KEYS}
    except (OSError, ValueError):
        return None


def _write_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Best effort: a read-only home or a full disk only costs the next run the decompression."""
    from .records import atomic_path

    folder = _cache_folder(path)
    try:
        os.makedirs(folder, exist_ok=True)
        for k in KEYS:
            with atomic_path(os.path.join(folder, f"{k}.npy")) as tmp, open(tmp, "wb") as f:
                np.save(f, arrays[k])
    except OSError:
        pass


def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """A seeded random subset of ``range(n)`` (never the first ``size``: test sets may be sorted)."""
    if size > n:
        raise ValueError(f"subset of {size} requested but the split has only {n} images")
    if size == 0 or size == n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def to_split(x: np.ndarray, y: np.ndarray, device: torch.device) -> Split:
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y.astype(np.int64))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(x.data)
    digest.update(y.data)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return Split(images.to(device), torch.from_numpy(y).to(device), f"{len(y)}:{digest.hexdigest()}")


def load_cifar100(data_dir: str, device: torch.device, train_subset: int = 0, test_subset: int = 0,
                  seed: int = 1) -> tuple[Split, Split]:
    """Train and test splits on ``device``, with seeded random subsets (0 = all)."""
    arrays = load_arrays(data_dir)
    for name, size, key in (("train_subset", train_subset, "y_train"), ("test_subset", test_subset, "y_test")):
        if size > len(arrays[key]):
            raise ValueError(f"{name}={size} is not allowed: the data has {len(arrays[key])} images in that split")
    tr = subset_indices(len(arrays["y_train"]), train_subset, seed).numpy()
    te = subset_indices(len(arrays["y_test"]), test_subset, seed + 1).numpy()
    return (to_split(arrays["x_train"][tr], arrays["y_train"][tr], device),
            to_split(arrays["x_test"][te], arrays["y_test"][te], device))


def augment(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a uint8 batch (B, C, H, W)."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B,W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


@functools.lru_cache(maxsize=None)
def _channel_stats(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per device: a host-to-device copy per batch would stall the step on CUDA.
    mean = torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1).to(device)
    std = torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    mean, std = _channel_stats(x.device, dtype)
    return (x.to(dtype) / 255.0 - mean) / std


def batches(split: Split, batch_size: int, generator: torch.Generator, shuffle: bool, augmented: bool,
            channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches; the last batch may be smaller (as DataLoader's default)."""
    n = len(split)
    order = torch.randperm(n, generator=generator, device=split.x.device) if shuffle else None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        x, y = split.x[idx], split.y[idx]
        if augmented:
            x = augment(x, generator)
        x = normalize(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


def write_synthetic(path: str, n_train: int = 256, n_test: int = 128, num_classes: int = NUM_CLASSES,
                    seed: int = 0) -> str:
    """Write a tiny random data set in the array-file format (for tests and demos without data)."""
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
              "y_train": rng.integers(0, num_classes, n_train).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
              "y_test": np.sort(rng.integers(0, num_classes, n_test)).astype(np.uint8)}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, **arrays)
    return path

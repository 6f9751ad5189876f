"""Offline-first data sets: digits, Fashion-MNIST (Debian IDX files), torchvision, synthetic."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["DATASETS", "FASHION_MNIST_DIRS", "dataset_info", "load_dataset", "subset_indices"]

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")

#: Where Fashion-MNIST's IDX files are looked for (Debian's ``dataset-fashion-mnist`` first).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

_INFO = {
    "digits": ((1, 8, 8), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "synthetic": ((3, 32, 32), 10),
}

_FASHION_HINT = (
    "Install Debian's package (`apt-get install dataset-fashion-mnist`, files under "
    "/usr/share/datasets/fashion-mnist) or pass root= a folder with the four *-ubyte(.gz) files."
)


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; allowed: {', '.join(DATASETS)}.")
    return name


def dataset_info(name: str) -> tuple[tuple[int, ...], int]:
    """Return ``(input_shape, num_classes)`` of a named data set.

    Example:
        >>> dataset_info("digits")
        ((1, 8, 8), 10)
    """
    return _INFO[_check_name(name)]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values.")
    return data.reshape(dims).copy()  # frombuffer is read-only


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _fashion_mnist(train: bool, root: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if train else "t10k"
    roots = [Path(root)] if root is not None else [Path(d) for d in FASHION_MNIST_DIRS]
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"Fashion-MNIST root {str(root)!r} does not exist. {_FASHION_HINT}")
    for r in roots:
        images = _find_idx(r, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(r, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return _read_idx(images).astype(np.float32) / 255.0, _read_idx(labels)
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {[str(r) for r in roots]}. " + _FASHION_HINT
    )


def _digits(train: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    idx = order[:cut] if train else order[cut:]
    return x[idx], y[idx]


def _torchvision(name: str, train: bool, root: str | os.PathLike | None, download: bool):
    import torchvision

    cls = {
        "mnist": torchvision.datasets.MNIST,
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }[name]
    folder = Path(root) if root is not None else Path.home() / ".cache" / "lanczos-optim" / name
    try:
        ds = cls(str(folder), train=train, download=download)
    except (RuntimeError, OSError) as err:
        raise FileNotFoundError(
            f"{name} is not available under {str(folder)!r} ({err}). With network access, pass "
            f"download=True (CLI: lanczos-optim train --download) or put torchvision's {name} "
            "files there."
        ) from None
    x = np.asarray(ds.data, dtype=np.float32) / 255.0
    y = np.asarray(ds.targets)
    if x.ndim == 4:  # CIFAR: N, H, W, C
        x = x.transpose(0, 3, 1, 2)
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        std = x.std(axis=(0, 2, 3), keepdims=True)
        x = (x - mean) / std
    return x, y


def _synthetic(train: bool, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape, classes = _INFO["synthetic"]
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((int(np.prod(shape)), classes)).astype(np.float32)
    data_rng = np.random.default_rng(seed + (1 if train else 2))
    x = data_rng.standard_normal((n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1) @ teacher).argmax(axis=1)
    return x, y


def subset_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The seeded random subset that ``load_dataset(..., subset=size, seed=seed)`` keeps.

    Example:
        >>> subset_indices(5, 2, 0).shape
        (2,)
    """
    return np.random.default_rng(seed).permutation(n)[:size]


def load_dataset(
    name: str,
    *,
    train: bool = True,
    root: str | os.PathLike | None = None,
    subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    synthetic_size: int = 1024,
) -> TensorDataset:
    """Load a data set as a ``TensorDataset`` of float32 images ``[N, C, H, W]`` and int64 labels.

    ``digits`` (scikit-learn, always offline; a fixed 80/20 split) is the default of the tools.
    ``fashion-mnist`` reads the IDX files of Debian's ``dataset-fashion-mnist`` or ``root``.
    ``mnist``/``cifar10``/``cifar100`` go through torchvision and need the files (or network with
    ``download=True``). ``synthetic`` draws Gaussian images labelled by a random linear teacher.

    Args:
        name: One of :data:`DATASETS`.
        train: Training split (else test split).
        root: Folder holding the files.
        subset: Keep a seeded random subset of this many samples.
        seed: Seed of the subset and of synthetic data.
        download: Let torchvision download (needs network).
        synthetic_size: Samples of synthetic data.

    Returns:
        The data set.

    Raises:
        ValueError: Unknown name or a bad subset size.
        FileNotFoundError: The files are absent, with a message saying how to get them.

    Example:
        >>> ds = load_dataset("digits", subset=100)
        >>> tuple(ds.tensors[0].shape), ds.tensors[1].dtype
        ((100, 1, 8, 8), torch.int64)
    """
    _check_name(name)
    if name == "digits":
        x, y = _digits(train)
    elif name == "fashion-mnist":
        x, y = _fashion_mnist(train, root)
    elif name == "synthetic":
        x, y = _synthetic(train, seed, synthetic_size)
    else:
        x, y = _torchvision(name, train, root, download)
    if x.ndim == 3:
        x = x[:, None]
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or not 1 <= subset <= len(y):
            raise ValueError(f"subset must be an int in [1, {len(y)}]; got {subset!r}.")
        keep = subset_indices(len(y), subset, seed)
        x, y = x[keep], y[keep]
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x)), torch.as_tensor(y, dtype=torch.long)
    )

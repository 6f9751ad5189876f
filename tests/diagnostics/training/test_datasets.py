"""Data sets: digits split, the IDX reader on hand-written files, subsets, names, Fashion-MNIST."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.training.datasets import DATASETS, FASHION_MNIST_DIRS, dataset_info, load_dataset


def _idx(array: np.ndarray) -> bytes:
    """Encode an unsigned-byte array in the IDX format (magic 0 0 8 ndim, big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    for split in ("train", "t10k"):
        for stem, arr in (
            (f"{split}-images-idx3-ubyte", images),
            (f"{split}-labels-idx1-ubyte", labels),
        ):
            data = _idx(arr)
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)


def test_digits_shapes_and_disjoint_split() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits"), load_dataset("digits", train=False)
    x_train, y_train = train.tensors
    x_test, y_test = test.tensors
    assert x_train.shape == (1437, 1, 8, 8)
    assert x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32
    assert y_train.dtype == torch.int64
    assert float(x_train.min()) == 0.0
    assert float(x_train.max()) == 1.0
    assert set(y_test.tolist()) == set(range(10))
    # The two splits partition the 1797 images: together they are exactly the full set.
    full = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).reshape(1797, -1)
    both = torch.cat([x_train, x_test]).reshape(1797, -1)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(both) == key(full)
    assert dataset_info("digits") == ((1, 8, 8), 10)


def test_subsets_are_seeded_and_deterministic() -> None:
    a = load_dataset("digits", subset=50, seed=3)
    b = load_dataset("digits", subset=50, seed=3)
    c = load_dataset("digits", subset=50, seed=4)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    assert len(a) == 50
    with pytest.raises(ValueError, match=r"subset must be an int in \[1, 1437\]"):
        load_dataset("digits", subset=5000)


def test_synthetic_is_seeded() -> None:
    a = load_dataset("synthetic", synthetic_size=16, seed=1)
    b = load_dataset("synthetic", synthetic_size=16, seed=1)
    assert a.tensors[0].shape == (16, 3, 32, 32)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert torch.equal(a.tensors[1], b.tensors[1])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_on_tiny_files(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4) * 10
    labels = np.array([7, 0, 9], dtype=np.uint8)
    _write_fashion(tmp_path, images, labels, gz)
    ds = load_dataset("fashion-mnist", root=tmp_path, train=False)
    x, y = ds.tensors
    assert x.shape == (3, 1, 2, 4)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255.0))
    assert y.tolist() == [7, 0, 9]
    assert y.dtype == torch.int64


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda b: b[:-5], r"truncated: expected 24 values"),
        (lambda b: b"\x00\x00\x0d" + b[3:], r"not an unsigned-byte IDX file"),
        (lambda b: b[:2], r"not an unsigned-byte IDX file"),
    ],
)
def test_bad_idx_files_raise(tmp_path: Path, corrupt, match: str) -> None:
    images = np.zeros((3, 2, 4), dtype=np.uint8)
    _write_fashion(tmp_path, images, np.zeros(3, dtype=np.uint8), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        load_dataset("fashion-mnist", root=tmp_path)


def test_missing_files_and_unknown_names() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown dataset 'imagenet'; allowed: digits, fashion-mnist, mnist"
    ):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="allowed: digits"):
        dataset_info("cifar1000")
    with pytest.raises(
        FileNotFoundError, match=r"does not exist.*apt-get install dataset-fashion-mnist"
    ):
        load_dataset("fashion-mnist", root="/nonexistent/folder")
    assert set(DATASETS) >= {"digits", "fashion-mnist", "cifar10", "cifar100", "synthetic"}


def _fashion_files_present() -> bool:
    return any(
        (Path(d) / f"t10k-images-idx3-ubyte{ext}").is_file()
        for d in FASHION_MNIST_DIRS
        for ext in ("", ".gz")
    )


@pytest.mark.data
def test_real_fashion_mnist() -> None:
    if not _fashion_files_present():
        message = (
            "Fashion-MNIST IDX files not found in "
            f"{', '.join(FASHION_MNIST_DIRS)}: run `apt-get install dataset-fashion-mnist`."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Under CI the dataset must be installed. " + message)
        pytest.skip(message)
    ds = load_dataset("fashion-mnist", train=False, subset=500, seed=0)
    x, y = ds.tensors
    assert x.shape == (500, 1, 28, 28)
    assert 0.0 <= float(x.min()) < float(x.max()) <= 1.0
    assert set(y.tolist()) == set(range(10))
    assert dataset_info("fashion-mnist") == ((1, 28, 28), 10)


def test_missing_torchvision_data_names_the_train_option(tmp_path: Path) -> None:
    # The hint names an option that exists: `lanczos-optim train --download`.
    with pytest.raises(FileNotFoundError, match=r"lanczos-optim train --download"):
        load_dataset("mnist", root=tmp_path)

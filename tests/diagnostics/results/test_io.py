"""Atomic, versioned, pickle-free result files (diagnostics.results.io)."""

from __future__ import annotations

import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.results import io as _io
from diagnostics.results.io import atomic_write, load_npz, save_npz

ARRAYS = {
    "x": np.linspace(-1.0, 1.0, 7),
    "i": np.arange(5, dtype=np.int64),
    "flag": np.array([True, False]),
    "labels": np.array(["top-0", "bottom-1"]),
    "t": torch.arange(3, dtype=torch.float32),
}
META = {"steps": 3, "name": "demo", "nested": {"a": [1, 2]}, "nan": float("nan"), "none": None}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_npz(tmp_path / "r.npz", "demo", ARRAYS, META)


def test_round_trip(saved: Path) -> None:
    arrays, meta = load_npz(saved, "demo")
    assert set(arrays) == set(ARRAYS)
    for name, value in ARRAYS.items():
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        np.testing.assert_array_equal(arrays[name], expected)
        assert arrays[name].dtype == expected.dtype
    assert np.isnan(meta.pop("nan"))
    assert meta == {k: v for k, v in META.items() if k != "nan"}


def test_header_keys(saved: Path) -> None:
    with np.load(saved, allow_pickle=False) as npz:
        assert str(npz["format"]) == "lanczos-optim/demo"
        assert int(npz["format_version"]) == 1
        assert json.loads(str(npz["meta"]))["steps"] == 3


def test_path_used_as_given(tmp_path: Path) -> None:
    out = save_npz(tmp_path / "spectrum-00300", "demo", {"x": np.ones(1)}, {})
    assert out == tmp_path / "spectrum-00300"
    assert out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spectrum-00300"]


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("hello, not a result file")
    elif how == "pickle":
        path.write_bytes(pickle.dumps({"format": "lanczos-optim/demo"}))
    elif how == "npy":
        np.save(path.open("wb"), np.arange(3))
    elif how == "flipped":  # damage the stored bytes of one member: CRC check fails
        i = data.index(b"format_version") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])


@pytest.mark.parametrize("how", ["truncated", "empty", "text", "pickle", "npy", "flipped"])
def test_corrupt_file_is_a_clear_error(saved: Path, how: str) -> None:
    _corrupt(saved, how)
    with pytest.raises(ValueError, match=r"r\.npz.*lanczos-optim/demo") as info:
        load_npz(saved, "demo")
    assert "expected" in str(info.value)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.ones(2)}, "not a lanczos-optim result file"),
        ({"x": np.ones(2), "format": np.array("someone-else/thing")}, "not a lanczos-optim"),
    ],
)
def test_foreign_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "foreign.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(path, "demo")


def test_other_kind(saved: Path) -> None:
    with pytest.raises(ValueError, match=r"holds 'lanczos-optim/demo'.*'lanczos-optim/spectrum'"):
        load_npz(saved, "spectrum")


def test_other_version(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "v2.npz", "demo", {"x": np.ones(1)}, {}, version=2)
    with pytest.raises(ValueError, match=r"format_version 2.*format_version 1"):
        load_npz(path, "demo")
    assert load_npz(path, "demo", version=2)[0]["x"].tolist() == [1.0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_npz(tmp_path / "nope.npz", "demo")


@pytest.mark.parametrize(
    ("arrays", "meta", "error", "match"),
    [
        ({"x": np.array([object()], dtype=object)}, {}, TypeError, "'x' has dtype object"),
        ({"meta": np.ones(1)}, {}, ValueError, "reserved"),
        ({"x": np.ones(1)}, {"bad": object()}, ValueError, "JSON-serialisable"),
    ],
)
def test_bad_input_leaves_existing_file(
    saved: Path, arrays: dict, meta: dict, error: type, match: str
) -> None:
    before = saved.read_bytes()
    with pytest.raises(error, match=match):
        save_npz(saved, "demo", arrays, meta)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_existing_file(
    saved: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    before = saved.read_bytes()

    def half_write(handle, **arrays):  # writes some bytes, then fails
        handle.write(b"PK\x03\x04 partial")
        raise exc

    monkeypatch.setattr(_io.np, "savez", half_write)
    with pytest.raises(type(exc)):
        save_npz(saved, "demo", {"x": np.zeros(3)}, {})
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_atomic_write_needs_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        atomic_write(tmp_path / "missing" / "f.bin", lambda f: f.write(b"x"))


def test_saved_file_is_a_plain_zip(saved: Path) -> None:
    with zipfile.ZipFile(saved) as zf:
        assert zf.testzip() is None
        assert {"format.npy", "format_version.npy", "meta.npy", "x.npy"} <= set(zf.namelist())


def test_new_file_gets_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_npz(tmp_path / "p.npz", "demo", {"x": np.ones(1)}, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600

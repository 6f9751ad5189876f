"""Atomic, versioned, pickle-free result files.

Every result file is one ``.npz`` archive holding plain numeric or string arrays plus three
reserved entries:

- ``format``: the string ``"lanczos-optim/<kind>"``, e.g. ``"lanczos-optim/spectrum"``;
- ``format_version``: an integer, bumped whenever the layout of that kind changes;
- ``meta``: a JSON document (a string) with the run's metadata.

Files are written to a temporary file in the target folder and moved into place with
:func:`os.replace`, so a reader never sees half a file and a failed write leaves any existing
file untouched. They are read with ``np.load(..., allow_pickle=False)``: object arrays are
refused on writing and on reading.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["FORMAT_PREFIX", "atomic_write", "load_npz", "save_npz"]

FORMAT_PREFIX = "lanczos-optim/"
_RESERVED = ("format", "format_version", "meta")


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    # Unlike tempfile.mkstemp (mode 0600), os.open with 0o666 lets the umask decide, so the
    # result gets the permissions of any other new file.
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file in {str(folder)!r}.")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: into a temporary file beside ``path``, then ``os.replace``.

    Args:
        path: Destination. Its folder must exist.
        write: Called with a binary file object open for writing.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: If the destination folder does not exist.
        Exception: Whatever ``write`` raises; the temporary file is removed and an existing
            file at ``path`` is left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
        >>> atomic_write(p, lambda f: f.write(b"hi")).read_bytes()
        b'hi'
    """
    dest = Path(path)
    folder = dest.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot write {str(dest)!r}: folder {str(folder)!r} not found.")
    fd, tmp = _create_temp(folder, dest.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _as_array(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufcSU":
        raise TypeError(
            f"Array {name!r} has dtype {arr.dtype}; only numeric, boolean and string arrays "
            "can be stored without pickling."
        )
    return arr


def save_npz(
    path: str | os.PathLike[str],
    kind: str,
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    version: int = 1,
) -> Path:
    """Save arrays and JSON metadata as one versioned ``.npz`` result file, atomically.

    Args:
        path: Destination file, used exactly as given (no suffix is added).
        kind: Kind of result, e.g. ``"spectrum"``; stored as ``format = "lanczos-optim/<kind>"``.
        arrays: Name -> array (numpy array, torch tensor or array-like; not object dtype).
            The names ``format``, ``format_version`` and ``meta`` are reserved.
        meta: JSON-serialisable metadata.
        version: Layout version of this kind, stored as ``format_version``.

    Returns:
        The path written.

    Raises:
        ValueError: On a reserved array name or metadata that is not JSON-serialisable.
        TypeError: On an array of object dtype.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.npz"
        >>> _ = save_npz(p, "demo", {"x": np.arange(3)}, {"steps": 3})
        >>> arrays, meta = load_npz(p, "demo")
        >>> arrays["x"].tolist(), meta["steps"]
        ([0, 1, 2], 3)
    """
    clash = sorted(set(arrays) & set(_RESERVED))
    if clash:
        raise ValueError(f"Array names {clash} are reserved for the file header.")
    try:
        meta_json = json.dumps(dict(meta), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc
    payload = {name: _as_array(name, value) for name, value in arrays.items()}
    payload["format"] = np.array(FORMAT_PREFIX + kind)
    payload["format_version"] = np.array(int(version), dtype=np.int64)
    payload["meta"] = np.array(meta_json)
    return atomic_write(path, lambda handle: np.savez(handle, **payload))


def load_npz(
    path: str | os.PathLike[str], kind: str, *, version: int = 1
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a result file written by :func:`save_npz`, checking its kind and version.

    Args:
        path: The file.
        kind: Expected kind, e.g. ``"spectrum"``.
        version: Expected ``format_version``.

    Returns:
        ``(arrays, meta)``: the arrays without the reserved entries, and the metadata dict.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated or corrupt, not a lanczos-optim result file, of
            another kind or of another version; the message names the path and what was
            expected.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.npz"
        >>> _ = save_npz(p, "spectrum", {"x": np.arange(3)}, {})
        >>> load_npz(p, "spectrum")[0]["x"].tolist()
        [0, 1, 2]
        >>> load_npz(p, "landscape")
        Traceback (most recent call last):
        ...
        ValueError: ...spectrum...
    """
    p = Path(path)
    expected = f"a {FORMAT_PREFIX + kind!r} result file (format_version {version})"
    if not p.is_file():
        raise FileNotFoundError(f"No such result file: {str(p)!r} (expected {expected}).")
    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an npz archive")
        with loaded as npz:
            data = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(
            f"{str(p)!r} is truncated, corrupt or not an npz archive; expected {expected} "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    found = str(data.pop("format", ""))
    if not found.startswith(FORMAT_PREFIX):
        raise ValueError(f"{str(p)!r} is not a lanczos-optim result file; expected {expected}.")
    if found != FORMAT_PREFIX + kind:
        raise ValueError(f"{str(p)!r} holds {found!r}; expected {expected}.")
    found_version = data.pop("format_version", None)
    if found_version is None or found_version.shape != () or int(found_version) != version:
        raise ValueError(
            f"{str(p)!r} has format_version {found_version}; expected {expected}. "
            "It was written by another version of lanczos-optim."
        )
    try:
        meta = json.loads(str(data.pop("meta")))
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"{str(p)!r} has no valid JSON 'meta' entry; expected {expected}."
        ) from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{str(p)!r}: 'meta' is not a JSON object; expected {expected}.")
    return data, meta

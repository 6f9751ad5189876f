"""The last step of every benchmark script: print its report and write it to a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(lines: list[str], path: str | Path) -> None:
    """Print ``lines`` and write them, newline-terminated, to ``path`` (atomically)."""
    text = "\n".join(lines)
    print(text)
    write_atomic(text + "\n", path)

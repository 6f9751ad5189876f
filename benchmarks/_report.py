"""The last step of every benchmark script: print its report and write it to a file."""

from __future__ import annotations

from pathlib import Path


def write_report(lines: list[str], path: str | Path) -> None:
    """Print ``lines`` and write them, newline-terminated, to ``path`` (folders created)."""
    text = "\n".join(lines)
    print(text)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")

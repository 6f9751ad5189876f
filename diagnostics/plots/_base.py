"""Shared plumbing of the plots: Agg figures without pyplot, atomic PNG/PDF saving."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diagnostics.results import atomic_write

__all__ = ["FORMATS", "check_path", "finish", "new_figure"]

FORMATS = {".png": "png", ".pdf": "pdf"}


def check_path(path: str | os.PathLike[str] | None) -> Path | None:
    """Return ``path`` as a Path after checking its suffix, before any work is done.

    Raises:
        ValueError: If the suffix is not ``.png`` or ``.pdf``.
        FileNotFoundError: If the folder does not exist.
    """
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ValueError(f"path must end with .png or .pdf; got {str(p)!r}.")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"Cannot save {str(p)!r}: folder {str(p.parent)!r} not found.")
    return p


def new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    """A figure on an Agg canvas, independent of pyplot's global state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def finish(fig: Figure, path: Path | None, dpi: int = 150) -> Figure:
    """Save ``fig`` atomically to ``path`` (PNG or PDF by suffix) if given; return it."""
    if path is not None:
        fmt = FORMATS[path.suffix.lower()]
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi))
    return fig

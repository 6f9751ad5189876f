"""Progress bars of the long analyses (tqdm on stderr; silent when not a terminal)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int | None, desc: str, *, enabled: bool, unit: str = "it") -> Any:
    """A tqdm bar of ``total`` steps on stderr.

    Args:
        total: Number of updates expected (``None``: unknown).
        desc: Label in front of the bar, e.g. ``"Lanczos (hessian)"``.
        enabled: ``False`` gives a silent bar; ``True`` shows it when stderr is a terminal
            (tqdm's ``disable=None``), so logs and pipes get no bar characters.
        unit: Unit of the counter.

    Returns:
        The bar; call ``update(n)`` and ``close()`` (or use it as a context manager).
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=False)

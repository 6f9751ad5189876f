"""``krylov_tol``: how many Lanczos steps a step takes, chosen from the solve's residual."""

from __future__ import annotations

import math
from typing import Any


def check_tol(hp: dict[str, Any]) -> None:
    """Raise a torch-style ``ValueError`` on an invalid ``krylov_tol`` (or one it cannot apply).

    The residual is read off the tridiagonal of a run started from the gradient, so a random
    start or block Lanczos is refused.

    Example:
        >>> check_tol({"krylov_tol": 1e-2, "krylov_start": "gradient", "block_size": 1})
        >>> check_tol({"krylov_tol": 0.0, "krylov_start": "gradient", "block_size": 1})
        Traceback (most recent call last):
        ...
        ValueError: Invalid krylov_tol value: 0.0 (must be None or a finite number > 0)
    """
    tol = hp.get("krylov_tol")
    if tol is None:
        return
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        or not math.isfinite(tol)
        or not tol > 0
    ):
        raise ValueError(f"Invalid krylov_tol value: {tol!r} (must be None or a finite number > 0)")
    if hp["krylov_start"] != "gradient" or hp["block_size"] != 1:
        raise ValueError(
            f"Invalid krylov_tol value: {tol!r} with krylov_start={hp['krylov_start']!r}, "
            f"block_size={hp['block_size']} (krylov_tol needs krylov_start='gradient' and "
            "block_size=1)"
        )

r"""A free symmetry check of an operator from the Lanczos recurrence.

After step :math:`j`, :math:`v_{j+1} = (A v_j - \alpha_j v_j - \beta_{j-1} v_{j-1}) / \beta_j`,
so :math:`v_{j+1}^\top A v_j = \beta_j`. The next step computes :math:`A v_{j+1}` anyway, and a
symmetric :math:`A` has :math:`v_j^\top A v_{j+1} = v_{j+1}^\top A v_j = \beta_j`: one dot
product per step compares the two.
"""

from __future__ import annotations

import math
import warnings

import torch


class SymmetryCheck:
    r"""Warns once when :math:`|v_j^\top A v_{j+1} - \beta_j|` exceeds ``tol`` times ``||T||``.

    ``tol`` is :math:`\max(100\sqrt{\epsilon}, 10^{-6})` (at most 0.1), with :math:`\epsilon`
    that of the operator's dtype or of the basis storage if coarser: 1.5e-6 in float64 and
    3.4e-2 in float32, far above the rounding of products (also in reduced precision), far
    below the asymmetry of a non-symmetric matrix.
    """

    def __init__(self, dtype: torch.dtype, basis_dtype: torch.dtype | None = None) -> None:
        eps = max(torch.finfo(d).eps for d in (dtype, basis_dtype or dtype))
        self.tol = min(max(100 * math.sqrt(eps), 1e-6), 0.1)
        self.warned = False

    def compare(self, back: float, beta: float, anorm: float, step: int) -> None:
        r"""Compare :math:`v_{j}^\top A v_{j+1}` (``back``) with :math:`\beta_j` (``beta``)."""
        gap = abs(back - beta)
        if self.warned or not gap > self.tol * max(anorm, abs(back), 1e-300):
            return
        self.warned = True
        warnings.warn(
            f"lanczos: the operator is not symmetric (at step {step}, v_j.(A v_j+1) = "
            f"{back:.6g} but (A v_j).v_j+1 = {beta:.6g}); its Ritz values belong to no "
            "symmetric matrix. Check the operator, or that its data are the same on every pass.",
            RuntimeWarning,
            stacklevel=3,
        )

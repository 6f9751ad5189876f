"""The residual-bound stopping test that Lanczos runs after every step."""

from __future__ import annotations

import numpy as np

STOP_ON = ("extremes", "largest", "smallest", "all")


class ResidualTest:
    r"""Tracks the growing tridiagonal :math:`T` and tests its Ritz values' residual bounds.

    The residual of Ritz pair :math:`(\theta_i, V s_i)` after :math:`m` steps is
    :math:`\|A V s_i - \theta_i V s_i\| = |\beta_m s_{m,i}|`; a run has converged when the bounds
    of the Ritz values chosen by ``stop_on`` are at most ``tol * max|theta|``. ``T`` lives in a
    preallocated NumPy buffer (doubled when full) and is solved with NumPy, whose call overhead
    on matrices this small is a fraction of torch's: this runs every step.
    """

    def __init__(self, tol: float, stop_on: str, capacity: int = 64) -> None:
        self.tol, self.stop_on = tol, stop_on
        self._t = np.zeros((capacity, capacity))
        self.size = 0

    def push(self, alpha: float, beta_before: float) -> None:
        r"""Add step ``j``'s :math:`\alpha_j`, coupled to the previous step by ``beta_before``."""
        j = self.size
        if j == len(self._t):
            grown = np.zeros((2 * j, 2 * j))
            grown[:j, :j] = self._t
            self._t = grown
        self._t[j, j] = alpha
        if j:
            self._t[j - 1, j] = self._t[j, j - 1] = beta_before
        self.size += 1

    def converged(self, beta: float) -> bool:
        """Whether the watched Ritz values are within tolerance, with ``beta`` the newest norm."""
        theta, s = np.linalg.eigh(self._t[: self.size, : self.size])
        ok = np.abs(beta * s[-1]) <= self.tol * max(
            abs(float(theta[0])), abs(float(theta[-1])), np.finfo(np.float64).tiny
        )
        if self.stop_on == "largest":
            return bool(ok[-1])
        if self.stop_on == "smallest":
            return bool(ok[0])
        if self.stop_on == "extremes":
            return bool(ok[0] and ok[-1])
        return bool(ok.all())

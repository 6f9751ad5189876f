"""The residual-bound stopping test that Lanczos runs after every step."""

from __future__ import annotations

from collections.abc import Callable

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

    #: Steps before the test is first asked (one Ritz value says nothing about the extremes).
    min_steps = 2

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


def solve_residual(s: np.ndarray, factors: np.ndarray, beta: float, *, exact: bool) -> float:
    r"""Relative residual of the damped solve from the Lanczos start vector :math:`v`.

    With :math:`T = S \Theta S^\top` after :math:`m` steps, the Krylov solution is
    :math:`d = \|v\| V S f(\Theta) S^\top e_1`. Since :math:`A V = V T + \beta_m v_{m+1}
    e_m^\top`, for ``exact`` (:math:`f(\theta) = 1/(\theta + \delta)`, nothing clipped) the
    residual of :math:`(A + \delta I) d = v` is exactly

    .. math::
        \frac{\|(A + \delta I) d - v\|}{\|v\|}
            = \beta_m \Big| \sum_i s_{m,i}\, f(\theta_i)\, s_{1,i} \Big| ,

    the conjugate gradient residual (with clipped Ritz values: the part of the residual
    outside the Krylov space). Otherwise (``"abs"``, whose :math:`|A|` is no polynomial in
    :math:`A`) the Ritz pairs' residual bounds :math:`|\beta_m s_{m,i}|` weighted by the start
    vector's weights :math:`|s_{1,i}| = \sqrt{\gamma_i}` (see :func:`weighted_residual`).
    """
    last = beta * s[-1]
    if exact:
        return abs(float(np.sum(last * factors * s[0])))
    return weighted_residual(s[0], factors, np.abs(last))


def weighted_residual(first: np.ndarray, factors: np.ndarray, bounds: np.ndarray) -> float:
    r"""The bound :math:`\sum_i f(\theta_i)\, |s_{1,i}|\, r_i` of a damped solve's residual.

    ``bounds`` are the Ritz pairs' residual bounds :math:`r_i \ge \|A u_i - \theta_i u_i\|`,
    ``first`` the start vector's coordinates :math:`s_{1,i} = u_i^\top v / \|v\|`. For
    :math:`f = 1/(\theta + \delta)` it bounds :math:`\|(A + \delta I) d - v\| / \|v\|` (triangle
    inequality over the Ritz pairs); for :math:`f = 1/(|\theta| + \delta)` it is the same
    weighted sum, a proxy: how far the Ritz pairs that carry the step are from converged.
    """
    return float(np.sum(factors * np.abs(first) * bounds))


class SolveResidualTest(ResidualTest):
    r"""Stop once the damped solve from the start vector is accurate: :func:`solve_residual`.

    ``factors`` maps Ritz values to :math:`f(\theta)`; the run stops after the first step whose
    relative residual is at most ``tol``, which :attr:`value` then holds.
    """

    min_steps = 1

    def __init__(
        self,
        tol: float,
        factors: Callable[[np.ndarray], np.ndarray],
        exact: bool,
        capacity: int = 64,
    ) -> None:
        super().__init__(tol, "all", capacity)
        self._factors, self._exact = factors, exact
        self.value = float("nan")

    def converged(self, beta: float) -> bool:
        """Whether the solve's relative residual is within ``tol``, ``beta`` the newest norm."""
        theta, s = np.linalg.eigh(self._t[: self.size, : self.size])
        self.value = solve_residual(s, self._factors(theta), beta, exact=self._exact)
        return self.value <= self.tol

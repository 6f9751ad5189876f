r"""How far a diagonal approximation is from a spectrum, in numbers (paper, sections 6.3 and 7.1).

A diagonal :math:`d \in \mathbb{R}^P` read as a spectrum is the measure
:math:`\nu = \frac{1}{P} \sum_i \delta_{d_i}`; a Lanczos estimate is
:math:`\hat\mu = \sum_i w_i \delta_{\theta_i}`. The paper's argument that the diagonal misses
the support, the outliers and the mass at zero becomes: the Wasserstein-1 distance between
them, their extremes, and their mass near zero.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["compare_to_spectrum"]

DEFAULT_REL_EPS = 1e-3


def _array(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries.")
    return arr


def _measure(spectrum: object) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and normalised weights of a spectrum object, SpectralDensity or (values, weights)."""
    for nodes_attr in ("ritz_values", "nodes"):
        if hasattr(spectrum, nodes_attr) and hasattr(spectrum, "weights"):
            values, weights = getattr(spectrum, nodes_attr), spectrum.weights  # type: ignore[attr-defined]
            break
    else:
        if not (isinstance(spectrum, (tuple, list)) and len(spectrum) == 2):
            raise TypeError(
                "spectrum must have `ritz_values` and `weights` (Spectrum), `nodes` and "
                f"`weights` (SpectralDensity), or be a (values, weights) pair; got "
                f"{type(spectrum).__name__}."
            )
        values, weights = spectrum
    values, weights = _array(values, "spectrum values"), _array(weights, "spectrum weights")
    if values.shape != weights.shape:
        raise ValueError(
            f"spectrum values and weights differ in length: {values.size} vs {weights.size}."
        )
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("spectrum weights must be non-negative with a positive sum.")
    return values, weights / weights.sum()


def _wasserstein_1(
    u_values: np.ndarray,
    v_values: np.ndarray,
    u_weights: np.ndarray | None = None,
    v_weights: np.ndarray | None = None,
) -> float:
    r"""Wasserstein-1 distance between two discrete measures on the real line.

    .. math::
        W_1(\mu, \nu) = \int_{-\infty}^{\infty} |F_\mu(x) - F_\nu(x)| \, dx ,

    evaluated exactly on the merged support (weights are normalised; ``None`` means uniform).
    """
    u, v = np.asarray(u_values, np.float64), np.asarray(v_values, np.float64)
    uw = np.full(u.size, 1.0 / u.size) if u_weights is None else np.asarray(u_weights, np.float64)
    vw = np.full(v.size, 1.0 / v.size) if v_weights is None else np.asarray(v_weights, np.float64)
    uw, vw = uw / uw.sum(), vw / vw.sum()
    grid = np.union1d(u, v)
    order_u, order_v = np.argsort(u, kind="stable"), np.argsort(v, kind="stable")
    cdf_u = np.concatenate([[0.0], np.cumsum(uw[order_u])])
    cdf_v = np.concatenate([[0.0], np.cumsum(vw[order_v])])
    fu = cdf_u[np.searchsorted(u[order_u], grid[:-1], side="right")]
    fv = cdf_v[np.searchsorted(v[order_v], grid[:-1], side="right")]
    return float(np.sum(np.abs(fu - fv) * np.diff(grid)))


def compare_to_spectrum(
    diagonal: Tensor | np.ndarray,
    spectrum: object,
    *,
    eps: float | None = None,
    rel_eps: float = DEFAULT_REL_EPS,
) -> dict[str, float]:
    r"""Compare a diagonal approximation with a (Lanczos) spectral measure.

    With :math:`\nu` the diagonal's empirical measure (weight :math:`1/P` per entry) and
    :math:`\hat\mu` the spectral measure,

    .. math::
        W_1(\nu, \hat\mu) = \int |F_\nu - F_{\hat\mu}|\,dx, \qquad
        W_1^{\mathrm{rel}} = \frac{W_1}{\max_i \theta_i - \min_i \theta_i}, \qquad
        m_0(\nu) = \nu([-\varepsilon, \varepsilon]),

    and the extremes of both. Nodes count for the extremes whatever their weight.

    Args:
        diagonal: The flat diagonal ``[P]`` (tensor or array).
        spectrum: An object with ``ritz_values`` and ``weights`` (a ``Spectrum``), with
            ``nodes`` and ``weights`` (a :class:`~lanczos_optim.SpectralDensity`), or a
            ``(values, weights)`` pair. Weights are normalised to sum to 1.
        eps: Absolute half-width of "near zero". Default: ``rel_eps`` times the largest
            magnitude in either measure.
        rel_eps: Relative half-width used when ``eps`` is ``None``.

    Returns:
        A dict of floats: ``wasserstein``, ``wasserstein_relative``, ``spectrum_span``,
        ``diagonal_min``, ``diagonal_max``, ``spectrum_min``, ``spectrum_max``, ``eps``,
        ``diagonal_mass_near_zero``, ``spectrum_mass_near_zero`` (mass with
        :math:`|x| \le \varepsilon`), ``diagonal_negative_mass``, ``spectrum_negative_mass``
        (mass below 0) and ``*_negative_mass_beyond_eps`` (below :math:`-\varepsilon`, the
        paper's negative mass without the Ritz value nearest zero). ``wasserstein_relative``
        is NaN for a one-point spectrum.

    Raises:
        ValueError: On empty or non-finite input, mismatched or negative weights, or a
            negative ``eps``.
        TypeError: If ``spectrum`` has none of the accepted forms.

    Example:
        >>> r = compare_to_spectrum([1.0, 1.0], ([0.0, 2.0], [0.5, 0.5]))
        >>> r["wasserstein"], r["wasserstein_relative"], r["spectrum_max"]
        (1.0, 0.5, 2.0)
    """
    d = _array(diagonal, "diagonal")
    values, weights = _measure(spectrum)
    if eps is None:
        if not rel_eps >= 0:
            raise ValueError(f"rel_eps must be non-negative; got {rel_eps!r}.")
        eps = rel_eps * max(float(np.abs(d).max()), float(np.abs(values).max()))
    elif not eps >= 0:
        raise ValueError(f"eps must be non-negative; got {eps!r}.")
    w1 = _wasserstein_1(d, values, None, weights)
    span = float(values.max() - values.min())
    return {
        "wasserstein": w1,
        "wasserstein_relative": w1 / span if span > 0 else float("nan"),
        "spectrum_span": span,
        "diagonal_min": float(d.min()),
        "diagonal_max": float(d.max()),
        "spectrum_min": float(values.min()),
        "spectrum_max": float(values.max()),
        "eps": float(eps),
        "diagonal_mass_near_zero": float(np.mean(np.abs(d) <= eps)),
        "spectrum_mass_near_zero": float(weights[np.abs(values) <= eps].sum()),
        "diagonal_negative_mass": float(np.mean(d < 0)),
        "spectrum_negative_mass": float(weights[values < 0].sum()),
        "diagonal_negative_mass_beyond_eps": float(np.mean(d < -eps)),
        "spectrum_negative_mass_beyond_eps": float(weights[values < -eps].sum()),
    }

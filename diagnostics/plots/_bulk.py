"""The stem plot's companion panel of the bulk, and its mark of the negative mass.

A network's spectrum is a heavy spike at zero inside a bulk of many small Ritz values, plus
a few outliers far away. On one linear eigenvalue axis the outliers set the scale, and the
dozens of bulk stems merge into one block: the companion panel shows the bulk alone, on its
own linear axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch

__all__ = [
    "MIN_BULK_STEMS",
    "MIN_MAGNIFICATION",
    "Bulk",
    "bulk_of",
    "mark_negative",
    "negative_mass_label",
    "zoom_limits",
]

#: The fewest stems in the bulk for which ``zoom=None`` draws the companion panel.
MIN_BULK_STEMS = 10
#: The least magnification (full range / bulk range) for which ``zoom=None`` draws it.
MIN_MAGNIFICATION = 4.0

_NEGATIVE = "tab:cyan"


class Bulk(NamedTuple):
    """The bulk of a spectral measure and whether it deserves a panel of its own.

    Attributes:
        low: Smallest Ritz value of the bulk.
        high: Largest Ritz value of the bulk.
        mask: Boolean mask over the nodes, True inside ``[low, high]``.
        crowded: Whether ``zoom=None`` draws the companion panel.
    """

    low: float
    high: float
    mask: np.ndarray
    crowded: bool


def _one_probe_spectrum(nodes: np.ndarray, weights: np.ndarray) -> Any:
    """A one-probe :class:`~diagnostics.analysis.Spectrum` holding just ``(nodes, weights)``."""
    from diagnostics.analysis import Spectrum

    n = nodes.size
    arrays = {"ritz_values": nodes, "weights": weights, "residuals": np.zeros(n),
              "probe": np.zeros(n, np.int64), "alpha": np.zeros(n), "beta": np.zeros(n - 1),
              "probe_num_steps": np.array([n]), "probe_residual_norm": np.zeros(1)}  # fmt: skip
    return Spectrum(arrays, {"num_params": n})


def bulk_of(spectrum: Any, nodes: np.ndarray, weights: np.ndarray) -> Bulk:
    r"""The bulk by the gap rule of :meth:`~diagnostics.analysis.Spectrum.split_outliers`.

    It is the same bulk as ``bulk_min``/``bulk_max`` of :meth:`Spectrum.summary`: gaps wider
    than 10 typical node spacings split the sorted Ritz values into clusters, and the bulk is
    the cluster of largest weight. A ``(nodes, weights)`` pair or a ``SpectralDensity`` counts
    as one probe. The bulk is *crowded*, worth a panel of its own, when it holds at least
    :data:`MIN_BULK_STEMS` stems and is at least :data:`MIN_MAGNIFICATION` times narrower
    than the whole measure:

    .. math::
        \#\{\theta_i \in [b_-, b_+]\} \ge 10, \qquad
        \frac{\theta_{\max} - \theta_{\min}}{b_+ - b_-} \ge 4.

    Example:
        >>> import numpy as np
        >>> nodes = np.concatenate([np.linspace(-0.05, 0.1, 40), [1.0, 2.0, 5.0]])
        >>> bulk = bulk_of(None, nodes, np.full(43, 1 / 43))
        >>> round(bulk.low, 3), round(bulk.high, 3), int(bulk.mask.sum()), bulk.crowded
        (-0.05, 0.1, 40, True)
    """
    if not hasattr(spectrum, "split_outliers"):
        spectrum = _one_probe_spectrum(nodes, weights)
    low, high = spectrum.split_outliers().bulk
    mask = (nodes >= low) & (nodes <= high)
    full = float(nodes.max() - nodes.min())
    crowded = bool(mask.sum() >= MIN_BULK_STEMS and full >= MIN_MAGNIFICATION * (high - low))
    return Bulk(low, high, mask, crowded)


def zoom_limits(low: float, high: float) -> tuple[float, float]:
    """The companion panel's eigenvalue range: the bulk with 5 % of its width on each side."""
    pad = 0.05 * (high - low) if high > low else 0.05 * max(abs(low), 1e-12)
    return low - pad, high + pad


def negative_mass_label(spectrum: Any, nodes: np.ndarray, weights: np.ndarray) -> str | None:
    r"""``"negative mass 0.178"``, :math:`\sum_{\theta_i<0} w_i`; ``None`` without any.

    For a :class:`~diagnostics.analysis.Spectrum` whose Ritz value nearest 0 is negative, the
    mass without it follows (it stands for the spike of eigenvalues at zero, paper 7.1).
    """
    if not (nodes < 0).any():
        return None
    raw = float(weights[nodes < 0].sum())
    label = f"negative mass {raw:.3f}"
    if hasattr(spectrum, "negative_mass"):
        rest = spectrum.negative_mass(exclude_nearest_zero=True)
        if not np.isclose(rest, raw, rtol=0, atol=5e-4):
            label += f"\n({rest:.3f} without the Ritz value nearest 0)"
    return label


def mark_negative(ax: Axes, label: str | None) -> Patch | None:
    r"""Shade the axes' side :math:`\theta < 0` (keeping its limits); the legend handle."""
    if label is None:
        return None
    lo, hi = ax.get_xlim()
    if lo < 0:
        ax.axvspan(lo, min(0.0, hi), color=_NEGATIVE, alpha=0.15, lw=0, zorder=0,
                   label=f"_{label}")  # fmt: skip
        ax.set_xlim(lo, hi)
    return Patch(color=_NEGATIVE, alpha=0.3, lw=0, label=f"$\\theta < 0$: {label}")

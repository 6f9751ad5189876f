"""Summaries of a Lanczos spectral measure: extremes, negative mass, trace, outliers."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["OutlierSplit", "SpectrumSummaries"]


class OutlierSplit(NamedTuple):
    """The bulk of a spectral measure and the Ritz values outside it.

    Attributes:
        bulk: ``(low, high)``, the smallest and largest Ritz value of the bulk.
        mask: Boolean mask over ``ritz_values``, True for the outliers.
        values: The outlying Ritz values, ascending.
        weights: Their weights in the combined measure.
    """

    bulk: tuple[float, float]
    mask: np.ndarray
    values: np.ndarray
    weights: np.ndarray


class SpectrumSummaries:
    """Summary statistics shared by spectrum results (a mixin).

    Needs ``ritz_values``, ``weights``, ``probe`` (arrays of equal length), ``num_probes``
    and ``num_params``.
    """

    ritz_values: np.ndarray
    weights: np.ndarray
    probe: np.ndarray
    num_probes: int
    num_params: int

    @property
    def lambda_max(self) -> float:
        """The largest Ritz value (a lower bound on the largest eigenvalue)."""
        return float(self.ritz_values.max())

    @property
    def lambda_min(self) -> float:
        """The smallest Ritz value (an upper bound on the smallest eigenvalue)."""
        return float(self.ritz_values.min())

    def negative_mass(self, exclude_nearest_zero: bool = False) -> float:
        r"""The spectral mass on the negative axis, :math:`\sum_{\theta_i < 0} w_i`.

        The paper (section 7.1) reports 37 % negative mass for VGG-16, almost all of it on one
        Ritz value at -0.0003 that stands for the spike of eigenvalues at zero; without that Ritz
        value only 0.05 % remains.

        Args:
            exclude_nearest_zero: Leave out, in every probe, the Ritz value nearest zero. The
                result stays a fraction of the whole measure (it is not renormalised).

        Returns:
            A number in ``[0, 1]``.
        """
        keep = self.ritz_values < 0
        if exclude_nearest_zero:
            for j in range(self.num_probes):
                idx = np.flatnonzero(self.probe == j)
                keep[idx[np.argmin(np.abs(self.ritz_values[idx]))]] = False
        return float(self.weights[keep].sum())

    def nearest_zero(self) -> tuple[np.ndarray, np.ndarray]:
        """The Ritz value nearest zero of each probe and its weight in the combined measure.

        Returns:
            ``(values, weights)``, one entry per probe.
        """
        idx = []
        for j in range(self.num_probes):
            in_probe = np.flatnonzero(self.probe == j)
            idx.append(in_probe[np.argmin(np.abs(self.ritz_values[in_probe]))])
        return self.ritz_values[idx], self.weights[idx]

    def negative_mass_report(self) -> tuple[str, str]:
        """Two lines for people: the negative mass without the Ritz value nearest zero, then raw.

        The first (the headline) is the mass that stands for genuinely negative eigenvalues;
        the second the raw mass and how much of it sits on the Ritz value nearest zero, which
        stands for the spike of eigenvalues at zero (paper, section 7.1).

        Example:
            >>> import numpy as np
            >>> from diagnostics.analysis.spectrum import Spectrum
            >>> s = Spectrum({"ritz_values": np.array([-0.5, -0.004, 2.0]),
            ...     "weights": np.array([0.01, 0.74, 0.25]), "residuals": np.zeros(3),
            ...     "probe": np.zeros(3, int), "alpha": np.zeros(3), "beta": np.zeros(2),
            ...     "probe_num_steps": np.array([3]), "probe_residual_norm": np.zeros(1)},
            ...     {"num_params": 10})
            >>> s.negative_mass_report()[0]
            'negative mass 0.010 without the Ritz value nearest 0'
        """
        values, weights = self.nearest_zero()
        raw = self.negative_mass()
        one = values.size == 1
        nearest = "the Ritz value nearest 0" if one else "the Ritz values nearest 0"
        headline = (
            f"negative mass {self.negative_mass(exclude_nearest_zero=True):.3f} without {nearest}"
        )
        if not (values < 0).any():
            shown = f"{values[0]:.2g}" if one else f"{values.min():.2g} to {values.max():.2g}"
            return headline, f"raw negative mass {raw:.3f}; {nearest} ({shown}) is not negative"
        where = (
            f"the Ritz value {values[0]:.2g} nearest 0"
            if one
            else f"the {values.size} Ritz values nearest 0 (one per probe, "
            f"{values.min():.2g} to {values.max():.2g})"
        )
        on_zero = float(weights[values < 0].sum())
        return headline, f"raw negative mass {raw:.3f}, {on_zero:.3f} of it on {where}"

    def probe_traces(self) -> np.ndarray:
        r"""Per-probe trace estimates :math:`P \sum_i \gamma^{(j)}_i \theta^{(j)}_i`.

        The sum is :math:`v^\top C v / v^\top v` for probe :math:`v`; for a Gaussian :math:`v`
        its expectation is :math:`\operatorname{tr}(C)/P` (Hutchinson, 1990).
        """
        w = self.weights * self.num_probes * self.ritz_values
        return self.num_params * np.bincount(self.probe, weights=w, minlength=self.num_probes)

    def trace(self) -> tuple[float, float]:
        r"""Hutchinson trace estimate and its standard error over probes.

        .. math::
            \widehat{\operatorname{tr}}(C) = \frac{P}{d}\sum_{j=1}^{d}\sum_i
            \gamma^{(j)}_i \theta^{(j)}_i, \qquad
            \mathrm{se} = \frac{\operatorname{std}_j(t_j)}{\sqrt d}\ \ (\text{NaN if } d = 1).
        """
        t = self.probe_traces()
        se = float(t.std(ddof=1) / math.sqrt(len(t))) if len(t) > 1 else float("nan")
        return float(t.mean()), se

    def split_outliers(self, gap_factor: float = 10.0) -> OutlierSplit:
        r"""Split the Ritz values into a bulk and outliers by a gap rule.

        Rule: let :math:`s` be the typical node spacing, the median over probes of the median
        gap between a probe's consecutive Ritz values. Sorting the Ritz values of all probes,
        every gap larger than ``gap_factor`` :math:`\cdot s` separates two clusters. The bulk
        is the cluster of largest total weight; every Ritz value outside it is an outlier.
        Lanczos places its nodes densely where the spectral mass is, so an isolated eigenvalue
        (paper, section 6.4 and figure 7) shows up as a Ritz value beyond a wide gap.

        Args:
            gap_factor: How many typical spacings a gap must exceed to separate clusters.

        Returns:
            An :class:`OutlierSplit`.

        Raises:
            ValueError: If ``gap_factor`` is not positive.
        """
        if not gap_factor > 0:
            raise ValueError(f"gap_factor must be positive; got {gap_factor!r}.")
        spacings = []
        for j in range(self.num_probes):
            theta = np.sort(self.ritz_values[self.probe == j])
            if theta.size > 1:
                spacings.append(float(np.median(np.diff(theta))))
        order = np.argsort(self.ritz_values, kind="stable")
        theta, w = self.ritz_values[order], self.weights[order]
        cluster = np.zeros(theta.size, dtype=np.int64)
        if spacings and np.median(spacings) > 0:
            cluster[1:] = np.cumsum(np.diff(theta) > gap_factor * np.median(spacings))
        bulk_id = int(np.argmax(np.bincount(cluster, weights=w)))
        in_bulk = cluster == bulk_id
        mask = np.empty(theta.size, dtype=bool)
        mask[order] = ~in_bulk
        bulk = (float(theta[in_bulk].min()), float(theta[in_bulk].max()))
        return OutlierSplit(bulk, mask, theta[~in_bulk], w[~in_bulk])

    def summary(self, gap_factor: float = 10.0) -> dict[str, float]:
        """All scalar summaries in one flat dict (e.g. for logging)."""
        trace, trace_se = self.trace()
        split = self.split_outliers(gap_factor)
        return {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "negative_mass": self.negative_mass(),
            "negative_mass_excl_zero": self.negative_mass(exclude_nearest_zero=True),
            "trace": trace,
            "trace_stderr": trace_se,
            "bulk_min": split.bulk[0],
            "bulk_max": split.bulk[1],
            "num_outliers": float(split.values.size),
        }

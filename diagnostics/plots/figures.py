"""Figures of spectra, densities, loss landscapes and training curves (matplotlib, Agg).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot's global state
and, given ``path`` (``.png`` or ``.pdf``), also saves it atomically.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.container import StemContainer
from matplotlib.figure import Figure

from diagnostics.plots._base import check_path, finish, new_figure
from diagnostics.plots._bulk import (
    Bulk,
    bulk_of,
    mark_negative,
    negative_mass_label,
    zoom_limits,
)
from diagnostics.plots._landscape import plot_landscape, plot_landscape_2d
from diagnostics.plots._stats import plot_statistics
from diagnostics.plots._training import plot_runs, plot_training_curves, rows_to_history

__all__ = [
    "plot_runs",
    "rows_to_history",
    "plot_density",
    "plot_landscape",
    "plot_landscape_2d",
    "plot_spectrum",
    "plot_statistics",
    "plot_training_curves",
    "spectrum_title",
]

_COLORS = {"lanczos": "tab:red", "exact": "tab:blue", "diagonal": "goldenrod"}
_CURVATURE = {"hessian": ("Hessian", "tab:red"), "ggn": ("GGN", "tab:purple")}
DIAGONALS = {
    "diag_ggn_exact": "exact GGN diagonal",
    "diag_ggn_mc": "Monte-Carlo GGN diagonal",
    "diag_hessian": "Hessian diagonal",
}


def spectrum_title(spectrum: Any, diagonal_label: str | None = None) -> str:
    r"""A two-line title naming curvature and epoch, then model, data and Lanczos steps.

    Everything comes from ``meta``: ``curvature``; ``epoch`` and ``lr`` of a spectrum saved
    during training (:class:`~diagnostics.training.EpochSpectra`); ``provenance`` with
    ``model``, ``dataset``, ``split`` (e.g. ``"held-out"``) and ``checkpoint``; else the
    parameter count ``num_params``; ``num_samples``, ``lanczos_steps`` and ``num_probes``.

    Example:
        >>> class S:
        ...     meta = {"curvature": "ggn", "num_params": 4810, "num_samples": 96,
        ...             "lanczos_steps": 12, "provenance": {"model": "mlp", "dataset": "digits"}}
        >>> spectrum_title(S())
        'GGN spectrum\nmlp on digits (96 samples), 12 Lanczos steps'
        >>> S.meta |= {"epoch": 5, "lr": 0.1, "provenance": {"model": "mlp",
        ...            "dataset": "digits", "split": "held-out"}}
        >>> spectrum_title(S())
        'GGN spectrum after epoch 5 (lr 0.1)\nmlp on digits (96 held-out samples), 12 Lanczos steps'
    """
    meta = getattr(spectrum, "meta", None) or {}
    prov = meta.get("provenance") or {}
    name = _CURVATURE.get(meta.get("curvature"), ("Lanczos", ""))[0]
    head = f"{name} spectrum"
    if meta.get("epoch") is not None:
        head += f" after epoch {meta['epoch']}"
        head += f" (lr {meta['lr']:g})" if isinstance(meta.get("lr"), (int, float)) else ""
    if diagonal_label:
        head += f" vs {DIAGONALS.get(diagonal_label, diagonal_label)}"
    model = prov.get("model")
    if not model and "num_params" in meta:
        model = f"{meta['num_params']:,} parameters"
    data = prov.get("dataset")
    split = f"{prov['split']} " if prov.get("split") else ""
    samples = f"{meta['num_samples']} {split}samples" if meta.get("num_samples") else None
    what = " on ".join(p for p in (model, data) if p)
    if samples:
        what = f"{what} ({samples})" if data else ", ".join(p for p in (what, samples) if p)
    steps = meta.get("lanczos_steps")
    probes = meta.get("num_probes") or 1
    parts = [what] if what else []
    if steps:
        parts.append(f"{steps} Lanczos steps" + (f" x {probes} probes" if probes > 1 else ""))
    checkpoint = prov.get("checkpoint")
    if checkpoint:
        parts.append(os.path.basename(checkpoint))
    return head + ("\n" + ", ".join(parts) if parts else "")


def _as_1d(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a non-empty array of finite numbers; got {arr.size}.")
    return arr


def _measure(spectrum: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(spectrum, "ritz_values") and hasattr(spectrum, "weights"):
        nodes, weights = spectrum.ritz_values, spectrum.weights
    elif hasattr(spectrum, "nodes") and hasattr(spectrum, "weights"):
        nodes, weights = spectrum.nodes, spectrum.weights
    elif isinstance(spectrum, (tuple, list)) and len(spectrum) == 2:
        nodes, weights = spectrum
    else:
        raise TypeError(
            "spectrum must be a Spectrum, a SpectralDensity or a (nodes, weights) pair; got "
            f"{type(spectrum).__name__}."
        )
    nodes, weights = _as_1d("nodes", nodes), _as_1d("weights", weights)
    if nodes.shape != weights.shape:
        raise ValueError(f"{nodes.size} nodes but {weights.size} weights.")
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum.")
    return nodes, weights / weights.sum()


def _draw_histograms(
    ax: Axes, hists: dict[str, np.ndarray], edges: np.ndarray, labels: dict, sizes: dict
) -> None:
    """Histogram bars of each value set, a bar the fraction of *all* its values in the bin."""
    for name, values in hists.items():
        ax.hist(values, bins=edges, weights=np.full(values.size, 1.0 / sizes[name]),
                color=_COLORS[name], alpha=0.45, label=labels[name])  # fmt: skip


def _draw_stems(
    ax: Axes, nodes: np.ndarray, weights: np.ndarray, color: str, bottom: float
) -> StemContainer:
    stems = ax.stem(nodes, weights, linefmt=color, basefmt=" ", bottom=bottom)
    stems.markerline.set_color(color)
    stems.markerline.set_markersize(4)
    return stems


def _add_zoom_panel(
    fig: Figure,
    main: Axes,
    bulk: Bulk,
    measure: tuple[np.ndarray, np.ndarray],
    hists: dict[str, np.ndarray],
    labels: dict,
    style: tuple[str, float, int],
) -> Axes:
    """Mark the bulk on ``main``; below it, the bulk's stems and bars on their own linear axis."""
    (nodes, weights), (color, bottom, bins) = measure, style
    lo, hi = zoom_limits(bulk.low, bulk.high)
    for x, mark in zip((lo, hi), ("bulk (zoomed below)", "_"), strict=True):
        main.axvline(x, color="0.45", ls=":", lw=1, label=mark)
    ax = fig.add_subplot(2, 1, 2, sharey=main)
    inside = {k: v[(v >= lo) & (v <= hi)] for k, v in hists.items()}
    edges = np.linspace(lo, hi, bins + 1)
    _draw_histograms(ax, inside, edges, labels, {k: v.size for k, v in hists.items()})
    _draw_stems(ax, nodes[bulk.mask], weights[bulk.mask], color, bottom)
    ax.set_xlim(lo, hi)
    ax.set_xlabel(r"eigenvalue $\lambda$ (bulk, linear scale)")
    ax.set_ylabel(main.get_ylabel())
    k, mass = int(bulk.mask.sum()), float(weights[bulk.mask].sum())
    ax.set_title(f"bulk: {k} of {nodes.size} Ritz values in [{bulk.low:.3g}, {bulk.high:.3g}],"
                 f" mass {mass:.3f}", fontsize="small")  # fmt: skip
    return ax


def _legend_marking_negative(ax: Axes, negative: str | None) -> None:
    """The legend of ``ax``, with the shaded side theta < 0 and its negative mass if any."""
    handles, names = ax.get_legend_handles_labels()
    patch = mark_negative(ax, negative)
    if patch is not None:
        handles, names = [*handles, patch], [*names, patch.get_label()]
    ax.legend(handles, names, frameon=False, fontsize="small")


def plot_spectrum(
    spectrum: Any,
    *,
    exact: Any = None,
    diagonal: Any = None,
    diagonal_label: str | None = None,
    bins: int = 50,
    log: bool = True,
    title: str | None = None,
    zoom: bool | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    r"""Stem plot of a discrete spectral measure, as in the paper's figures 2-8.

    Each Ritz value :math:`\theta_i` gets a stem of height :math:`w_i`; the stems sum to 1.
    The mass axis is logarithmic by default: the spike at zero typically holds most of the
    mass, and the outliers that matter have weights orders of magnitude smaller. Hessian stems
    are red, GGN stems purple, and the default title names curvature, model, data, steps and
    (for a spectrum saved during training) the epoch.
    Optional histograms of the exact eigenvalues and of a diagonal approximation share the
    same bins, each bar the *fraction* of values in its bin (the bars also sum to 1), so that
    the three are comparable on one axis (figures 5-7).

    The outliers set the eigenvalue scale, so the many stems of the bulk merge into one block.
    A companion panel below (the figure's second axes) shows the bulk alone on its own linear
    eigenvalue axis: the bulk is that of :meth:`~diagnostics.analysis.Spectrum.split_outliers`
    (``bulk_min``/``bulk_max`` of the summary), and with ``zoom=None`` the panel is drawn when
    the bulk is crowded: at least 10 stems, at least 4 times narrower than the whole measure.
    The main panel marks the bulk with dotted lines. The side :math:`\theta < 0` is shaded in
    both panels and the legend gives the negative mass :math:`\sum_{\theta_i < 0} w_i`
    (nothing is shaded when no Ritz value is negative, as for a GGN).

    Args:
        spectrum: A :class:`~diagnostics.Spectrum` (``ritz_values``, ``weights``), a
            :class:`~lanczos_optim.SpectralDensity` (``nodes``, ``weights``) or a pair
            ``(nodes, weights)``; weights are divided by their sum.
        exact: Optional exact eigenvalues.
        diagonal: Optional diagonal entries (e.g. a BackPACK diagonal GGN).
        diagonal_label: Which diagonal it is, for legend and title: a kind of
            :func:`~diagnostics.diagonal_approximations` (``"diag_ggn_exact"``, ...)
            or any text.
        bins: Number of histogram bins (in each panel).
        log: Logarithmic mass axis (default; ``False`` for a linear one).
        title: Title; ``None`` builds one with :func:`spectrum_title`, ``""`` leaves none.
        zoom: Companion panel of the bulk: ``None`` (default) when the bulk is crowded,
            ``True`` always, ``False`` never.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure: ``axes[0]`` the whole measure, ``axes[1]`` (if drawn) the bulk.

    Raises:
        ValueError: On empty or non-finite values, negative weights, ``bins < 1`` or a bad
            path suffix.

    Example:
        >>> fig = plot_spectrum(([0.0, 1.0, 5.0], [0.5, 0.3, 0.2]), exact=[0.0, 0.1, 1.1, 5.0])
        >>> stems = fig.axes[0].containers[-1]
        >>> float(stems.markerline.get_ydata().sum()), len(fig.axes)
        (1.0, 1)
    """
    target = check_path(path)
    nodes, weights = _measure(spectrum)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}.")
    if zoom is not None and not isinstance(zoom, bool):
        raise ValueError(f"zoom must be True, False or None; got {zoom!r}.")
    hists = {
        k: _as_1d(k, v) for k, v in (("exact", exact), ("diagonal", diagonal)) if v is not None
    }
    bulk = bulk_of(spectrum, nodes, weights)
    zoomed = bulk.crowded if zoom is None else zoom
    fig = new_figure(6.4, 7.4 if zoomed else 4.2)
    ax = fig.add_subplot(2, 1, 1) if zoomed else fig.add_subplot()
    edges = np.histogram_bin_edges(np.concatenate([nodes, *hists.values()]), bins=bins)
    diag_name = DIAGONALS.get(diagonal_label, diagonal_label) if diagonal_label else "diagonal"
    labels = {"exact": "eigenvalues (histogram)", "diagonal": f"{diag_name} (histogram)"}
    _draw_histograms(ax, hists, edges, labels, {k: v.size for k, v in hists.items()})
    meta = getattr(spectrum, "meta", None) or {}
    name, color = _CURVATURE.get(meta.get("curvature"), ("", _COLORS["lanczos"]))
    bottom = max(weights.min() / 10, 1e-16) if log else 0.0
    stems = _draw_stems(ax, nodes, weights, color, bottom)
    stems.set_label(f"Lanczos{' ' + name if name else ''} ({nodes.size} Ritz values)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(r"eigenvalue $\lambda$")
    ax.set_ylabel("spectral mass" + (" (log scale)" if log else ""))
    negative = negative_mass_label(spectrum, nodes, weights)
    if zoomed:
        style = (color, bottom, bins)
        inset = _add_zoom_panel(fig, ax, bulk, (nodes, weights), hists, labels, style)
        mark_negative(inset, negative)
    _legend_marking_negative(ax, negative)
    if title is None:
        title = spectrum_title(spectrum, diagonal_label if diagonal is not None else None)
    if title:
        ax.set_title(title, fontsize="medium")
    return finish(fig, target)


def plot_density(
    grid: Any,
    density: Any,
    *,
    exact: Any = None,
    bins: int = 50,
    label: str = "density",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """A spectral density on a grid, optionally over a density histogram of exact eigenvalues.

    Args:
        grid: Points :math:`x`.
        density: Density values at ``grid`` (same length).
        exact: Optional eigenvalues, drawn as a histogram of area 1.
        bins: Number of histogram bins.
        label: Legend label of the curve.
        title: Optional title.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure.

    Raises:
        ValueError: On lengths that differ, empty or non-finite values, or a bad path suffix.

    Example:
        >>> import numpy as np
        >>> x = np.linspace(-2, 2, 101)
        >>> fig = plot_density(x, np.sqrt(np.clip(4 - x**2, 0, None)) / (2 * np.pi))
        >>> fig.axes[0].lines[0].get_xydata().shape
        (101, 2)
    """
    target = check_path(path)
    x, y = _as_1d("grid", grid), _as_1d("density", density)
    if x.shape != y.shape:
        raise ValueError(f"grid has {x.size} points but density has {y.size}.")
    fig = new_figure()
    ax = fig.add_subplot()
    if exact is not None:
        ax.hist(_as_1d("exact", exact), bins=bins, density=True, color=_COLORS["exact"],
                alpha=0.45, label="eigenvalues (histogram)")  # fmt: skip
    ax.plot(x, y, color=_COLORS["lanczos"], label=label)
    ax.set_xlabel(r"eigenvalue $\lambda$")
    ax.set_ylabel("density")
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    return finish(fig, target)

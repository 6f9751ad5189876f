"""Figures of spectra, densities, loss landscapes and training curves (matplotlib, Agg).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot's global state
and, given ``path`` (``.png`` or ``.pdf``), also saves it atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diagnostics._plot_base import check_path, finish, new_figure
from diagnostics._plot_landscape import plot_landscape, plot_landscape_2d

__all__ = [
    "plot_runs",
    "rows_to_history",
    "plot_density",
    "plot_landscape",
    "plot_landscape_2d",
    "plot_spectrum",
    "plot_training_curves",
]

_COLORS = {"lanczos": "tab:red", "exact": "tab:blue", "diagonal": "goldenrod"}


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


def plot_spectrum(
    spectrum: Any,
    *,
    exact: Any = None,
    diagonal: Any = None,
    bins: int = 50,
    log: bool = False,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    r"""Stem plot of a discrete spectral measure, as in the paper's figures 2-8.

    Each Ritz value :math:`\theta_i` gets a stem of height :math:`w_i`; the stems sum to 1.
    Optional histograms of the exact eigenvalues and of a diagonal approximation share the
    same bins, each bar the *fraction* of values in its bin (the bars also sum to 1), so that
    the three are comparable on one axis (figures 5-7).

    Args:
        spectrum: A :class:`~diagnostics.spectrum.Spectrum` (``ritz_values``, ``weights``), a
            :class:`~lanczos_optim.SpectralDensity` (``nodes``, ``weights``) or a pair
            ``(nodes, weights)``; weights are divided by their sum.
        exact: Optional exact eigenvalues.
        diagonal: Optional diagonal entries (e.g. a BackPACK diagonal GGN).
        bins: Number of histogram bins.
        log: Logarithmic mass axis (to see outliers next to a spike at zero).
        title: Optional title.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure.

    Raises:
        ValueError: On empty or non-finite values, negative weights, ``bins < 1`` or a bad
            path suffix.

    Example:
        >>> fig = plot_spectrum(([0.0, 1.0, 5.0], [0.5, 0.3, 0.2]), exact=[0.0, 0.1, 1.1, 5.0])
        >>> stems = fig.axes[0].containers[-1]
        >>> float(stems.markerline.get_ydata().sum())
        1.0
    """
    target = check_path(path)
    nodes, weights = _measure(spectrum)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}.")
    hists = {
        name: _as_1d(name, values)
        for name, values in (("exact", exact), ("diagonal", diagonal))
        if values is not None
    }
    fig = new_figure()
    ax = fig.add_subplot()
    edges = np.histogram_bin_edges(np.concatenate([nodes, *hists.values()]), bins=bins)
    labels = {"exact": "eigenvalues (histogram)", "diagonal": "diagonal (histogram)"}
    for name, values in hists.items():
        ax.hist(
            values,
            bins=edges,
            weights=np.full(values.size, 1.0 / values.size),
            color=_COLORS[name],
            alpha=0.45,
            label=labels[name],
        )
    bottom = weights.min() / 10 if log else 0.0
    stems = ax.stem(nodes, weights, linefmt=_COLORS["lanczos"], basefmt=" ", bottom=bottom)
    stems.markerline.set_color(_COLORS["lanczos"])
    stems.markerline.set_markersize(4)
    stems.set_label(f"Lanczos ({nodes.size} Ritz values)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(r"eigenvalue $\lambda$")
    ax.set_ylabel("spectral mass")
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
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


_SPLIT = re.compile(r"^(train|test|val|valid|validation)_(.+)$")


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    *,
    x: str | None = None,
    logy: bool = False,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Training curves, one panel per metric; ``train_loss`` and ``test_loss`` share a panel.

    Keys ``<split>_<metric>`` (split: train, test, val, valid, validation) are grouped by
    metric; any other key gets its own panel.

    Args:
        history: Metric name -> values per epoch or step (NaN for gaps).
        x: Key of the x values; default ``"epoch"`` or ``"step"`` if present, else 1, 2, ...
        logy: Logarithmic y axes for panels whose metric contains ``"loss"``.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure.

    Raises:
        ValueError: On an empty history, an unknown ``x`` or series whose length differs from
            the x values.

    Example:
        >>> fig = plot_training_curves({"epoch": [1, 2], "train_loss": [1.0, 0.5],
        ...                             "test_loss": [1.1, 0.7]})
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['train_loss', 'test_loss']
    """
    target = check_path(path)
    if x is None:
        x = next((k for k in ("epoch", "step") if k in history), None)
    elif x not in history:
        raise ValueError(f"x={x!r} is not a key of history; keys: {sorted(history)}.")
    series = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in history.items() if k != x}
    if not series:
        raise ValueError("history has no series to plot.")
    xs = None if x is None else np.asarray(history[x], dtype=np.float64)
    groups: dict[str, list[str]] = {}
    for key, values in series.items():
        if xs is not None and values.shape != xs.shape:
            raise ValueError(f"history[{key!r}] has {values.size} values but {x!r} has {xs.size}.")
        match = _SPLIT.match(key)
        groups.setdefault(match.group(2) if match else key, []).append(key)
    cols = min(len(groups), 3)
    rows = -(-len(groups) // cols)
    fig = new_figure(4.0 * cols, 3.0 * rows)
    for n, (metric, keys) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, n + 1)
        for key in keys:
            xv = xs if xs is not None else np.arange(1, series[key].size + 1)
            ax.plot(xv, series[key], marker="o" if xv.size < 30 else None, ms=3, label=key)
        if logy and "loss" in metric:
            ax.set_yscale("log")
        ax.set_title(metric)
        ax.set_xlabel(x or "index")
        ax.legend(frameon=False, fontsize="small")
    return finish(fig, target)


def rows_to_history(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Turn per-epoch rows (``stats.jsonl``, ``TrainResult.history``) into metric -> values.

    Missing values and ``None`` become NaN; non-numeric entries are dropped.

    Example:
        >>> rows_to_history([{"epoch": 1, "test_acc": None}, {"epoch": 2, "test_acc": 0.5}])
        {'epoch': [1.0, 2.0], 'test_acc': [nan, 0.5]}
    """
    keys = [k for k in dict.fromkeys(k for row in rows for k in row)]
    out: dict[str, list[float]] = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        if all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
        ):
            out[key] = [float("nan") if v is None else float(v) for v in values]
    return out


def plot_runs(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    metrics: Sequence[str] = ("train_loss", "test_loss", "test_acc"),
    x: str = "epoch",
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Compare training runs: one panel per metric, one line per run (e.g. SGD vs LanczosNewton).

    Args:
        runs: Run label -> per-epoch rows (``TrainResult.history`` or ``stats.jsonl`` rows).
        metrics: Row keys to plot, one panel each.
        x: Row key of the x axis.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure.

    Raises:
        ValueError: On no runs, or a metric no run has.

    Example:
        >>> fig = plot_runs({"a": [{"epoch": 1, "train_loss": 1.0}]}, metrics=["train_loss"])
        >>> fig.axes[0].lines[0].get_label()
        'a'
    """
    target = check_path(path)
    if not runs:
        raise ValueError("runs is empty; give at least one run's rows.")
    histories = {label: rows_to_history(rows) for label, rows in runs.items()}
    for metric in metrics:
        if not any(metric in h for h in histories.values()):
            raise ValueError(
                f"No run has metric {metric!r}; "
                f"available: {sorted(set().union(*histories.values()))}."
            )
    fig = new_figure(4.0 * len(metrics), 3.2)
    for n, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), n + 1)
        for label, hist in histories.items():
            if metric in hist:
                xs = hist.get(x, list(range(1, len(hist[metric]) + 1)))
                ax.plot(xs, hist[metric], marker="o", ms=3, label=label)
        ax.set_title(metric)
        ax.set_xlabel(x)
        ax.legend(frameon=False, fontsize="small")
    return finish(fig, target)

"""Figures of training runs: per-run curves and several runs overlaid (e.g. SGD vs Newton)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diagnostics.plots._base import check_path, finish, new_figure

__all__ = ["plot_runs", "plot_training_curves", "rows_to_history"]

_SPLIT = re.compile(r"^(train|test|val|valid|validation)_(.+)$")
_WORDS = {"acc": "accuracy", "lr": "learning rate", "time": "seconds per epoch"}
_COUNTS = ("epoch", "step")


def _readable(key: str) -> str:
    """``"test_acc"`` -> ``"test accuracy"``, ``"lr"`` -> ``"learning rate"``."""
    match = _SPLIT.match(key)
    if match:
        return f"{match.group(1)} {_WORDS.get(match.group(2), match.group(2))}"
    return _WORDS.get(key, key.replace("_", " "))


def _label_x(ax: Axes, x: str | None) -> None:
    ax.set_xlabel(x or "index")
    if x is None or x in _COUNTS:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    *,
    x: str | None = None,
    logy: bool = False,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Training curves, one panel per metric; ``train_loss`` and ``test_loss`` share a panel.

    Keys ``<split>_<metric>`` (split: train, test, val, valid, validation) are grouped by
    metric; any other key gets its own panel. Panels are titled in words (``acc`` ->
    "accuracy", ``lr`` -> "learning rate", ``time`` -> "seconds per epoch"); epochs and steps
    get integer ticks.

    Args:
        history: Metric name -> values per epoch or step (NaN for gaps).
        x: Key of the x values; default ``"epoch"`` or ``"step"`` if present, else 1, 2, ...
        logy: Logarithmic y axes for panels whose metric contains ``"loss"``.
        title: Optional figure title.
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
        x = next((k for k in _COUNTS if k in history), None)
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
    fig = new_figure(4.0 * cols, 3.0 * rows + (0.3 if title else 0.0))
    for n, (metric, keys) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, n + 1)
        for key in keys:
            xv = xs if xs is not None else np.arange(1, series[key].size + 1)
            ax.plot(xv, series[key], marker="o" if xv.size < 30 else None, ms=3, label=key)
        if logy and "loss" in metric:
            ax.set_yscale("log")
        ax.set_title(_readable(metric))
        _label_x(ax, x)
        ax.legend(frameon=False, fontsize="small")
    if title:
        fig.suptitle(title)
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
    wall_clock: bool = True,
    logy: bool = False,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Compare training runs: one panel per metric, one line per run (e.g. SGD vs LanczosNewton).

    With ``wall_clock`` and rows that have ``time`` (seconds per epoch), a last panel shows
    the first metric against the cumulative wall-clock time, where a run whose epochs cost more
    (a Newton method) is compared at equal cost. Epochs get integer ticks.

    Args:
        runs: Run label -> per-epoch rows (``TrainResult.history`` or ``stats.jsonl`` rows).
        metrics: Row keys to plot, one panel each (a metric no run has is skipped, unless no
            metric is found at all).
        x: Row key of the x axis.
        wall_clock: Add the panel of the first metric against cumulative seconds.
        logy: Logarithmic y axes for the loss panels.
        title: Optional figure title.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure.

    Raises:
        ValueError: On no runs, or when no run has any of ``metrics``.

    Example:
        >>> fig = plot_runs({"a": [{"epoch": 1, "train_loss": 1.0}]}, metrics=["train_loss"])
        >>> fig.axes[0].lines[0].get_label()
        'a'
    """
    target = check_path(path)
    if not runs:
        raise ValueError("runs is empty; give at least one run's rows.")
    histories = {label: rows_to_history(rows) for label, rows in runs.items()}
    found = [m for m in metrics if any(m in h for h in histories.values())]
    if not found:
        raise ValueError(
            f"No run has any of the metrics {list(metrics)}; "
            f"available: {sorted(set().union(*histories.values()))}."
        )
    timed = wall_clock and any("time" in h and found[0] in h for h in histories.values())
    panels = [(m, x) for m in found] + ([(found[0], "time")] if timed else [])
    fig = new_figure(4.0 * len(panels), 3.4 if title else 3.2)
    for n, (metric, xkey) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        for label, hist in histories.items():
            if metric not in hist or (xkey == "time" and "time" not in hist):
                continue
            ys = hist[metric]
            if xkey == "time":
                xs = np.cumsum(np.nan_to_num(hist["time"]))
            else:
                xs = hist.get(xkey, list(range(1, len(ys) + 1)))
            ax.plot(xs, ys, marker="o" if len(ys) < 30 else None, ms=3, label=label)
        if logy and "loss" in metric:
            ax.set_yscale("log")
        if xkey == "time":
            ax.set_title(f"{_readable(metric)} vs wall-clock time")
            ax.set_xlabel("wall-clock time (s)")
        else:
            ax.set_title(_readable(metric))
            _label_x(ax, xkey)
        ax.legend(frameon=False, fontsize="small")
    if title:
        fig.suptitle(title)
    return finish(fig, target)

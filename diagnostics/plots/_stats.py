"""Figure of the mini-batch statistics written by ``lanczos-optim stats``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diagnostics.plots._base import check_path, finish, new_figure

__all__ = ["plot_statistics"]

# quantity -> (key of the squared mean, key of the variance)
_PAIRS = {
    "loss": ("loss_mean", "loss_var"),
    "gradient": ("grad_mean_sq_norm", "grad_var"),
    "Hessian-vector product": ("hessian_mean_sq_norm", "hessian_var"),
    "GGN-vector product": ("ggn_mean_sq_norm", "ggn_var"),
}


def plot_statistics(
    stats: Mapping[str, Any],
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    r"""Signal against noise of the mini-batch estimates: :math:`\|\bar x\|^2` and the variance.

    One pair of horizontal bars per quantity (loss, gradient, Hessian- and GGN-vector
    products): the squared norm of the full-data mean and the variance over batches (see
    :func:`~diagnostics.loss_statistics`), on a logarithmic axis. Where the variance
    bar is longer than the mean bar, one batch's estimate is mostly noise.

    Args:
        stats: ``LossStatistics.as_dict()`` or the JSON written by ``lanczos-optim stats``.
        title: Figure title (default: a description with the sample and batch counts).
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure; its axes hold the bars in the order mean, variance per quantity.

    Raises:
        ValueError: If ``stats`` holds none of the statistics.

    Example:
        >>> fig = plot_statistics({"loss_mean": 2.0, "loss_var": 0.1})
        >>> [float(round(b.get_width(), 3)) for b in fig.axes[0].patches]
        [4.0, 0.1]
    """
    target = check_path(path)
    rows = []
    for name, (mean_key, var_key) in _PAIRS.items():
        if stats.get(mean_key) is None or stats.get(var_key) is None:
            continue
        mean = float(stats[mean_key])
        rows.append((name, mean**2 if mean_key == "loss_mean" else mean, float(stats[var_key])))
    if not rows:
        raise ValueError(
            "stats holds none of the statistics "
            f"{sorted(k for pair in _PAIRS.values() for k in pair)}."
        )
    fig = new_figure(6.4, 1.2 + 0.7 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    ax.barh(y + 0.18, [r[1] for r in rows], height=0.35, color="tab:blue",
            label=r"$\|$full-data mean$\|^2$ (signal)")  # fmt: skip
    ax.barh(y - 0.18, [r[2] for r in rows], height=0.35, color="tab:orange",
            label="variance over batches (noise)")  # fmt: skip
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("value (log scale)")
    ax.legend(frameon=False, fontsize="small")
    if title is None:
        n, b = stats.get("num_samples"), stats.get("num_batches")
        title = "Mini-batch statistics"
        if n and b:
            title += f" ({int(n)} samples, {int(b)} batches)"
    if title:
        ax.set_title(title, fontsize="medium")
    return finish(fig, target)

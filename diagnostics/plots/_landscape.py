"""Figures of a :class:`~diagnostics.Landscape`: curves per direction and a 2-D plane."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from diagnostics.analysis import Landscape
from diagnostics.plots._base import check_path, finish, new_figure

__all__ = ["direction_style", "landscape_title", "plot_landscape", "plot_landscape_2d"]

#: Line style and marker of direction ``i``: ``[i % 4]`` and ``[i % 8]``, distinct pairs for
#: up to 8 directions, so that directions with equal curves stay distinguishable.
LINESTYLES = ("-", "-.", ":", (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")

_PANELS = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "train_acc": "train accuracy",
    "test_acc": "test accuracy",
}


def landscape_title(landscape: Landscape) -> str:
    """A title naming the directions' curvature, model, data and checkpoint from ``meta``."""
    meta = landscape.meta
    spec = meta.get("spectrum") or {}
    prov = meta.get("provenance") or spec.get("provenance") or {}
    curvature = {"hessian": "Hessian", "ggn": "GGN"}.get(spec.get("curvature"), "")
    head = f"Loss along {curvature} Ritz vectors" if spec else "Loss along directions"
    what = " on ".join(p for p in (prov.get("model"), prov.get("dataset")) if p)
    parts = [what] if what else []
    if prov.get("checkpoint"):
        parts.append(os.path.basename(prov["checkpoint"]))
    return head.replace("  ", " ") + (": " + ", ".join(parts) if parts else "")


def direction_style(i: int) -> dict[str, Any]:
    """Keyword arguments of ``Axes.plot`` for direction ``i``: colour, line style, marker, size.

    Lines drawn later are thinner with smaller hollow markers, so that where the curves of
    several directions coincide each of them still shows (a wide line under a narrow one,
    nested markers of different shapes).

    Example:
        >>> [(s["ls"], s["marker"], s["lw"]) for s in map(direction_style, range(3))]
        [('-', 'o', 2.6), ('-.', 's', 2.1), (':', '^', 1.6)]
    """
    return {
        "color": f"C{i % 10}",
        "ls": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
        "lw": max(2.6 - 0.5 * i, 0.8),
        "ms": max(7.0 - 1.2 * i, 2.5),
        "mfc": "none",
        "mew": 1.0,
        "zorder": 2 + 0.01 * i,
    }


def _check_landscape(landscape: object) -> Landscape:
    if not isinstance(landscape, Landscape):
        raise TypeError(f"landscape must be a Landscape; got {type(landscape).__name__}.")
    return landscape


def plot_landscape(
    landscape: Landscape,
    *,
    quadratic: bool = True,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    r"""Loss and accuracy along each direction, with the quadratic model (paper, figures 9-12).

    Panels: train loss, test loss (with test data), train and test accuracy (for
    classification). Each direction has its own colour, line style and marker
    (:func:`direction_style`), the later ones thinner, so that directions whose curves
    coincide (flat directions of a small Ritz value, typically) all stay visible; the legend
    names each. The dashed line of the same colour on the train-loss panel is the quadratic
    model :math:`L_0 + t\,g^\top v + \frac12 t^2 v^\top C v`.
    The loss axes are scaled to the measured losses, so a quadratic that runs away is clipped.

    Args:
        landscape: A :class:`~diagnostics.analysis.landscape.Landscape`.
        quadratic: Draw the quadratic model.
        title: Figure title; ``None`` names curvature, model, data and checkpoint from the
            landscape's metadata (:func:`landscape_title`), ``""`` leaves none.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure. Each panel's lines carry the direction labels; the quadratic lines are
        labelled ``"_quadratic <label>"`` (hidden from the legend).

    Example:
        >>> import torch
        >>> from diagnostics.analysis import build_loss_landscape
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(2, 1).double()
        >>> x, y = torch.randn(16, 2).double(), torch.randn(16, 1).double()
        >>> v = torch.eye(3, dtype=torch.float64)[:2]
        >>> ls = build_loss_landscape(
        ...     model, torch.nn.MSELoss(), (x, y), directions=list(v), n_points=5
        ... )
        >>> fig = plot_landscape(ls)
        >>> len(fig.axes[0].lines) >= 2  # a curve per direction (and its quadratic model)
        True
    """
    ls = _check_landscape(landscape)
    target = check_path(path)
    keys = ["train_loss"] + (["test_loss"] if ls.has_test else [])
    if ls.is_classification:
        keys += ["train_acc"] + (["test_acc"] if ls.has_test else [])
    cols = 2 if ls.has_test else 1
    rows = len(keys) // cols
    fig = new_figure(4.6 * cols, 3.4 * rows)
    for n, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, n + 1)
        values = getattr(ls, key)
        for i, label in enumerate(ls.labels):
            style = direction_style(i)
            ax.plot(ls.t, values[i], label=label, **style)
            if quadratic and key == "train_loss":
                ax.plot(ls.t, ls.quadratic[i], color=style["color"], ls="--", lw=1,
                        label=f"_quadratic {label}")  # fmt: skip
        if key.endswith("loss"):
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-12)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(_PANELS[key])
        ax.set_xlabel(r"step $t$ along $v$")
        ax.axvline(0.0, color="0.7", lw=0.6, zorder=0)
    handles, names = fig.axes[0].get_legend_handles_labels()
    if quadratic:
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1))
        names.append("quadratic model")
    fig.axes[0].legend(handles, names, frameon=False, fontsize="small", title="direction",
                       title_fontsize="small")  # fmt: skip
    title = landscape_title(ls) if title is None else title
    if title:
        fig.suptitle(title)
    return finish(fig, target)


def plot_landscape_2d(
    landscape: Landscape,
    *,
    which: str = "train_loss",
    levels: int = 12,
    quadratic: bool = True,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    r"""Colour map and contours of the 2-D plane :math:`w + a v_i + b v_j`.

    Args:
        landscape: A :class:`~diagnostics.analysis.landscape.Landscape` built with ``plane``.
        which: ``"train_loss"``, ``"test_loss"``, ``"train_acc"`` or ``"test_acc"``.
        levels: Number of contour levels.
        quadratic: For a loss, overlay dashed contours of the quadratic model at the same
            levels.
        path: Optional ``.png``/``.pdf`` file to save to.

    Returns:
        The figure; its first axes holds a ``QuadMesh`` whose array is the plotted grid
        (rows: :math:`a` along :math:`v_i`, columns: :math:`b` along :math:`v_j`).

    Raises:
        ValueError: If the landscape has no plane, ``which`` is unknown, or it asks for test
            values the landscape does not have.

    Example:
        >>> import torch
        >>> from diagnostics.analysis import build_loss_landscape
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(2, 1).double()
        >>> x, y = torch.randn(16, 2).double(), torch.randn(16, 1).double()
        >>> v = list(torch.eye(3, dtype=torch.float64)[:2])
        >>> ls = build_loss_landscape(
        ...     model, torch.nn.MSELoss(), (x, y), directions=v, n_points=5, plane=True
        ... )
        >>> ls.plane_train_loss.shape
        (5, 5)
        >>> fig = plot_landscape_2d(ls)
        >>> len(fig.axes) >= 1
        True
    """
    ls = _check_landscape(landscape)
    target = check_path(path)
    if which not in _PANELS:
        raise ValueError(f"which must be one of {tuple(_PANELS)}; got {which!r}.")
    if not ls.has_plane:
        raise ValueError("This landscape has no plane; build it with plane=True or plane=(i, j).")
    if which.startswith("test") and not ls.has_test:
        raise ValueError(f"which={which!r} needs test data; this landscape has none.")
    grid = getattr(ls, f"plane_{which}")
    i, j = ls.meta["plane"]
    fig = new_figure(5.6, 4.6)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(ls.t, ls.t, grid, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=_PANELS[which])
    finite = grid[np.isfinite(grid)]
    if finite.size and finite.max() > finite.min():
        edges = np.linspace(finite.min(), finite.max(), levels + 2)[1:-1]
        ax.contour(ls.t, ls.t, grid, levels=edges, colors="white", linewidths=0.7)
        if quadratic and which == "train_loss":
            ax.contour(ls.t, ls.t, ls.plane_quadratic, levels=edges, colors="red",
                       linewidths=0.8, linestyles="--")  # fmt: skip
    ax.plot([0.0], [0.0], marker="+", color="red", ms=10)
    ax.set_xlabel(f"b along {ls.labels[j]}")
    ax.set_ylabel(f"a along {ls.labels[i]}")
    ax.set_title(_PANELS[which] + (" (dashed: quadratic model)" if quadratic and
                 which == "train_loss" else ""))  # fmt: skip
    return finish(fig, target)

"""Loss and accuracy along curvature eigenvectors, next to the local quadratic model."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lanczos_optim
from diagnostics._progress import progress_bar
from diagnostics.analysis._landscape_directions import (
    Directions,
    resolve_directions,
    select_directions,
)
from diagnostics.analysis._landscape_eval import (
    evaluate,
    filter_normalize,
    preserved_state,
    set_point,
)
from diagnostics.analysis._landscape_result import Landscape
from diagnostics.analysis.spectrum import Spectrum
from lanczos_optim import (
    CurvatureOperator,
    check_curvature,
    check_data,
    curvature_mode,
    curvature_operator,
    unflatten_vector,
)

__all__ = ["Landscape", "build_loss_landscape", "select_directions"]


def _check_args(n_points: object, dist: object, curvature: object, plane: object) -> tuple:
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2; got {n_points!r}.")
    if isinstance(dist, bool) or not isinstance(dist, (int, float)) or not 0 < dist < math.inf:
        raise ValueError(f"dist must be a finite number > 0; got {dist!r}.")
    if curvature is not None:
        check_curvature(curvature)
    pair = (0, 1) if plane is True else plane
    if pair is not False and not (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pair)
        and pair[0] != pair[1]
    ):
        raise ValueError(
            f"plane must be a bool or a pair of distinct direction indices; got {plane!r}."
        )
    return int(n_points), float(dist), (None if pair is False else (int(pair[0]), int(pair[1])))


def build_loss_landscape(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: object,
    test_data: object | None = None,
    *,
    directions: Spectrum | Sequence[Tensor] | Tensor,
    indices: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    dist: float = 1.0,
    n_points: int = 21,
    bn_mode: str = "eval",
    filter_normalize: bool = False,
    plane: bool | tuple[int, int] = False,
    curvature: str | None = None,
    params: Iterable[Tensor] | None = None,
    progress: bool = False,
) -> Landscape:
    r"""Evaluate loss and accuracy at :math:`w + t v` along directions, beside the quadratic model.

    For each direction :math:`v` and :math:`t` in ``linspace(-dist, dist, n_points)`` the
    training (and test) loss and accuracy are recorded, next to the second-order prediction

    .. math::
        q(t) = L_0 + t\, g^\top v + \tfrac12 t^2\, v^\top C v ,

    with :math:`L_0, g` the training loss and gradient at :math:`w` and :math:`C` the curvature.
    For Ritz vectors (unit :math:`u_i = V s_i`) :math:`u_i^\top C u_i = \theta_i` exactly, so the
    Ritz value is used; otherwise (tensors, filter normalisation, or ``curvature`` given)
    :math:`v^\top C v` comes from one curvature product per direction on ``train_data``. Where
    :math:`q` and the loss part shows where the quadratic approximation breaks down (paper,
    section 9). The model's parameters, buffers and train/eval flags are restored bitwise
    afterwards, also on an exception or ``KeyboardInterrupt``.

    Args:
        model: The network.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar.
        train_data: One ``(inputs, targets)`` batch or a re-iterable of batches.
        test_data: Optional test batches, evaluated at the same points.
        directions: A :class:`~diagnostics.Spectrum` with Ritz vectors, a list of flat
            ``[P]`` tensors, or a ``[P, k]`` tensor. Tensors are used as given (not normalised).
        indices: With a Spectrum, the Ritz-vector columns to use (default:
            :func:`select_directions` with its defaults: ranks 0, 1, 2, 5 from top and bottom).
        labels: Optional legend label per direction.
        dist: Largest :math:`|t|`, ``> 0``.
        n_points: Number of steps :math:`t`, ``>= 2`` (odd values include :math:`t = 0`).
        bn_mode: ``"eval"`` (BatchNorm running statistics) or ``"train"`` (batch statistics)
            for every evaluation and product; the buffers are never changed.
        filter_normalize: Rescale each direction filter-wise to the weights (Li et al., 2018;
            see :func:`~diagnostics.analysis._landscape_eval.filter_normalize`).
        plane: Also evaluate the 2-D grid :math:`w + a v_i + b v_j`, :math:`a, b` over the
            same steps: ``True`` for the first two directions, or a pair ``(i, j)``.
        curvature: ``None`` (Ritz values when possible, else the Hessian), ``"hessian"`` or
            ``"ggn"``: the :math:`C` of the quadratic model.
        params: Parameters to perturb (default: all with ``requires_grad``), in the order of the
            directions' entries.
        progress: Show a progress bar of the points evaluated on stderr (only when it is a
            terminal).

    Returns:
        A :class:`Landscape`.

    Raises:
        ValueError: On ``n_points < 2``, ``dist <= 0``, an unknown ``curvature``/``bn_mode``,
            empty data, directions of another parameter count, a Spectrum without Ritz vectors,
            zero directions or a bad ``plane``.
        TypeError: On directions or data of the wrong type.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(2, 1).double()
        >>> x, y = torch.randn(32, 2).double(), torch.randn(32, 1).double()
        >>> v = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        >>> ls = build_loss_landscape(model, torch.nn.MSELoss(), (x, y), directions=[v], n_points=5)
        >>> bool(abs(ls.train_loss - ls.quadratic).max() < 1e-12)  # least squares is quadratic
        True

    References:
        Granziol, Wan & Garipov, *Deep Curvature Suite*, section 9,
        https://arxiv.org/abs/1912.09656; Li et al., *Visualizing the Loss Landscape of Neural
        Nets*, 2018, https://arxiv.org/abs/1712.09913.
    """
    n_points, dist, pair = _check_args(n_points, dist, curvature, plane)
    op = curvature_operator(
        curvature or "hessian", model, loss_fn, train_data, params=params, bn_mode=bn_mode
    )
    test = None if test_data is None else check_data(test_data)
    dirs = resolve_directions(directions, indices, labels, op.shape[0], op.dtype, op.device)
    k = len(dirs.vectors)
    if pair is not None and max(pair) >= k:
        raise ValueError(f"plane indices {pair} out of range for {k} directions.")
    vectors = dirs.vectors
    if filter_normalize:
        vectors = [_filter_normalized(v, op.params, i) for i, v in enumerate(vectors)]
    use_ritz = isinstance(directions, Spectrum) and not filter_normalize and curvature is None
    t = np.linspace(-dist, dist, n_points)
    start = time.perf_counter()
    with preserved_state(model):
        model_terms = _quadratic_terms(op, vectors, dirs.ritz_values if use_ritz else None, pair)
        walk = _Walk(model, loss_fn, op, test, vectors, progress)
        total = k * n_points + (0 if pair is None else n_points**2)
        with walk.bar(total), curvature_mode(model, bn_mode):
            lines = np.array([[walk.at([(s, i)]) for s in t] for i in range(k)])
            grid = None
            if pair is not None:
                i, j = pair
                grid = np.array([[walk.at([(a, i), (b, j)]) for b in t] for a in t])
    arrays = _arrays(t, dirs, vectors, model_terms, lines, grid, pair)
    meta = {
        "dist": dist,
        "n_points": n_points,
        "bn_mode": bn_mode,
        "curvature_source": "ritz" if use_ritz else (curvature or "hessian"),
        "filter_normalize": bool(filter_normalize),
        "plane": None if pair is None else list(pair),
        "plane_cross_curvature": model_terms[3],
        "num_params": op.shape[0],
        "num_train_samples": walk.counts[0],
        "num_test_samples": walk.counts[1],
        "spectrum": directions.meta if isinstance(directions, Spectrum) else None,
        "wall_time_s": time.perf_counter() - start,
        "versions": {"torch": torch.__version__, "lanczos_optim": lanczos_optim.__version__},
    }
    return Landscape(arrays, meta)


def _quadratic_terms(
    op: CurvatureOperator,
    vectors: list[Tensor],
    ritz_values: np.ndarray | None,
    pair: tuple[int, int] | None,
) -> tuple[float, np.ndarray, np.ndarray, float]:
    r"""The quadratic model's terms along the directions :math:`v_i`.

    Returns the loss :math:`L_0`, the slopes :math:`g^\top v_i`, the curvatures
    :math:`v_i^\top C v_i` (the Ritz values when given) and the plane's cross term
    :math:`v_i^\top C v_j` (0 with Ritz values or without a plane).
    """
    loss0, grad = op.loss_and_gradient()
    basis = torch.stack(vectors, dim=1)
    slope = (grad @ basis).double().cpu().numpy()
    if ritz_values is not None:
        return loss0, slope, ritz_values.copy(), 0.0
    cv = op.matmat(basis)
    curv = (basis * cv).sum(dim=0).double().cpu().numpy()
    cross = 0.0 if pair is None else float(basis[:, pair[0]] @ cv[:, pair[1]])
    return loss0, slope, curv, cross


class _Walk:
    r"""Evaluations at :math:`w + \sum_i t_i v_i`: loss and accuracy on train (and test) data."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        op: CurvatureOperator,
        test: object | None,
        vectors: list[Tensor],
        progress: bool,
    ) -> None:
        self.model, self.loss_fn, self.op, self.test = model, loss_fn, op, test
        self.origin = [p.detach().clone() for p in op.params]
        self.pieces = [unflatten_vector(v, op.params) for v in vectors]
        self.counts = [0, 0]
        self._progress = progress
        self._bar: Any = None

    def bar(self, total: int) -> Any:
        """The progress bar of ``total`` points (a context manager)."""
        self._bar = progress_bar(total, "landscape", enabled=self._progress, unit="point")
        return self._bar

    def at(self, steps: list[tuple[float, int]]) -> tuple[float, float, float, float]:
        """Train loss, accuracy, test loss, accuracy at the steps ``(t, direction index)``."""
        op = self.op
        set_point(op.params, self.origin, [(t, self.pieces[i]) for t, i in steps])
        self._bar.update()
        loss, acc, self.counts[0] = evaluate(self.model, self.loss_fn, op.data, op.dtype, op.device)
        if self.test is None:
            return loss, acc, math.nan, math.nan
        test_loss, test_acc, self.counts[1] = evaluate(
            self.model, self.loss_fn, self.test, op.dtype, op.device
        )
        return loss, acc, test_loss, test_acc


def _arrays(
    t: np.ndarray,
    dirs: Directions,
    vectors: list[Tensor],
    model_terms: tuple[float, np.ndarray, np.ndarray, float],
    lines: np.ndarray,
    grid: np.ndarray | None,
    pair: tuple[int, int] | None,
) -> dict[str, np.ndarray]:
    """The landscape's arrays: the lines, their quadratic model, and the plane if evaluated."""
    loss0, slope, curv, cross = model_terms
    arrays = {
        "t": t,
        "labels": np.array(dirs.labels, dtype=str),
        "loss0": np.float64(loss0),
        "train_loss": lines[..., 0],
        "train_acc": lines[..., 1],
        "test_loss": lines[..., 2],
        "test_acc": lines[..., 3],
        "quadratic": loss0 + np.outer(slope, t) + 0.5 * np.outer(curv, t**2),
        "slope": slope,
        "curvature": curv,
        "ritz_value": dirs.ritz_values,
        "direction_index": dirs.indices.astype(np.float64),
        "direction_norm": np.array([float(torch.linalg.vector_norm(v)) for v in vectors]),
    }
    if grid is not None and pair is not None:
        i, j = pair
        a, b = t[:, None], t[None, :]
        second = a**2 * curv[i] + 2 * a * b * cross + b**2 * curv[j]
        arrays["plane_quadratic"] = loss0 + a * slope[i] + b * slope[j] + 0.5 * second
        for c, name in enumerate(("train_loss", "train_acc", "test_loss", "test_acc")):
            arrays[f"plane_{name}"] = grid[..., c]
    return arrays


def _filter_normalized(v: Tensor, params: Sequence[Tensor], i: int) -> Tensor:
    out = filter_normalize(v, params)
    if float(torch.linalg.vector_norm(out)) == 0.0:
        raise ValueError(
            f"Direction {i} is zero after filter normalisation: it moves only 1-D parameters "
            "(biases, normalisation weights), which filter normalisation leaves out."
        )
    return out

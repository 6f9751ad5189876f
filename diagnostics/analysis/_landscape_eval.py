"""Helpers of the loss landscape: state preservation, loss/accuracy passes, filter normalisation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lanczos_optim.flatten import unflatten_vector

__all__ = ["evaluate", "filter_normalize", "preserved_state", "set_point"]


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every parameter, buffer and train/eval flag of ``model`` bitwise on exit.

    Also on an exception or ``KeyboardInterrupt`` inside the block.
    """
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def set_point(params: Sequence[Tensor], origin: Sequence[Tensor], steps: Sequence[tuple]) -> None:
    """Set ``params`` to ``origin + sum_k t_k v_k`` for ``steps = [(t_k, v_k pieces), ...]``."""
    for i, (p, w) in enumerate(zip(params, origin, strict=True)):
        value = w.clone()
        for t, pieces in steps:
            value.add_(pieces[i], alpha=float(t))
        p.copy_(value)


def _is_classification(out: Tensor, y: object) -> bool:
    return (
        isinstance(y, Tensor)
        and not y.is_floating_point()
        and not y.is_complex()
        and y.dtype != torch.bool
        and out.ndim == y.ndim + 1
        and out.shape[0] == y.shape[0]
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Iterable[tuple[Tensor, Tensor]],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[float, float, int]:
    r"""Data-set loss and accuracy of ``model`` as it stands.

    The loss is weighted exactly like the curvature operators: :math:`\sum_b \frac{|b|}{N} L_b`
    for batch-mean losses, :math:`\sum_b L_b` for ``reduction="sum"``. The accuracy is the
    fraction of samples whose argmax over dimension 1 equals an integer target, and NaN as soon
    as one batch is not classification (float targets: regression).

    Returns:
        ``(loss, accuracy, N)``.

    Raises:
        ValueError: If ``data`` yields no samples.
    """
    sum_reduction = getattr(loss_fn, "reduction", "mean") == "sum"
    total, hits, count, classify = 0.0, 0, 0, True
    for i, batch in enumerate(data):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"Each batch must be an (inputs, targets) pair; batch {i} is not.")
        x, y = batch
        x = x.to(device)
        x = x.to(dtype) if x.is_floating_point() else x
        y = y.to(device) if isinstance(y, Tensor) else y
        if isinstance(y, Tensor) and y.is_floating_point():
            y = y.to(dtype)
        n = int(x.shape[0]) if x.ndim else 1
        if n == 0:
            continue
        out = model(x)
        loss = float(loss_fn(out, y))
        total += loss if sum_reduction else loss * n
        count += n
        if classify and _is_classification(out, y):
            hits += int((out.argmax(dim=1) == y).sum())
        else:
            classify = False
    if count == 0:
        raise ValueError("data is empty: it yielded no samples.")
    loss = total if sum_reduction else total / count
    return loss, (hits / count if classify else math.nan), count


def filter_normalize(direction: Tensor, params: Sequence[Tensor]) -> Tensor:
    r"""Filter-normalise a flat direction (Li et al., 2018).

    For every parameter tensor with at least two dimensions and every filter :math:`f` (a slice
    along dimension 0: an output unit or convolution filter),

    .. math::
        d_f \leftarrow \frac{d_f}{\|d_f\|} \, \|w_f\| ,

    so the step is scaled to the weights it moves. One-dimensional parameters (biases,
    normalisation weights) are left out: their part of the direction is set to zero, as in Li et
    al.'s default.

    Args:
        direction: Flat ``[P]`` direction.
        params: The parameters it applies to.

    Returns:
        A new flat direction.
    """
    out = direction.detach().clone()
    for d, w in zip(unflatten_vector(out, params), params, strict=True):
        if w.ndim <= 1:
            d.zero_()
            continue
        d2, w2 = d.reshape(d.shape[0], -1), w.detach().reshape(w.shape[0], -1)
        d2.mul_((w2.norm(dim=1) / (d2.norm(dim=1) + 1e-10))[:, None])
    return out

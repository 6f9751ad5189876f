r"""Per-epoch learning-rate schedules: the paper's linear one (its equation 11), cosine, constant.

Every schedule is a multiplicative factor of the initial learning rate :math:`\alpha_0`, wrapped
in a ``torch.optim.lr_scheduler.LambdaLR`` that is stepped once per epoch: during epoch
:math:`t = 0, 1, \dots` (counted from zero) the learning rate is :math:`\alpha_0 f(t)`. The
factors are small picklable objects whose attributes are plain numbers, so the scheduler's
``state_dict`` loads with ``torch.load(..., weights_only=True)``.

Example:
    >>> import torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = build_schedule("linear", opt, epochs=10, ratio=0.01)
    >>> [round(linear_factor(t, 10, 0.01), 4) for t in (0, 5, 7, 9)]
    [1.0, 1.0, 0.505, 0.01]
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "SCHEDULES",
    "build_schedule",
    "constant_schedule",
    "cosine_factor",
    "cosine_schedule",
    "linear_factor",
    "linear_schedule",
]

#: Names accepted by :func:`build_schedule`.
SCHEDULES = ("linear", "cosine", "constant")


def _check_epochs(epochs: int) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}.")
    return epochs


def _check_ratio(name: str, ratio: float) -> float:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not 0.0 <= ratio < math.inf
    ):
        raise ValueError(f"{name} must be a finite number >= 0; got {ratio!r}.")
    return float(ratio)


def linear_factor(epoch: int, epochs: int, ratio: float = 0.01) -> float:
    r"""The paper's linear schedule (equation 11) as a factor of :math:`\alpha_0`.

    .. math::

        \frac{\alpha_t}{\alpha_0} = \begin{cases}
            1, & t/T \le 0.5, \\
            1 - (1 - r)\,\dfrac{t/T - 0.5}{0.4}, & 0.5 < t/T \le 0.9, \\
            r, & \text{otherwise,}
        \end{cases}

    with :math:`T` the epoch budget and :math:`r` the final ratio (the paper: :math:`T = 300`,
    :math:`r = 0.01`).

    Args:
        epoch: The epoch :math:`t`, counted from zero.
        epochs: The budget :math:`T`.
        ratio: The final ratio :math:`r`.

    Returns:
        The factor.

    Example:
        >>> round(linear_factor(210, 300, 0.01), 6)
        0.505
    """
    t = epoch / epochs
    if t <= 0.5:
        return 1.0
    if t <= 0.9:
        return 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
    return ratio


def cosine_factor(epoch: int, epochs: int, min_ratio: float = 0.0) -> float:
    r"""Cosine annealing from 1 at :math:`t = 0` to ``min_ratio`` at :math:`t = T`.

    .. math::

        \frac{\alpha_t}{\alpha_0} = r_{\min} + \tfrac{1}{2}(1 - r_{\min})
            \bigl(1 + \cos(\pi \min(t, T) / T)\bigr)

    Args:
        epoch: The epoch :math:`t`, counted from zero.
        epochs: The budget :math:`T`.
        min_ratio: The final ratio :math:`r_{\min}`.

    Returns:
        The factor.

    Example:
        >>> round(cosine_factor(5, 10), 6)
        0.5
    """
    t = min(epoch, epochs) / epochs
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * t))


class _Linear:
    def __init__(self, epochs: int, ratio: float) -> None:
        self.epochs, self.ratio = epochs, ratio

    def __call__(self, epoch: int) -> float:
        return linear_factor(epoch, self.epochs, self.ratio)


class _Cosine:
    def __init__(self, epochs: int, min_ratio: float) -> None:
        self.epochs, self.min_ratio = epochs, min_ratio

    def __call__(self, epoch: int) -> float:
        return cosine_factor(epoch, self.epochs, self.min_ratio)


class _Constant:
    def __call__(self, epoch: int) -> float:
        return 1.0


def linear_schedule(optimizer: torch.optim.Optimizer, epochs: int, ratio: float = 0.01) -> LambdaLR:
    r"""The paper's linear schedule (:func:`linear_factor`) as a per-epoch ``LambdaLR``.

    Args:
        optimizer: The optimiser; its current learning rates are :math:`\alpha_0`.
        epochs: The budget :math:`T`.
        ratio: The final ratio :math:`r`.

    Returns:
        The scheduler.

    Raises:
        ValueError: ``epochs`` not a positive int, ``ratio`` negative or not finite.
    """
    return LambdaLR(optimizer, _Linear(_check_epochs(epochs), _check_ratio("ratio", ratio)))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, min_ratio: float = 0.0
) -> LambdaLR:
    r"""Cosine annealing (:func:`cosine_factor`) as a per-epoch ``LambdaLR``.

    Args:
        optimizer: The optimiser; its current learning rates are :math:`\alpha_0`.
        epochs: The budget :math:`T`.
        min_ratio: The final ratio.

    Returns:
        The scheduler.

    Raises:
        ValueError: ``epochs`` not a positive int, ``min_ratio`` negative or not finite.
    """
    factor = _Cosine(_check_epochs(epochs), _check_ratio("min_ratio", min_ratio))
    return LambdaLR(optimizer, factor)


def constant_schedule(optimizer: torch.optim.Optimizer, epochs: int | None = None) -> LambdaLR:
    """A constant learning rate as a ``LambdaLR`` (so every schedule has the same interface).

    Args:
        optimizer: The optimiser.
        epochs: Ignored; accepted for a uniform signature.

    Returns:
        The scheduler.
    """
    return LambdaLR(optimizer, _Constant())


def build_schedule(
    name: str, optimizer: torch.optim.Optimizer, *, epochs: int, **kwargs: float
) -> LambdaLR:
    """Build a schedule of :data:`SCHEDULES` by name.

    Args:
        name: ``"linear"`` (keyword ``ratio``, default 0.01), ``"cosine"`` (keyword
            ``min_ratio``, default 0) or ``"constant"``.
        optimizer: The optimiser; its current learning rates are the initial ones.
        epochs: The epoch budget :math:`T`.
        **kwargs: Passed to the schedule.

    Returns:
        A ``LambdaLR`` to step once per epoch.

    Raises:
        ValueError: Unknown name or bad values.
        TypeError: A keyword the schedule does not take.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = build_schedule("cosine", opt, epochs=4)
        >>> for _ in range(2):  # one step per epoch, after the epoch's optimiser steps
        ...     opt.step()
        ...     sched.step()
        >>> round(opt.param_groups[0]["lr"], 6)
        0.5
    """
    factories = {"linear": linear_schedule, "cosine": cosine_schedule, "constant": None}
    if name not in factories:
        raise ValueError(f"Unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}.")
    if name == "constant":
        if kwargs:
            raise TypeError(f"The constant schedule takes no keywords; got {sorted(kwargs)}.")
        return constant_schedule(optimizer)
    return factories[name](optimizer, epochs, **kwargs)  # type: ignore[operator]

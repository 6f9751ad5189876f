"""The optimisers' hyperparameters: the values allowed, their torch-style checks, a step's view.

Example:
    >>> from lanczos_optim.optimizers._hyperparameters import Hyper
    >>> Hyper.of({"lr": 1, "damping": 0.5, "weight_decay": 0, "momentum": 0})
    Hyper(lr=1.0, damping=0.5, weight_decay=0.0, momentum=0.0)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lanczos_optim.optimizers import _damping, _krylov_size, _param_groups, _subspace
from lanczos_optim.validation import check_curvature, check_lanczos_steps

#: Start vectors of the per-step Lanczos run.
KRYLOV_STARTS = ("gradient", "random")
#: Treatments of the new gradient's component outside a reused basis (``update_every > 1``).
REUSE_COMPLEMENTS = ("damped", "augment", "rayleigh")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate(name: str, hp: dict[str, Any]) -> None:
    """Raise torch-style errors on invalid hyperparameters (``name``: the optimiser's class)."""
    lr, damping = hp["lr"], hp["damping"]
    if not _is_number(lr) or lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not _is_number(damping) or damping <= 0.0:
        raise ValueError(f"Invalid damping value: {damping} (must be > 0)")
    check_lanczos_steps(hp["lanczos_steps"])  # capped at P in krylov_solve
    check_curvature(hp["curvature"])
    wd = hp["weight_decay"]
    if not _is_number(wd) or wd < 0.0:
        raise ValueError(f"Invalid weight_decay value: {wd}")
    mom = hp["momentum"]
    if not _is_number(mom) or not 0.0 <= mom < 1.0:
        raise ValueError(f"Invalid momentum value: {mom} (must be in [0, 1))")
    if hp["krylov_start"] not in KRYLOV_STARTS:
        raise ValueError(
            f"Invalid krylov_start: {hp['krylov_start']!r}; expected one of {KRYLOV_STARTS}"
        )
    every = hp["update_every"]
    if not _is_int(every) or every < 1:
        raise ValueError(f"Invalid update_every value: {every} (must be an int >= 1)")
    bound = hp["max_step_norm"]
    if bound is not None and (not _is_number(bound) or bound <= 0.0):
        raise ValueError(f"Invalid max_step_norm value: {bound} (must be None or > 0)")
    seed = hp["seed"]
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ValueError(f"Invalid seed: {seed!r} (must be None or an int >= 0)")
    block = hp["block_size"]
    if not _is_int(block) or block < 1:
        raise ValueError(f"Invalid block_size value: {block} (must be an int >= 1)")
    check_storage(hp["basis_dtype"], hp["basis_device"])
    _damping.check_adaptive(hp)
    _krylov_size.check_tol(hp)
    check_reuse(hp["reuse_complement"], hp["warm_start"])
    _subspace.check(hp)


def check_reuse(complement: object, warm_start: object) -> None:
    """Raise torch-style errors on an invalid ``reuse_complement`` or ``warm_start``."""
    if complement not in REUSE_COMPLEMENTS:
        raise ValueError(
            f"Invalid reuse_complement: {complement!r}; expected one of {REUSE_COMPLEMENTS}"
        )
    if not isinstance(warm_start, bool):
        raise ValueError(f"Invalid warm_start value: {warm_start!r} (must be a bool)")


def check_storage(dtype: object, device: object) -> None:
    """Raise torch-style errors on an invalid ``basis_dtype`` or ``basis_device``."""
    if dtype is not None and (
        not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex
    ):
        raise ValueError(
            f"Invalid basis_dtype: {dtype!r} (must be None or a real floating-point torch.dtype)"
        )
    if device is None or isinstance(device, torch.device):
        return
    try:
        torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        raise ValueError(
            f"Invalid basis_device: {device!r} (must be None, a torch.device or a device string)"
        ) from None


class Hyper(NamedTuple):
    """The group's hyperparameters, read once at the start of a step.

    ``lr`` and ``weight_decay`` become flat per-coordinate vectors when the parameter groups
    of the live parameters differ in them (see :meth:`per_parameter`).
    """

    lr: float | Tensor
    damping: float
    weight_decay: float | Tensor
    momentum: float

    def per_parameter(
        self, groups: list[dict[str, Any]], index: list[int], live: list[Tensor]
    ) -> Hyper:
        """The same with each live parameter's own group ``lr`` and ``weight_decay``."""
        if len(groups) == 1:
            return self
        lr = _param_groups.per_coordinate(groups, "lr", index, live)
        wd = _param_groups.per_coordinate(groups, "weight_decay", index, live)
        return self._replace(lr=lr, weight_decay=wd)

    @classmethod
    def of(cls, group: dict[str, Any]) -> Hyper:
        return cls(
            float(group["lr"]),
            float(group["damping"]),
            float(group["weight_decay"]),
            float(group["momentum"]),
        )

"""Lanczos Newton optimisers: drop-in :class:`torch.optim.Optimizer` subclasses."""

from lanczos_optim.optimizers._hyperparameters import KRYLOV_STARTS
from lanczos_optim.optimizers.newton import LanczosNewton
from lanczos_optim.optimizers.saddle_free import LanczosSaddleFreeNewton
from lanczos_optim.optimizers.step_info import StepInfo
from lanczos_optim.validation import CURVATURES

__all__ = [
    "LanczosNewton",
    "LanczosSaddleFreeNewton",
    "StepInfo",
    "CURVATURES",
    "KRYLOV_STARTS",
]

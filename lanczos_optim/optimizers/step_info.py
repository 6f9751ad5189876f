"""The per-step record of the Lanczos Newton optimisers (``optimizer.last_info``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepInfo"]


def _empty64() -> Tensor:
    return torch.zeros(0, dtype=torch.float64, device="cpu")


@dataclass
class StepInfo:
    r"""What one optimiser step measured (``optimizer.last_info``).

    Attributes:
        step: Number of steps taken so far, this one included (skipped steps not counted).
        skipped: Whether the step was skipped (parameters and state unchanged).
        reason: Why it was skipped, or ``None``.
        loss: The closure's loss before the step.
        grad_norm: Norm of the gradient used (weight decay included).
        ritz_values: Ritz values of the curvature (weight decay included), float64 ascending
            (``m + 1`` of them on an augmented reuse step: those of the augmented space).
        weights: Gauss quadrature weights of the Lanczos start vector, float64.
        residuals: Residual bounds of the Ritz pairs, float64.
        krylov_fraction: Share of :math:`\|g\|^2` inside the Krylov space; on a reuse step
            (``basis_age > 0``) the share inside the reused basis, before an augmented step
            (``reuse_complement="augment"``/``"rayleigh"``) adds the rest to it.
        predicted_decrease: Decrease of the quadratic model for the Newton step
            :math:`-\mathrm{lr}\,d` (shortened by ``max_step_norm`` if active, momentum not
            included), with the curvature measured inside the Krylov space.
        num_clipped: Ritz values :math:`\le -\delta` treated as zero curvature (LanczosNewton).
        num_products: Curvature-vector products this step (on a reuse step: 1 for the
            complement's product of ``reuse_complement="augment"``/``"rayleigh"``, 0 with
            ``"damped"`` or a gradient already inside the basis).
        basis_age: Steps since the eigenbasis was computed (0: computed this step).
        step_norm: Norm of the parameter update.
        step_scale: Factor applied by ``max_step_norm`` (1.0 when the bound was inactive).
        step_curvature: :math:`\mathrm{lr}^2\, d^\top |C| d` for the (bounded) Newton step,
            inside the Krylov space: how far the step moves the model's outputs (for the GGN of
            a cross-entropy loss, about twice the mean KL divergence of the predictions).
        lr: Learning rate used.
        damping: Damping used.
        closure_seconds: Time in the closure (the forward pass).
        gradient_seconds: Time computing the gradient (and the graph the products need).
        product_seconds: Time inside curvature-vector products.
        bookkeeping_seconds: The rest: Lanczos orthogonalisation, eigensolver, the update.
        total_seconds: Whole step.
        rho: The reduction ratio of ``adaptive_damping``: the actual decrease of the loss
            (weight decay included) over :attr:`predicted_decrease`; NaN when adaptive damping
            is off, the step was skipped, or the model predicted no decrease.
        next_damping: The damping of the next step: :attr:`damping` moved by the
            Levenberg--Marquardt rule on :attr:`rho` with ``adaptive_damping``, else (and for a
            skipped step) equal to :attr:`damping`.
        krylov_residual: Relative residual :math:`\|(C + \delta I) d - g\| / \|g\|` of the damped
            system in the fresh Krylov space (``krylov_tol``; the Ritz pairs' weighted residual
            bounds for the saddle-free transform); ``nan`` when the basis was reused, the
            Krylov start was random or the step was skipped.

    Example:
        >>> import torch
        >>> from lanczos_optim import LanczosNewton
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
        >>> opt = LanczosNewton(model.parameters(), lr=1.0, lanczos_steps=4, curvature="hessian")
        >>> _ = opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        >>> info = opt.last_info
        >>> info.step, info.skipped, info.num_products
        (1, False, 4)
        >>> X1 = torch.cat([x, torch.ones(16, 1, dtype=torch.float64)], dim=1)  # least squares:
        >>> bool(torch.allclose(info.ritz_values, torch.linalg.eigvalsh(2 * X1.T @ X1 / 16)))
        True
    """

    step: int = 0
    skipped: bool = False
    reason: str | None = None
    loss: float = math.nan
    grad_norm: float = math.nan
    ritz_values: Tensor = field(default_factory=_empty64)
    weights: Tensor = field(default_factory=_empty64)
    residuals: Tensor = field(default_factory=_empty64)
    krylov_fraction: float = math.nan
    predicted_decrease: float = math.nan
    num_clipped: int = 0
    num_products: int = 0
    basis_age: int = 0
    step_norm: float = 0.0
    step_scale: float = 1.0
    step_curvature: float = 0.0
    lr: float = math.nan
    damping: float = math.nan
    closure_seconds: float = 0.0
    gradient_seconds: float = 0.0
    product_seconds: float = 0.0
    bookkeeping_seconds: float = 0.0
    total_seconds: float = 0.0
    rho: float = math.nan
    next_damping: float = math.nan
    krylov_residual: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return the record with tensors as lists of floats (for loggers)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, Tensor) else value
        return out

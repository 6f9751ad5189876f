"""K-FAC (Martens & Grosse, 2015) built on curvlinops' Kronecker-factored curvature and inverse.

Needs ``curvlinops-for-pytorch`` (the ``bench`` extra). Chosen over a K-FAC package: none is
maintained for torch 2.x on PyPI (``kfac-pytorch`` is not published there), and curvlinops is
maintained, already one of the peers of ``benchmarks/peers.py``, and exact for the damped inverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["KFAC"]

_FISHER_TYPES = ("mc", "type-2")


class KFAC(torch.optim.Optimizer):
    r"""K-FAC: steps preconditioned by a damped Kronecker-factored Fisher of the current batch.

    Each layer's Fisher block is :math:`F_\ell \approx A_\ell \otimes G_\ell` (input and
    output-gradient covariances, curvlinops' ``KFACLinearOperator``), recomputed on the training
    batch every ``update_every`` steps; the step is, with momentum :math:`\mu`,

    .. math::
        d_t = (\hat F + \lambda I)^{-1} g_t, \qquad b_t = \mu b_{t-1} + d_t, \qquad
        \theta_{t+1} = \theta_t - \alpha\, b_t,

    the damped inverse exact (``KFACInverseLinearOperator(use_exact_damping=True)``). Parameters
    outside ``Linear``/``Conv2d`` layers take :math:`d_t = g_t`. The torch.optim protocol:
    ``loss.backward()`` then ``step()``. The batch's inputs are read by a forward pre-hook on
    ``model`` (training mode, gradients on); labels are not needed (``fisher_type="mc"`` samples
    them from the model, ``"type-2"`` uses the exact GGN factors). Cross-entropy (mean) only.
    The factors are not in ``state_dict``: a resumed run recomputes them at its first step.

    Args:
        params: The parameters to optimise (of ``model``).
        model: The network whose forward passes train them.
        lr: Learning rate :math:`\alpha` (0.03: the best of {0.01, 0.03, 0.1, 0.3} on the
            digits MLP of the training harness, as for the peers' defaults there).
        damping: :math:`\lambda > 0`.
        momentum: :math:`\mu \in [0, 1)`.
        update_every: Steps between two computations of the factors.
        fisher_type: ``"mc"`` (one sampled label per example) or ``"type-2"``.

    Raises:
        ValueError: A hyperparameter out of range, naming it.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> opt = KFAC(net.parameters(), model=net, lr=0.3)
        >>> losses = []
        >>> for _ in range(20):
        ...     opt.zero_grad()
        ...     loss = nn.functional.cross_entropy(net(x), y)
        ...     loss.backward()
        ...     opt.step()
        ...     losses.append(loss.item())
        >>> losses[-1] < 0.8 * losses[0]
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        model: nn.Module,
        lr: float = 0.03,
        damping: float = 0.1,
        momentum: float = 0.9,
        update_every: int = 10,
        fisher_type: str = "mc",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"KFAC: model must be an nn.Module, got {type(model).__name__}")
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not damping > 0:
            raise ValueError(f"Invalid damping: {damping}; must be > 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum}; must be in [0, 1)")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"Invalid update_every: {update_every!r}; must be an int >= 1")
        if fisher_type not in _FISHER_TYPES:
            raise ValueError(f"Invalid fisher_type: {fisher_type!r}; allowed: mc, type-2")
        super().__init__(params, {"lr": lr, "damping": damping, "momentum": momentum})
        self.model = model
        self.update_every = update_every
        self.fisher_type = fisher_type
        self._inputs: Tensor | None = None
        self._inverse: Any = None
        self._since_update = 0
        self._updates = 0
        self._hook = model.register_forward_pre_hook(self._read_inputs)

    def _read_inputs(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and torch.is_grad_enabled() and args and isinstance(args[0], Tensor):
            self._inputs = args[0].detach()

    def _kfac_params(self) -> list[Tensor]:
        ours = {id(p) for g in self.param_groups for p in g["params"] if p.requires_grad}
        return [
            p
            for m in self.model.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))
            for p in m.parameters(recurse=False)
            if id(p) in ours
        ]

    def _update_inverse(self, params: list[Tensor], damping: float) -> None:
        from curvlinops import KFACInverseLinearOperator, KFACLinearOperator

        x = self._inputs
        if x is None:
            raise RuntimeError("KFAC: no training forward pass of the model seen before step()")
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # not read
        self._updates += 1  # a new seed for the sampled labels of each update
        with torch.enable_grad():
            curvature = KFACLinearOperator(
                self.model, nn.CrossEntropyLoss(), params, [(x, labels)],
                fisher_type=self.fisher_type, check_deterministic=False, seed=self._updates,
            )  # fmt: skip
            curvature.compute_kronecker_factors()
        self._inverse = KFACInverseLinearOperator(
            curvature, damping=damping, use_exact_damping=True
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        """One K-FAC step from the gradients in ``p.grad`` (``closure`` as in torch.optim)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = [p for p in self._kfac_params() if p.grad is not None]
        if params and (self._inverse is None or self._since_update >= self.update_every):
            self._update_inverse(params, group["damping"])
            self._since_update = 0
        self._since_update += 1
        directions = {}
        if params:
            for p, d in zip(params, self._inverse @ [p.grad for p in params], strict=True):
                directions[p] = d
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = directions.get(p, p.grad)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                buf = d.clone() if buf is None else buf.mul_(g["momentum"]).add_(d)
                state["momentum_buffer"] = buf
                p.add_(buf, alpha=-g["lr"])
        return loss

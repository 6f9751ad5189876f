r"""Adaptive (Levenberg--Marquardt) damping of the Lanczos Newton optimisers.

With ``adaptive_damping=True`` the optimiser measures, after each step, the *reduction ratio*

.. math::
    \rho = \frac{F(w) - F(w')}{\mathrm{lr}'\, g^\top d - \tfrac{1}{2}\,\mathrm{lr}'^2\,
           d^\top C d},
    \qquad F(w) = L(w) + \tfrac{1}{2} \lambda \|w\|^2 ,

the actual decrease of the loss (weight decay included, as in :math:`g` and :math:`C`) over the
decrease predicted by the *undamped* quadratic model in the Krylov space
(``StepInfo.predicted_decrease``; :math:`\mathrm{lr}'` is the learning rate after
``max_step_norm``), and moves the damping :math:`\delta` by the Levenberg--Marquardt rule of
Martens (2010) and Martens & Grosse (2015):

.. math::
    \delta \leftarrow \begin{cases}
        \tfrac{3}{2}\,\delta & \rho < \tfrac{1}{4}\ \text{(or a loss that is not finite)}, \\
        \tfrac{2}{3}\,\delta & \rho > \tfrac{3}{4}, \\
        \delta & \text{otherwise},
    \end{cases}
    \qquad \delta \in [\delta_{\min}, \delta_{\max}] = [10^{-4}, 10^{4}] .

When the model predicts no decrease above the rounding error of the loss
(:math:`\le 64\,\epsilon\,|L|`, with :math:`\epsilon` the loss dtype's machine epsilon: a zero
gradient, or a converged float32 run), :math:`\rho` is undefined (NaN): a loss that went up by
more than that still boosts the damping, otherwise it stays. The bounds
keep :math:`\delta` within eight decades of the GGN scale of usual losses (cross-entropy and
mean squared error curvatures are :math:`O(10^{-3})` to :math:`O(10^{3})`): the floor stops
:math:`1/\delta` (the step along directions outside the Krylov space) from exploding, the ceiling
stops the step from vanishing for good after a run of bad batches.

**The extra forward and its bias.** :math:`F(w')` is one more forward pass: the closure (or
``rho_closure``, a second batch) re-run under ``torch.no_grad()`` at the new parameters. On the
closure's own batch, :math:`\rho` is measured on the batch the model *and* the step were fitted
to, so it is optimistic (the step fits this batch's noise too) and the damping drifts lower than
the one that generalises best; a second batch (``rho_closure``) removes that bias at the price of
noise. Guards: the floor :math:`\delta_{\min}`, the ``max_step_norm`` trust region (kept on by
default: it bounds the step whatever :math:`\delta` becomes), the random-number generators
replayed to their state before the closure (dropout draws the *same* masks in the re-evaluation
as in the forward that built the model, so dropout adds no noise to :math:`\rho`, and the user's
random stream continues as if the extra forward had not run) and the buffers (BatchNorm running
statistics) of a model given to ``attach(model)`` restored after the extra forward, so they are
updated once per step as without adaptive damping. Without ``attach`` the buffers cannot be
found: a model in train mode updates its BatchNorm running statistics a second time, at the new
parameters, on the same batch.

**Faults.** A re-evaluated loss that is not finite undoes the step (the parameters go back to
their values before it, bit for bit) and boosts the damping; ``StepInfo.reason`` says so. A
skipped step leaves the damping unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lanczos_optim.flatten import flatten_tensors
from lanczos_optim.krylov import KrylovSolveInfo
from lanczos_optim.optimizers._amp import _AUTOCAST_DEVICES
from lanczos_optim.optimizers._closure_curvature import _mean_over_ranks
from lanczos_optim.optimizers.step_info import StepInfo

#: Bounds of the adaptive damping.
DAMPING_MIN, DAMPING_MAX = 1e-4, 1e4
#: The Levenberg--Marquardt factors and the thresholds on the reduction ratio.
BOOST, DECAY = 3.0 / 2.0, 2.0 / 3.0
RHO_LOW, RHO_HIGH = 0.25, 0.75
#: A decrease below this many units of rounding of the loss (its dtype's eps times |loss|) is
#: noise: the ratio is undefined there.
ROUNDING = 64.0


def check_adaptive(hp: dict[str, Any]) -> None:
    """Raise torch-style errors on ``adaptive_damping`` and the options it constrains."""
    adaptive = hp["adaptive_damping"]
    if not isinstance(adaptive, bool):
        raise ValueError(f"Invalid adaptive_damping value: {adaptive!r} (must be True or False)")
    if not adaptive:
        return
    damping = hp["damping"]
    if not DAMPING_MIN <= damping <= DAMPING_MAX:
        raise ValueError(
            f"Invalid damping value: {damping} (with adaptive_damping=True the starting damping "
            f"must lie in [{DAMPING_MIN}, {DAMPING_MAX}])"
        )
    if hp["momentum"] != 0.0:
        raise ValueError(
            f"Invalid momentum value: {hp['momentum']} (must be 0 with adaptive_damping=True: "
            "the quadratic model behind the reduction ratio does not cover the momentum part)"
        )


def next_damping(damping: float, rho: float, increased: bool) -> float:
    r"""The Levenberg--Marquardt update of ``damping`` for the reduction ratio ``rho``.

    Args:
        damping: The damping :math:`\delta` of the step just taken.
        rho: The reduction ratio; NaN when it is undefined (no predicted decrease, or a loss
            that is not finite).
        increased: Whether the loss went up (or is not finite).

    Returns:
        :math:`\tfrac32\delta` for :math:`\rho < \tfrac14` or a loss that went up,
        :math:`\tfrac23\delta` for :math:`\rho > \tfrac34`, else :math:`\delta`; clamped to
        ``[DAMPING_MIN, DAMPING_MAX]``.

    Example:
        >>> next_damping(1.0, 0.1, False), next_damping(1.5, 1.0, False)
        (1.5, 1.0)
        >>> next_damping(1.0, float("nan"), True), next_damping(1e4, 0.0, True)
        (1.5, 10000.0)
    """
    if increased or rho < RHO_LOW:
        damping = damping * BOOST
    elif rho > RHO_HIGH:
        damping = damping * DECAY
    return min(max(damping, DAMPING_MIN), DAMPING_MAX)


def inherit_damping(groups: list[dict[str, Any]], param_group: dict[str, Any]) -> None:
    """Give a group added under adaptive damping the damping in force, not the starting one.

    Example:
        >>> new = {"params": []}
        >>> inherit_damping([{"adaptive_damping": True, "damping": 0.25}], new)
        >>> new["damping"]
        0.25
    """
    if groups and groups[0].get("adaptive_damping", False) and "damping" not in param_group:
        param_group["damping"] = groups[0]["damping"]


class _RandomState(NamedTuple):
    """The CPU generator's state and the accelerator's (CUDA) before the closure ran."""

    cpu: Tensor
    cuda: Tensor | None
    device: torch.device


class AdaptiveStep:
    """One step's adaptive-damping work, created by :meth:`start` before the closure runs.

    The optimiser calls :meth:`refuse_backward` once the closure ran, :meth:`keep` just before
    it writes the parameters and :meth:`finish` after.
    """

    def __init__(
        self, opt: Any, closure: Callable[[], Any], rho_closure: Callable[[], Any] | None
    ) -> None:
        self.opt, self.closure, self.rho_closure = opt, closure, rho_closure
        device = opt._params[0].device
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.rng = _RandomState(torch.get_rng_state(), cuda, device)
        self.before: list[Tensor] = []
        self.loss_before = math.nan

    @classmethod
    def start(
        cls, opt: Any, closure: Callable[[], Any] | None, rho_closure: Callable[[], Any] | None
    ) -> AdaptiveStep | None:
        """The step's work when ``adaptive_damping`` is on (else None); refuses what cannot work.

        Raises:
            RuntimeError: Adaptive damping without a closure (the backward protocol).
            ValueError: ``rho_closure`` without adaptive damping, or parameter groups with
                different learning rates (no scalar quadratic model).
            TypeError: A ``rho_closure`` that is not callable.
        """
        name = type(opt).__name__
        groups = opt.param_groups
        if rho_closure is not None and not callable(rho_closure):
            raise TypeError(f"{name}.step: rho_closure must be callable; got {rho_closure!r}")
        if not groups[0].get("adaptive_damping", False):
            if rho_closure is not None:
                raise ValueError(
                    f"{name}.step: rho_closure is only used with adaptive_damping=True"
                )
            return None
        if closure is None:
            raise RuntimeError(_BACKWARD_REFUSAL.format(name=name))
        check_adaptive(groups[0])  # momentum may have been changed since construction
        lrs = {float(g["lr"]) for g in groups}
        if len(lrs) > 1:
            raise ValueError(
                f"{name}: adaptive_damping=True needs one lr in all parameter groups; got "
                f"{sorted(lrs)}"
            )
        return cls(opt, closure, rho_closure)

    def refuse_backward(self, backward: object) -> None:
        """Refuse a closure that ran ``backward`` itself (it cannot be re-evaluated)."""
        if backward is not None:
            raise RuntimeError(_BACKWARD_REFUSAL.format(name=type(self.opt).__name__))

    def keep(self, live: list[Tensor]) -> None:
        """Copy the parameters before the step writes them (to undo it on a non-finite loss).

        With ``rho_closure``, also evaluate its loss before the step.
        """
        self.before = [p.detach().clone() for p in live]
        if self.rho_closure is not None:
            self.loss_before = self._evaluate()[0]

    def finish(
        self,
        live: list[Tensor],
        kinfo: KrylovSolveInfo,
        weight_decay: float | Tensor,
        info: StepInfo,
    ) -> None:
        r"""Re-evaluate the loss, record :math:`\rho`, set the next damping in every group."""
        lr = float(self.opt.param_groups[0]["lr"]) * info.step_scale
        predicted = kinfo.predicted_decrease(lr)
        info.predicted_decrease = predicted  # scalar even with several groups (one lr)
        before = info.loss if self.rho_closure is None else self.loss_before
        after, eps = self._evaluate()
        actual = before - after + _decay_term(self.before, live, weight_decay)
        finite = math.isfinite(actual)
        noise = ROUNDING * eps * max(abs(before), abs(after)) if finite else 0.0
        rho = actual / predicted if finite and predicted > noise else math.nan
        damping = next_damping(info.damping, rho, not finite or actual < -noise)
        if not finite:
            with torch.no_grad():
                for p, old in zip(live, self.before, strict=True):
                    p.copy_(old)
            info.reason = "non-finite loss after the step: step undone, damping boosted"
        info.rho, info.next_damping = rho, damping
        for group in self.opt.param_groups:
            group["damping"] = damping

    def _evaluate(self) -> tuple[float, float]:
        """One no_grad forward of ``rho_closure`` (or the closure): the loss and its dtype's eps.

        The loss is the mean over ranks under ``torch.distributed``.
        """
        closure = self.closure if self.rho_closure is None else self.rho_closure
        module = getattr(self.opt._recorder, "module", None)
        with _kept_buffers(module), _replayed(self.rng), torch.no_grad():
            ret = closure()
        loss = ret[0] if isinstance(ret, (tuple, list)) else ret
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            raise RuntimeError(
                f"{type(self.opt).__name__}: the re-evaluated closure must return the loss as a "
                f"scalar tensor; got {type(loss).__name__}"
            )
        eps = torch.finfo(loss.dtype).eps
        return float(_mean_over_ranks(loss.detach().double().reshape(1))), eps


_BACKWARD_REFUSAL = (
    "{name}: adaptive_damping=True needs the closure protocol, opt.step(closure) with a "
    "closure that returns the loss without calling backward(), to re-evaluate the loss after "
    "the step"
)


def _decay_term(before: list[Tensor], live: list[Tensor], weight_decay: float | Tensor) -> float:
    r""":math:`\tfrac12 \sum \lambda (w^2 - w'^2)`, the weight decay's share of the decrease."""
    if not isinstance(weight_decay, Tensor) and weight_decay == 0.0:
        return 0.0
    with torch.no_grad():
        old, new = flatten_tensors(before), flatten_tensors([p.detach() for p in live])
        return float(0.5 * (weight_decay * (old - new) * (old + new)).sum())


def user_autocast(device: torch.device, closure: Callable[[], Any] | None) -> Any:
    """``closure`` re-entering the autocast in force now on ``device`` (as the step's closure).

    Example:
        >>> import torch
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     c = user_autocast(torch.device("cpu"), lambda: torch.ones(2) @ torch.ones(2))
        >>> c().dtype
        torch.bfloat16
    """
    kind = device.type
    if closure is None or kind not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(kind):
        return closure
    dtype = torch.get_autocast_dtype(kind)

    def in_user_autocast() -> Any:
        with torch.autocast(kind, dtype=dtype, enabled=True):
            return closure()

    return in_user_autocast


@contextlib.contextmanager
def _replayed(rng: _RandomState) -> Iterator[None]:
    """Run with the generators as they were before the closure; restore them after."""
    devices = [rng.device] if rng.cuda is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(rng.cpu)
        if rng.cuda is not None:
            torch.cuda.set_rng_state(rng.cuda, rng.device)
        yield


@contextlib.contextmanager
def _kept_buffers(module: nn.Module | None) -> Iterator[None]:
    """Restore ``module``'s buffers (BatchNorm running statistics) after the block."""
    if module is None:
        yield
        return
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)

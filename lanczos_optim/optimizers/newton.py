"""LanczosNewton: a damped Newton step in the Lanczos eigenbasis of the batch curvature."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from lanczos_optim.optimizers._base import _LanczosNewtonBase
from lanczos_optim.validation import OPTIMIZER_LANCZOS_STEPS

__all__ = ["LanczosNewton"]


class LanczosNewton(_LanczosNewtonBase):
    r"""Damped Newton in a Lanczos eigenbasis of the current batch's curvature.

    Every step evaluates the closure once (one forward pass), differentiates the loss, runs
    ``lanczos_steps`` Lanczos steps on the curvature :math:`C` of the *same* batch (each step is
    one curvature-vector product: one extra backward pass on the closure's graph) and moves
    along the damped Newton direction in the Krylov space:

    .. math::
        g &= \nabla L(w) + \lambda w, \qquad C \leftarrow C + \lambda I, \\
        d &= \sum_{i=1}^{m} \frac{u_i^\top g}{\theta_i + \delta}\, u_i
             + \frac{1}{\delta}\Big(g - \sum_{i=1}^{m} (u_i^\top g)\, u_i\Big), \\
        b &\leftarrow \mu\, b + d, \qquad
        w \leftarrow w - \min\Big(1, \frac{r}{\|\mathrm{lr}\, b\|}\Big)\, \mathrm{lr}\; b ,

    with Ritz pairs :math:`(\theta_i, u_i)` of :math:`C`, damping :math:`\delta`, weight decay
    :math:`\lambda` (added to the gradient *and* the curvature, so the two agree), heavy-ball
    momentum :math:`\mu` acting on :math:`d` and the trust-region radius
    :math:`r` = ``max_step_norm`` on the update. Ritz values :math:`\theta_i \le -\delta` (possible
    with ``curvature="hessian"``) are clipped to zero curvature (:math:`1/\delta`); their number
    is recorded in :attr:`last_info`. The part of :math:`g` outside the Krylov space gets a
    gradient step of size :math:`\mathrm{lr}/\delta`; starting the Krylov space from :math:`g`
    (the default) makes that part zero. With ``m = P`` steps and no momentum the step is the
    exact :math:`w - \mathrm{lr}\,(C + \delta I)^{-1} g` (within ``max_step_norm``). The
    direction is :func:`~lanczos_optim.krylov_solve` with ``transform="newton"``.

    **Closure protocol.** :meth:`step` requires a closure. It is run under
    ``torch.enable_grad()`` and must run the forward pass and return the loss still attached to
    its graph -- or ``(loss, outputs)``, which the default GGN curvature needs (the model
    outputs the loss was computed from). It must *not* call ``backward()``: the optimiser
    differentiates the loss itself and writes the detached gradient (without weight decay) into
    each ``p.grad`` for logging. A closure that already called backward, a loss without graph or
    a missing ``outputs`` for the GGN raise a ``RuntimeError`` that says so. ``step`` returns the
    loss, detached. Parameters that did not receive a gradient (unused or frozen) are skipped.
    A standard ``torch.optim`` closure becomes a LanczosNewton closure by deleting
    ``loss.backward()`` and returning ``loss, outputs``.

    **Backward protocol.** Without a closure -- ``loss.backward(create_graph=True)`` then
    ``step()``, as AdaHessian and SophiaH take it -- or with a closure that runs that backward
    itself (Lightning's), the gradient is read from ``p.grad`` (so clipping and accumulation act
    on it) and the Hessian products are backward passes through its graph; the GGN takes the
    outputs that :meth:`attach` recorded. It gives the step of the closure protocol, at about
    the same cost. A ``backward()`` without ``create_graph`` is refused with a one-line error that
    says what to change. ``docs/guides/integrations.md`` shows Lightning, Accelerate, the
    Hugging Face ``Trainer``, ``torch.compile`` and mixed precision (the optimiser's own
    arithmetic runs outside any autocast; a ``GradScaler``'s scale is divided out).

    **BatchNorm and train/eval.** The closure runs the model in whatever mode the user set, and
    that single forward pass is the only one per step: curvature products are further backward
    passes on the closure's graph and never re-run the forward, so BatchNorm running statistics
    are updated exactly once per step (by the user's forward, as with SGD) and no train/eval
    flag is touched. The curvature uses the statistics of that forward (batch statistics in
    train mode). With ``adaptive_damping=True`` one more forward runs after the step, under
    ``torch.no_grad()``, for the reduction ratio; the buffers of a model given to
    :meth:`attach` are restored after it (without ``attach`` it updates them a second time).

    **Many processes.** When ``torch.distributed`` is initialised, each rank runs the closure on
    its own shard of the batch and the optimiser averages the gradient and every curvature
    product over ranks (random Krylov starts come from rank 0), so all ranks take the same step
    as one process on the whole batch (equal shard sizes). Give it the plain module's
    parameters: it does its own reduction, so a ``DistributedDataParallel`` wrapper is not needed.

    **Cost.** A step costs one forward, one gradient backward (with ``create_graph``) and
    ``lanczos_steps`` curvature products (about 2 backward passes each), plus
    :math:`O(P m^2)` orthogonalisation; ``update_every = N`` reuses the last eigenbasis for
    :math:`N` steps, so the other :math:`N-1` steps cost one forward, one gradient backward
    (with ``create_graph``) and one product for the gradient's new direction
    (``reuse_complement``; one forward and one plain backward with ``"damped"``).

    **Faults.** A non-finite loss, gradient or curvature skips the step: parameters and state
    stay unchanged (``p.grad`` too), a ``RuntimeWarning`` is issued and
    ``state["skipped_steps"]`` (on the first parameter) counts it.

    **Defaults** (measured with ``benchmarks/optimizers.py``: digits MLP and CNN,
    Fashion-MNIST CNN and the issue's 784-128-10 MLP, mini-batches of 64-128, several seeds, no
    tuning; see ``benchmarks/results/optimizers.md``). ``curvature="ggn"``: the GGN of a convex
    loss is positive semi-definite, so no Ritz value needs clipping and the damped step is
    always a descent direction. ``lr=1`` (the full damped Newton step) with ``damping=1`` -- the
    paper's working pair -- reached a lower training loss per iteration than SGD with momentum
    and Adam on every problem. ``damping=0.3`` diverged without a bound (digits CNN, and the
    issue's Fashion-MNIST MLP) and ``damping=3`` is slower. ``max_step_norm=1``: a trust-region
    bound on the update's Euclidean norm. Typical updates have norm 0.1-0.5 and are untouched;
    the bound cuts the rare huge step on a mini-batch whose quadratic model is wrong: without
    it one digits-CNN seed collapsed to a constant prediction (loss log 10), with it every
    seed trained. With the bound, ``damping=0.3`` trained every problem too and reached a
    lower loss (a third of it on the digits CNN, a few percent less on Fashion-MNIST); the
    default keeps ``damping=1`` so that the method stays stable even where the bound is too
    loose for a model's scale. ``max_step_norm=None``
    removes the bound (needed for the exact closed forms). ``lanczos_steps=5`` (20 until this
    release, after the paper's 20-30): at damping 1 the damped system is well conditioned,
    and 5 steps reached the training loss of 20 on the digits MLP exactly and within 1 % on a
    Fashion-MNIST MLP at a third of the step time (``benchmarks/krylov_size.py``); the
    four-problem benchmark (``benchmarks/peers_optim.py``, docs' benchmarks page) compares both.
    ``krylov_tol`` stops earlier or later from the residual instead.
    ``krylov_start="gradient"``: the Krylov space then contains the gradient, so no component
    gets the blind :math:`1/\delta` step and no random numbers are drawn.

    **Memory.** The Lanczos run keeps ``lanczos_steps`` vectors of size :math:`P`;
    ``update_every > 1`` also keeps the :math:`P \times m` Ritz vectors in the state (and in
    ``state_dict()``).

    Per step, :attr:`last_info` (a :class:`~lanczos_optim.optimizers.StepInfo`) records the
    Ritz values and weights, residual bounds, the share of :math:`\|g\|^2` inside the Krylov
    space, the predicted quadratic decrease, the number of clipped Ritz values, the number of
    products and the time in products versus bookkeeping.

    Parameter groups share one eigenbasis: ``lr`` and ``weight_decay`` may differ per group
    (:math:`\lambda` and lr become per-coordinate, the step is scaled per group), the other
    options must be equal in all groups. All parameters must share one dtype and device;
    float32 and float64 are preserved. Sparse gradients are refused.
    ``state_dict()``/``load_state_dict()`` carry the step counters, momentum buffers, a reused
    eigenbasis and the random generator of ``krylov_start="random"``, so a reloaded optimiser
    continues bit for bit.

    Args:
        params: Parameters to optimise, or parameter groups (own ``lr``/``weight_decay``).
        lr: Learning rate (default 1.0).
        damping: :math:`\delta > 0` (default 1.0).
        lanczos_steps: Lanczos steps = curvature products per step (default 5; capped at P).
        curvature: ``"ggn"`` (default) or ``"hessian"``.
        weight_decay: :math:`\lambda \ge 0`, added to gradient and curvature (default 0).
        momentum: Heavy-ball :math:`\mu \in [0, 1)` on :math:`d` (default 0).
        krylov_start: ``"gradient"`` (default) or ``"random"`` (a Gaussian start vector).
        update_every: Recompute the eigenbasis every this many steps (default 1: every step).
        max_step_norm: Trust-region bound on the update's norm :math:`\|\mathrm{lr}\,b\|`;
            longer updates are scaled down to it (default 1.0; ``None``: no bound). In the
            closure protocol it stands in for gradient clipping (there is no ``p.grad`` to clip
            before the step).
        seed: Seed of the optimiser's own generator for ``krylov_start="random"``; ``None``
            (default) derives it from ``torch.initial_seed()``, so ``torch.manual_seed`` fixes
            the draws without the optimiser consuming the global random stream.
        block_size: Curvature products per Krylov step (block Lanczos, default 1). With
            ``b > 1`` the Krylov space starts from the gradient and ``b - 1`` random
            directions, and each step multiplies ``b`` vectors in one vmapped backward pass
            (``is_grads_batched``), so the ``lanczos_steps`` dimensions take
            ``lanczos_steps / b`` sequential passes: a speed-up where one batch does not fill
            the device (GPUs); on the CPU a vmapped pass costs about as much as the loop.
        basis_dtype: Storage precision of the ``lanczos_steps x P`` Krylov basis, e.g.
            ``torch.bfloat16`` to halve its memory (the recurrence and the step stay in the
            parameters' dtype); default ``None``: the parameters' dtype. The step is formed in
            the basis's coordinates, :math:`d = Q^\top S f(\Theta) S^\top Q g` plus the
            complement, so no Ritz vectors are formed; ``update_every > 1`` keeps this one basis.
        basis_device: Where the basis is stored, e.g. ``"cpu"`` while training on a GPU;
            default ``None``: the parameters' device.
        adaptive_damping: Adapt :math:`\delta` after every step by the Levenberg--Marquardt
            rule (default False: ``damping`` stays fixed): the loss is re-evaluated at the new
            parameters (one forward under ``torch.no_grad()``, on the closure's batch or on
            ``step(closure, rho_closure=...)``'s), the reduction ratio :math:`\rho` = actual
            over predicted decrease of the undamped quadratic model moves ``damping`` (the
            starting value, in :math:`[10^{-4}, 10^4]`) by :math:`\times 3/2` for
            :math:`\rho < 1/4` and :math:`\times 2/3` for :math:`\rho > 3/4`, within
            :math:`[10^{-4}, 10^4]`. The damping in force is ``param_groups[i]["damping"]``
            (so ``state_dict`` carries it); :attr:`last_info` records ``rho`` and
            ``next_damping``. Needs the closure protocol and ``momentum=0``; see
            ``docs/guides/optimizers.md`` for the bias of the same-batch ratio and its guards.
        reuse_complement: What a reused basis (``update_every > 1``) does with the part
            :math:`r` of the new gradient outside it: ``"augment"`` (default): :math:`r`
            joins the basis, one curvature product on the current batch gives its coupling to
            the basis and the step is solved in the :math:`m+1` dimensional space;
            ``"rayleigh"``: the same product gives :math:`r` its own scale
            :math:`f(r^\top C r / r^\top r)`; ``"damped"``: the plain step :math:`r/\delta`
            with no product (the only behaviour before; on a Fashion-MNIST MLP it hit
            ``max_step_norm`` on 40 % of the steps). ``"augment"`` and ``"rayleigh"`` need the
            gradient's graph on reuse steps (``create_graph``), as a fresh basis does.
        warm_start: Start a fresh basis (``update_every > 1``) from the gradient and the
            previous basis's top Ritz vector(s), a block of width ``max(block_size, 2)``
            (block Lanczos; same number of products), instead of the gradient alone
            (default ``False``).
        krylov_tol: Stop the Lanczos run early, after at most ``lanczos_steps`` steps, once
            the damped system is solved to this relative residual in the Krylov space,
            :math:`\|(C + \delta I) d - g\| \le \mathrm{tol}\, \|g\|`, read off the tridiagonal
            for free (``tol`` of :func:`~lanczos_optim.krylov_solve`); default ``None``: always
            ``lanczos_steps`` steps. The residual reached is ``last_info.krylov_residual``.
        subspace_momentum: Add the previous step's direction to the Krylov space (one more
            curvature product): the step minimises the damped quadratic model over
            :math:`\mathrm{span}(K_m(C, g), d_{t-1})`, so the model chooses the momentum
            coefficient (see :mod:`lanczos_optim.optimizers._subspace`); needs
            ``update_every=1``. Default ``False``.

    Raises:
        ValueError: On an invalid hyperparameter, a group that differs in a shared option,
            mixed dtypes or devices, or non-floating parameters.

    Example:
        >>> import torch
        >>> from lanczos_optim import LanczosNewton
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> opt = LanczosNewton(model.parameters(), lanczos_steps=5)
        >>> def closure():
        ...     outputs = model(x)
        ...     return torch.nn.functional.cross_entropy(outputs, y), outputs
        >>> first = opt.step(closure)
        >>> for _ in range(4):
        ...     last = opt.step(closure)
        >>> bool(last < first), opt.last_info.num_products
        (True, 5)

    References:
        Granziol, Wan & Garipov, *Deep Curvature Suite*, 2019, https://arxiv.org/abs/1912.09656
        (section 2.2); Martens, *Deep learning via Hessian-free optimization*, ICML 2010.
    """

    _transform = "newton"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        damping: float = 1.0,
        lanczos_steps: int = OPTIMIZER_LANCZOS_STEPS,
        curvature: str = "ggn",
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        krylov_start: str = "gradient",
        update_every: int = 1,
        max_step_norm: float | None = 1.0,
        seed: int | None = None,
        block_size: int = 1,
        basis_dtype: torch.dtype | None = None,
        basis_device: torch.device | str | None = None,
        adaptive_damping: bool = False,
        reuse_complement: str = "augment",
        warm_start: bool = False,
        krylov_tol: float | None = None,
        subspace_momentum: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            damping=damping,
            lanczos_steps=lanczos_steps,
            curvature=curvature,
            weight_decay=weight_decay,
            momentum=momentum,
            krylov_start=krylov_start,
            update_every=update_every,
            max_step_norm=max_step_norm,
            seed=seed,
            block_size=block_size,
            basis_dtype=basis_dtype,
            basis_device=basis_device,
            adaptive_damping=adaptive_damping,
            reuse_complement=reuse_complement,
            warm_start=warm_start,
            krylov_tol=krylov_tol,
            subspace_momentum=subspace_momentum,
        )

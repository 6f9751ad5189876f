"""The base class of the Lanczos Newton optimisers: construction, groups, state, the step.

The step's phases live in mixins, one concept each: running and reading the closure
(:mod:`._closure_protocol`), the gradient and curvature product (:mod:`._gradients`), the
direction in a fresh or cached Krylov basis (:mod:`._basis_solve`); the hyperparameters and their
checks are in :mod:`._hyperparameters`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from lanczos_optim.flatten import flatten_tensors, unflatten_vector
from lanczos_optim.optimizers import (
    _amp,
    _damping,
    _param_groups,
    _protocols,
    _sub_batch,
    _subspace,
)
from lanczos_optim.optimizers._basis_solve import (
    BasisSolve,
    SkipStep,
    Solve,
    basis_due,
    cache_basis,
)
from lanczos_optim.optimizers._closure_curvature import (
    _mean_over_ranks,
)
from lanczos_optim.optimizers._closure_protocol import Closure, ClosureProtocol
from lanczos_optim.optimizers._gradients import GradientGraph
from lanczos_optim.optimizers._hyperparameters import Hyper, validate
from lanczos_optim.optimizers.step_info import StepInfo


class _LanczosNewtonBase(BasisSolve, GradientGraph, ClosureProtocol, Optimizer):
    """Shared base of :class:`LanczosNewton` and :class:`LanczosSaddleFreeNewton`."""

    _transform: ClassVar[str] = "newton"
    #: The closure returns the loss (with its graph) and the optimiser differentiates it itself;
    #: training loops (e.g. ``diagnostics.train_step``) read this to pick the step protocol.
    differentiates_closure: ClassVar[bool] = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        damping: float,
        lanczos_steps: int,
        curvature: str,
        weight_decay: float,
        momentum: float,
        krylov_start: str,
        update_every: int,
        max_step_norm: float | None,
        seed: int | None,
        block_size: int = 1,
        basis_dtype: torch.dtype | None = None,
        basis_device: torch.device | str | None = None,
        adaptive_damping: bool = False,
        reuse_complement: str = "augment",
        warm_start: bool = False,
        krylov_tol: float | None = None,
        subspace_momentum: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "damping": damping,
            "lanczos_steps": lanczos_steps,
            "curvature": curvature,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "krylov_start": krylov_start,
            "update_every": update_every,
            "max_step_norm": max_step_norm,
            "seed": seed,
            "block_size": block_size,
            "basis_dtype": basis_dtype,
            "basis_device": basis_device,
            "adaptive_damping": adaptive_damping,
            "reuse_complement": reuse_complement,
            "warm_start": warm_start,
            "krylov_tol": krylov_tol,
            "subspace_momentum": subspace_momentum,
        }
        validate(type(self).__name__, defaults)
        self._recorder = _protocols.OutputRecorder()
        super().__init__(params, defaults)
        self.last_info: StepInfo | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_recorder", _protocols.OutputRecorder())
        for group in self.param_groups:  # state dicts saved before block_size existed
            group.setdefault("block_size", 1)
            group.setdefault("basis_dtype", None)
            group.setdefault("basis_device", None)
            group.setdefault("adaptive_damping", False)
            group.setdefault("reuse_complement", "damped")  # what older runs did, exactly
            group.setdefault("warm_start", False)
            group.setdefault("krylov_tol", None)
            group.setdefault("subspace_momentum", False)

    # ------------------------------------------------------------------ parameter groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; it shares the eigenbasis, only ``lr`` and ``weight_decay`` differ.

        Raises:
            ValueError: On an invalid option, a shared option (``damping``, ``lanczos_steps``,
                ``curvature``, ...) that differs from the first group's, or parameters of
                another dtype or device than the others.

        Example:
            >>> import torch
            >>> from lanczos_optim import LanczosNewton
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
            >>> opt = LanczosNewton(model[0].parameters())
            >>> opt.add_param_group({"params": model[1].parameters(), "lr": 0.5})
            >>> [g["lr"] for g in opt.param_groups]
            [1.0, 0.5]
        """
        name = type(self).__name__
        _damping.inherit_damping(self.param_groups, param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate(name, group)
        _param_groups.check_shared(name, self.param_groups)
        params = self._params
        for p in group["params"]:
            if not p.is_floating_point() or p.is_complex():
                raise ValueError(f"{name} needs real floating-point parameters; got {p.dtype}.")
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) > 1:
            raise ValueError(
                f"{name} needs all parameters in one dtype and on one device (they form one "
                f"flat vector); got {sorted(str(k) for k in kinds)}."
            )

    def attach(self, model: torch.nn.Module) -> _LanczosNewtonBase:
        """Keep ``model``'s outputs, so that the GGN works without a ``(loss, outputs)`` closure.

        Registers a forward hook on ``model`` (and a gradient hook on each output): in the
        backward protocol (``loss.backward(create_graph=True); step()``, as Lightning, Accelerate
        and Hugging Face run it) the GGN is built from the recorded outputs; a closure that
        returns only the loss gets the outputs of its last forward pass. Outputs that are
        dicts or model outputs give their ``logits``, tuples their first item. Call it again to
        attach another module; :meth:`detach` removes the hook.

        Returns:
            The optimiser, so that ``opt = LanczosNewton(model.parameters()).attach(model)``.

        Example:
            >>> import torch
            >>> from lanczos_optim import LanczosNewton
            >>> _ = torch.manual_seed(0)
            >>> model = torch.nn.Linear(4, 3)
            >>> opt = LanczosNewton(model.parameters(), lanczos_steps=3).attach(model)
            >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            >>> losses = []
            >>> for _ in range(3):
            ...     loss = torch.nn.functional.cross_entropy(model(x), y)
            ...     loss.backward(create_graph=True)
            ...     opt.step()
            ...     opt.zero_grad()
            ...     losses.append(float(loss.detach()))
            >>> losses[-1] < losses[0]
            True
        """
        self._recorder.attach(model)
        self._attached_model = model  # its buffers are restored around a curvature_closure
        return self

    def detach(self) -> None:
        """Remove the hook of :meth:`attach`.

        Example:
            >>> import torch
            >>> from lanczos_optim import LanczosNewton
            >>> model = torch.nn.Linear(2, 2)
            >>> opt = LanczosNewton(model.parameters()).attach(model)
            >>> opt.detach()
            >>> opt._recorder.attached
            False
        """
        self._recorder.detach()
        self._attached_model = None

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether ``GradScaler.step`` should leave the loss scale to :meth:`step` (see _amp).

        True, except while :meth:`step` runs the closure: no GradScaler steps the optimiser
        from in there, while Lightning's bf16 gradient clipping asks there and refuses to clip
        for an optimiser that unscales itself.

        Example:
            >>> import torch
            >>> from lanczos_optim import LanczosNewton
            >>> LanczosNewton([torch.nn.Parameter(torch.ones(2))])._step_supports_amp_scaling
            True
        """
        return not getattr(self, "_in_closure", False)

    # ------------------------------------------------------------------ helpers
    @property
    def _params(self) -> list[Tensor]:
        return _param_groups.all_params(self.param_groups)

    def _global_state(self) -> dict[str, Any]:
        # Like LBFGS, global state lives on the first parameter, so state_dict/load cast it.
        state = self.state[self._params[0]]
        state.setdefault("step", 0)
        state.setdefault("skipped_steps", 0)
        return state

    def _generator(self, state: dict[str, Any], seed: int | None) -> torch.Generator:
        gen = torch.Generator(device="cpu")
        saved = state.get("generator_state")
        if saved is not None:
            gen.set_state(saved.detach().to(device="cpu", dtype=torch.uint8))
        elif seed is not None:
            gen.manual_seed(seed)
        else:  # follow torch.manual_seed without consuming the user's global random stream
            gen.manual_seed((torch.initial_seed() + 0x5EED) % 2**63)
        return gen

    def _warn_once_no_gradient(self) -> None:
        if not getattr(self, "_warned_no_gradient", False):
            self._warned_no_gradient = True
            warnings.warn(
                f"{type(self).__name__}: the loss depends on none of the optimised parameters; "
                "the step changes nothing (this warning is shown once).",
                RuntimeWarning,
                stacklevel=3,
            )

    def _skip(
        self, state: dict[str, Any], info: StepInfo, reason: str, loss: Tensor | None
    ) -> Tensor | None:
        state["skipped_steps"] += 1
        info.skipped, info.reason = True, reason
        warnings.warn(
            f"{type(self).__name__}: {reason} at step {state['step'] + 1}; the step was "
            f"skipped, parameters and optimiser state unchanged "
            f"({state['skipped_steps']} skipped so far).",
            RuntimeWarning,
            stacklevel=3,
        )
        self.last_info = info
        return None if loss is None else loss.detach()

    # ------------------------------------------------------------------ the step
    def step(  # type: ignore[override]
        self,
        closure: Closure | None = None,
        *,
        rho_closure: Closure | None = None,
        curvature_closure: Closure | None = None,
    ) -> Tensor | None:
        """Take one step; see the class docstring for the closure and backward protocols.

        The step runs in four phases: the closure (forward pass and protocol checks), the
        gradient and the curvature basis (a fresh Lanczos run, or the cached Ritz pairs), the
        direction (momentum, learning rate, ``max_step_norm``) and the bookkeeping, which
        writes parameters, gradients and state only once nothing can fail any more. The
        closure runs under the caller's autocast; everything else runs with autocast off.

        Args:
            closure: Re-evaluates the model under ``torch.enable_grad()`` and returns the loss
                (attached to its graph) or ``(loss, outputs)``. Without a closure (or with one
                that runs ``backward(create_graph=True)`` itself, as Lightning's does) the
                gradients and their graph are read from ``p.grad``: the backward protocol.
            rho_closure: With ``adaptive_damping=True`` only: a closure on a *second* batch
                (same form as ``closure``), evaluated under ``torch.no_grad()`` before and after
                the step for the actual decrease of the reduction ratio; default None: the
                closure's own batch is re-evaluated after the step.
            curvature_closure: Optional (keyword only): like ``closure`` (the loss, or
                ``(loss, outputs)`` for the GGN) on a smaller batch. On the steps that compute a
                fresh basis it runs once and the curvature products use its graph, while the
                gradient still comes from ``closure`` (or ``p.grad``): curvature from a
                sub-batch. The buffers of an :meth:`attach`-ed model (BatchNorm running
                statistics) are restored after it; without ``attach`` its forward updates
                them as any forward in train mode does.

        Returns:
            The closure's loss, detached (None without a closure).

        Raises:
            RuntimeError: When neither protocol applies (no closure and no gradient graph, a
                backward without ``create_graph``), when the closure breaks the protocol, or on
                sparse gradients; ``adaptive_damping=True`` without a closure.

        Example:
            Adaptive damping with the reduction ratio measured on the union of the step's batch
            and a second one from another loader (the mean of the two losses; on a second batch
            alone the ratio is pessimistic: ``benchmarks/damping_study.py``):

            >>> import math
            >>> import torch
            >>> from lanczos_optim import LanczosNewton
            >>> _ = torch.manual_seed(0)
            >>> model = torch.nn.Linear(4, 3)
            >>> data = [(torch.randn(32, 4), torch.randint(0, 3, (32,))) for _ in range(6)]
            >>> loader, second_loader = data[:3], data[3:]
            >>> opt = LanczosNewton(model.parameters(), adaptive_damping=True)
            >>> loss_fn = torch.nn.functional.cross_entropy
            >>> for (x, y), (x2, y2) in zip(loader, second_loader):
            ...     def closure():
            ...         outputs = model(x)
            ...         return loss_fn(outputs, y), outputs
            ...     def rho_closure():
            ...         return 0.5 * (closure()[0] + loss_fn(model(x2), y2))
            ...     loss = opt.step(closure, rho_closure=rho_closure)
            >>> info = opt.last_info  # the ratio and the damping it sets for the next step
            >>> math.isfinite(info.rho), info.next_damping == opt.param_groups[0]["damping"]
            (True, True)
        """
        _sub_batch.check(curvature_closure)
        sub = _sub_batch.in_callers_autocast(self._params[0].device, curvature_closure)
        rho_closure = _damping.user_autocast(self._params[0].device, rho_closure)
        with _amp.outside_autocast(self._params[0].device, closure) as run:
            try:
                return self._step(run, rho_closure, sub)
            finally:
                self._recorder.records.clear()
                self._recorder.frozen = False

    def _step(
        self, closure: Closure | None, rho_closure: Closure | None, sub: Closure | None = None
    ) -> Tensor | None:
        t_start = time.perf_counter()
        group = self.param_groups[0]
        _param_groups.check_shared(type(self).__name__, self.param_groups)
        _param_groups.warn_scheduled_momentum(self, self.param_groups)
        adaptive = _damping.AdaptiveStep.start(self, closure, rho_closure)
        hyper = Hyper.of(group)
        use_ggn = group["curvature"] == "ggn"
        loss, outputs, backward, t_closure = self._run_closure(closure, group["curvature"])
        if adaptive is not None:
            adaptive.refuse_backward(backward)
        self._recorder.frozen = True
        state = self._global_state()
        info = StepInfo(
            step=state["step"],
            loss=math.nan if loss is None else float(_mean_over_ranks(loss.detach().reshape(1))),
            lr=hyper.lr,
            damping=hyper.damping,
            closure_seconds=t_closure - t_start,
            next_damping=hyper.damping,
        )
        if loss is not None and not math.isfinite(info.loss):
            return self._skip(state, info, "non-finite loss", loss)
        scale = self._loss_scale(backward)
        if scale is None:
            return _quiet_skip(self, info, "GradScaler found inf/nan gradients", loss)
        source = None  # where outputs.float() read from, when the loss used the uncast outputs
        if backward is not None:
            index, direct = backward.index, set()
        else:
            index, direct, source = self._live_parameters(loss, outputs, use_ggn)  # type: ignore[arg-type]
        if not index:
            info.reason = "no parameter received a gradient"
            self._warn_once_no_gradient()
            self.last_info = info
            return None if loss is None else loss.detach()
        live = [self._params[i] for i in index]
        hyper = hyper.per_parameter(self.param_groups, index, live)
        refresh = basis_due(state, index, int(group["update_every"]))
        graph = refresh or group["reuse_complement"] != "damped"  # products on reuse steps too
        own = graph and sub is None  # the curvature of the closure's own graph
        try:
            if backward is not None:
                grads, product = self._from_backward(backward, live, own, use_ggn, scale)
            else:
                grads, product = self._differentiate(
                    loss,  # type: ignore[arg-type]
                    outputs,
                    live,
                    direct,
                    own,
                    use_ggn,
                    source,
                )
            if graph and sub is not None:
                product = _sub_batch.curvature_product(self, sub, live, group["curvature"])
            info.gradient_seconds = time.perf_counter() - t_closure
            grads, flat_g = _mean_gradient(grads, live, hyper.weight_decay, info)
            with torch.no_grad():
                solve = self._solve(group, state, product, live, flat_g, refresh, hyper, info)
                update, direction = self._direction(solve, live, group, hyper, info)
                if adaptive is not None:
                    adaptive.keep(live)
                self._commit(state, live, grads, (update, direction), solve, index, refresh, hyper)
        except SkipStep as skip:
            return self._skip(state, info, str(skip), loss)
        if adaptive is not None:
            adaptive.finish(live, solve.info, hyper.weight_decay, info)
        info.step = state["step"]
        _close_timings(info, t_start)
        self.last_info = info
        return None if loss is None else loss.detach()

    # ------------------------------------------------------------------ phase 3: the direction
    def _direction(
        self,
        solve: Solve,
        live: list[Tensor],
        group: dict[str, Any],
        hyper: Hyper,
        info: StepInfo,
    ) -> tuple[Tensor, Tensor]:
        """The update ``lr * direction`` (shortened to ``max_step_norm``) and the direction."""
        # Momentum acts on d (heavy ball, as torch.optim.SGD without dampening).
        direction = solve.d
        if hyper.momentum != 0.0:
            bufs = [self.state[p].get("momentum_buffer") for p in live]
            if all(b is not None for b in bufs):
                # momentum * buffers + d, in the one new buffer
                direction = flatten_tensors(bufs).mul_(hyper.momentum).add_(solve.d)  # type: ignore[arg-type]
        if hyper.momentum != 0.0 or group["subspace_momentum"]:
            update = hyper.lr * direction  # the direction outlives the step
        else:
            update = direction.mul_(hyper.lr)  # the same values, in the direction's buffer
        scale = 1.0
        bound = group["max_step_norm"]
        norm = float(torch.linalg.vector_norm(update))
        if bound is not None and norm > bound:
            scale = bound / norm
            update.mul_(scale)
            norm = bound
        info.step_norm, info.step_scale = norm, scale
        if isinstance(hyper.lr, Tensor):  # per-group learning rates: no scalar quadratic model
            info.predicted_decrease = info.step_curvature = math.nan
        else:
            info.predicted_decrease = solve.info.predicted_decrease(hyper.lr * scale)
            info.step_curvature = (hyper.lr * scale) ** 2 * solve.info.d_abs_curvature_d
        return update, direction

    # ------------------------------------------------------------------ phase 4: bookkeeping
    def _commit(
        self,
        state: dict[str, Any],
        live: list[Tensor],
        grads: list[Tensor],
        move: tuple[Tensor, Tensor],
        solve: Solve,
        index: list[int],
        refresh: bool,
        hyper: Hyper,
    ) -> None:
        """Write the step: gradients, parameters, momentum, generator, basis cache, counter.

        Nothing before this changed the parameters or the state.
        """
        update, direction = move
        for p, g, u in zip(live, grads, unflatten_vector(update, live), strict=True):
            p.grad = g
            p.sub_(u)
        if hyper.momentum != 0.0:  # views of the direction (never updated in place), no copy
            for p, b in zip(live, unflatten_vector(direction.detach(), live), strict=True):
                self.state[p]["momentum_buffer"] = b
        if solve.generator is not None:
            state["generator_state"] = solve.generator.get_state()
        cache_basis(state, solve, index, refresh, int(self.param_groups[0]["update_every"]))
        if self.param_groups[0]["subspace_momentum"]:
            _subspace.remember(state, direction, index)
        else:
            for key in _subspace.STATE_KEYS:
                state.pop(key, None)
        state["step"] += 1


def _quiet_skip(
    opt: _LanczosNewtonBase, info: StepInfo, reason: str, loss: Tensor | None
) -> Tensor | None:
    """Skip without a warning (GradScaler skips steps with inf gradients as routine)."""
    info.skipped, info.reason = True, reason
    opt.last_info = info
    return None if loss is None else loss.detach()


def _mean_gradient(
    grads: list[Tensor], live: list[Tensor], weight_decay: float | Tensor, info: StepInfo
) -> tuple[list[Tensor], Tensor]:
    """The gradients (averaged over ranks) and the flat gradient with weight decay.

    The returned gradients are views into one flat buffer (the flat gradient itself without
    weight decay), so the step keeps one gradient-sized buffer, not a flat copy besides.

    Raises:
        SkipStep: When the gradient is not finite.
    """
    with torch.no_grad():
        flat = _mean_over_ranks(_one_buffer(grads))  # data-parallel: mean over ranks
        grads = unflatten_vector(flat, live)
        flat_g = flat
        if isinstance(weight_decay, Tensor) or weight_decay != 0.0:
            flat_g = flatten_tensors(live).mul_(weight_decay).add_(flat)  # flat + wd * params
        info.grad_norm = float(torch.linalg.vector_norm(flat_g))
    if not math.isfinite(info.grad_norm):
        raise SkipStep("non-finite gradient")
    return grads, flat_g


def _one_buffer(grads: list[Tensor]) -> Tensor:
    """The flat buffer whose consecutive slices ``grads`` are, else a flat copy of ``grads``.

    The GGN gradient arrives as slices of one buffer
    (:func:`~lanczos_optim._graph_products.ggn_product`): it is used as it is, not copied.
    """
    offset = 0
    storage = grads[0].untyped_storage() if grads else None
    for g in grads:
        same = g.untyped_storage().data_ptr() == storage.data_ptr()  # type: ignore[union-attr]
        if not same or g.storage_offset() != offset or not g.is_contiguous():
            return flatten_tensors(grads)
        offset += g.numel()
    if not grads or offset * grads[0].element_size() != storage.nbytes():  # type: ignore[union-attr]
        return flatten_tensors(grads)
    return torch.as_strided(grads[0], (offset,), (1,), 0)


def _close_timings(info: StepInfo, t_start: float) -> None:
    """Set the total time and the bookkeeping share (what no other timer counted)."""
    info.total_seconds = time.perf_counter() - t_start
    info.bookkeeping_seconds = max(
        0.0,
        info.total_seconds - info.closure_seconds - info.gradient_seconds - info.product_seconds,
    )

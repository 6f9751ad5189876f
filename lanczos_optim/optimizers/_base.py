"""The machinery shared by the Lanczos Newton optimisers: closure protocol, state, faults."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from lanczos_optim._graph_products import BatchedProduct, ggn_product, hessian_product
from lanczos_optim._outputs import select_outputs
from lanczos_optim.flatten import flatten_tensors, unflatten_vector
from lanczos_optim.krylov import KrylovSolveInfo, _solve_in_basis, krylov_solve
from lanczos_optim.optimizers._closure_curvature import (
    _ClosureCurvature,
    _mean_over_ranks,
    _world_size,
)
from lanczos_optim.optimizers.step_info import StepInfo

__all__ = ["CURVATURES", "KRYLOV_STARTS", "StepInfo"]

#: Curvature matrices the optimisers can use.
CURVATURES = ("ggn", "hessian")
#: Start vectors of the per-step Lanczos run.
KRYLOV_STARTS = ("gradient", "random")

Closure = Callable[[], Any]

_CACHE_KEYS = (
    "ritz_vectors",
    "ritz_values",
    "ritz_weights",
    "ritz_residuals",
    "basis_params",
    "basis_age",
)
_FREED_GRAPH = "backward through the graph a second time"


def _cpu64(values: Sequence[float]) -> Tensor:
    """Float64 values on the CPU, where the small Lanczos quantities live."""
    return torch.tensor(values, dtype=torch.float64, device="cpu")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate(name: str, hp: dict[str, Any]) -> None:
    """Raise torch-style errors on invalid hyperparameters."""
    lr, damping = hp["lr"], hp["damping"]
    if not _is_number(lr) or lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not _is_number(damping) or damping <= 0.0:
        raise ValueError(f"Invalid damping value: {damping} (must be > 0)")
    steps = hp["lanczos_steps"]
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"Invalid lanczos_steps value: {steps} (must be an int >= 1)")
    if hp["curvature"] not in CURVATURES:
        raise ValueError(f"Invalid curvature: {hp['curvature']!r}; expected one of {CURVATURES}")
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


def _graph_leaves(root: Any, stop: Any = None) -> tuple[set[int], bool]:
    """Ids of the leaf tensors reached from autograd node ``root``, not walking past ``stop``.

    Returns the ids and whether ``stop`` was reached. Only reads the graph; computes nothing.
    """
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [root]
    reached_stop = False
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if stop is not None and node is stop:
            reached_stop = True
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
            continue
        stack.extend(fn for fn, _ in node.next_functions)
    return found, reached_stop


class _LanczosNewtonBase(Optimizer):
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
        }
        _validate(type(self).__name__, defaults)
        super().__init__(params, defaults)
        self.last_info: StepInfo | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before block_size existed
            group.setdefault("block_size", 1)

    # ------------------------------------------------------------------ parameter groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add the (only) parameter group; a second group raises ``ValueError``."""
        name = type(self).__name__
        if self.param_groups:
            raise ValueError(
                f"{name} doesn't support per-parameter options (parameter groups): all "
                "parameters share one Lanczos eigenbasis; pass them as one group."
            )
        super().add_param_group(param_group)
        group = self.param_groups[0]
        _validate(name, group)
        params = group["params"]
        for p in params:
            if not p.is_floating_point() or p.is_complex():
                raise ValueError(f"{name} needs real floating-point parameters; got {p.dtype}.")
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) > 1:
            raise ValueError(
                f"{name} needs all parameters in one dtype and on one device (they form one "
                f"flat vector); got {sorted(str(k) for k in kinds)}."
            )

    # ------------------------------------------------------------------ helpers
    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

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

    def _protocol_error(self, what: str) -> RuntimeError:
        name = type(self).__name__
        return RuntimeError(
            f"{name}.step(closure): {what} The closure must only run the forward pass and "
            "return the loss still attached to its graph (or (loss, outputs) with the model "
            f"outputs for curvature='ggn'); {name} differentiates it and writes p.grad itself."
        )

    def _parse(self, ret: object, curvature: str) -> tuple[Tensor, Tensor | None]:
        outputs = None
        if isinstance(ret, (tuple, list)):
            if len(ret) != 2:
                raise self._protocol_error(
                    f"the closure returned a {type(ret).__name__} of length {len(ret)}."
                )
            ret, outputs = ret
        if not isinstance(ret, Tensor) or ret.ndim != 0 or not ret.is_floating_point():
            got = (
                f"a tensor of shape {tuple(ret.shape)}"
                if isinstance(ret, Tensor)
                else type(ret).__name__
            )
            raise self._protocol_error(f"the loss must be a scalar tensor; got {got}.")
        if not ret.requires_grad or ret.grad_fn is None:
            raise self._protocol_error(
                "the loss has no autograd graph (was it detached, a .item(), or computed under "
                "torch.no_grad()?)."
            )
        if curvature == "ggn":
            if outputs is not None and not isinstance(outputs, Tensor):
                outputs = self._select_outputs(outputs)
            if outputs is None:
                raise self._protocol_error(
                    "curvature='ggn' needs the model outputs, but the closure returned only "
                    "the loss: return (loss, outputs)."
                )
            if not isinstance(outputs, Tensor) or not outputs.requires_grad:
                raise self._protocol_error(
                    "the outputs must be the model's output tensor, attached to the graph of "
                    "the loss."
                )
        return ret, outputs

    def _select_outputs(self, outputs: object) -> Tensor:
        """The logits of dict-like outputs (a ``ModelOutput``); other structures are refused."""
        try:
            return select_outputs(outputs, None, need_tensor=True, who=type(self).__name__)
        except TypeError as err:
            raise self._protocol_error(
                f"{err} Return (loss, logits) with the tensor the loss was computed from."
            ) from err

    def _check_no_backward(
        self, params: Sequence[Tensor], before: Sequence[tuple[Tensor | None, int]]
    ) -> None:
        for p, (old, version) in zip(params, before, strict=True):
            g = p.grad
            if g is None or (g is old and g._version == version):
                continue
            if bool(g.ne(0).any()):
                raise self._protocol_error("the closure already called backward().")

    def _warn_once_no_gradient(self) -> None:
        if not getattr(self, "_warned_no_gradient", False):
            self._warned_no_gradient = True
            warnings.warn(
                f"{type(self).__name__}: the loss depends on none of the optimised parameters; "
                "the step changes nothing (this warning is shown once).",
                RuntimeWarning,
                stacklevel=4,
            )

    def _skip(self, state: dict[str, Any], info: StepInfo, reason: str, loss: Tensor) -> Tensor:
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
        return loss.detach()

    # ------------------------------------------------------------------ the step
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """Take one step; see the class docstring for the closure protocol.

        Args:
            closure: Re-evaluates the model under ``torch.enable_grad()`` and returns the loss
                (attached to its graph) or ``(loss, outputs)``. Required.

        Returns:
            The closure's loss, detached.

        Raises:
            RuntimeError: Without a closure, or when the closure breaks the protocol, or on
                sparse gradients.
        """
        name = type(self).__name__
        if closure is None:
            raise RuntimeError(
                f"{name}.step() requires a closure that runs the forward pass and returns the "
                "loss (or (loss, outputs) for curvature='ggn'), e.g. optimizer.step(closure)."
            )
        t_start = time.perf_counter()
        group = self.param_groups[0]
        lr, damping = float(group["lr"]), float(group["damping"])
        wd, momentum = float(group["weight_decay"]), float(group["momentum"])
        candidates = [p for p in self._params if p.requires_grad]
        before = [(p.grad, p.grad._version if p.grad is not None else 0) for p in candidates]
        with torch.enable_grad():
            ret = closure()
        t_closure = time.perf_counter()
        loss, outputs = self._parse(ret, group["curvature"])
        self._check_no_backward(candidates, before)
        state = self._global_state()
        world = _world_size()
        loss_value = float(_mean_over_ranks(loss.detach().reshape(1)))
        info = StepInfo(
            step=state["step"],
            loss=loss_value,
            lr=lr,
            damping=damping,
            closure_seconds=t_closure - t_start,
        )
        if not math.isfinite(info.loss):
            return self._skip(state, info, "non-finite loss", loss)

        # Parameters that received a gradient, found by reading (not running) the graph.
        use_ggn = group["curvature"] == "ggn"
        stop = outputs.grad_fn if use_ggn and outputs is not None else None
        direct, reached_outputs = _graph_leaves(loss.grad_fn, stop)
        via_outputs: set[int] = set()
        if use_ggn:
            if stop is not None and not reached_outputs:
                raise self._protocol_error(
                    "the loss was not computed from the outputs the closure returned."
                )
            via_outputs = _graph_leaves(stop)[0] if stop is not None else {id(outputs)}
        reached = direct | via_outputs
        index = [i for i, p in enumerate(self._params) if p.requires_grad and id(p) in reached]
        live = [self._params[i] for i in index]
        if not live:
            info.reason = "no parameter received a gradient"
            self._warn_once_no_gradient()
            self.last_info = info
            return loss.detach()

        every = int(group["update_every"])
        cached = state.get("ritz_vectors")
        refresh = (
            every == 1
            or cached is None
            or state.get("basis_params") != index
            or state.get("basis_age", 0) + 1 >= every
        )
        product: BatchedProduct | None = None
        try:
            with torch.enable_grad():
                if refresh and use_ggn:
                    grads, product = ggn_product(loss, outputs, live)  # type: ignore[arg-type]
                    if any(id(p) in direct for p in live):
                        # The loss also depends on parameters directly (not via the outputs),
                        # e.g. a penalty in the closure: take its full gradient.
                        full = torch.autograd.grad(loss, live, retain_graph=True, allow_unused=True)
                        grads = [
                            g if g is not None else torch.zeros_like(p)
                            for g, p in zip(full, live, strict=True)
                        ]
                elif refresh:
                    grads, product = hessian_product(loss, live)
                else:
                    full = torch.autograd.grad(loss, live, allow_unused=True)
                    grads = [
                        torch.zeros_like(p) if g is None else g
                        for g, p in zip(full, live, strict=True)
                    ]
        except RuntimeError as err:
            if _FREED_GRAPH in str(err):
                raise self._protocol_error("the closure already called backward().") from err
            raise
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                f"{name} does not support sparse gradients (e.g. nn.Embedding(sparse=True)); "
                "use dense gradients."
            )
        t_grad = time.perf_counter()
        info.gradient_seconds = t_grad - t_closure

        if world > 1:  # data-parallel: the mean gradient and curvature over all ranks' batches
            grads = unflatten_vector(_mean_over_ranks(flatten_tensors(grads)), live)
        with torch.no_grad():
            flat_g = flatten_tensors(grads)
            if wd != 0.0:
                flat_g = flat_g + wd * flatten_tensors(live)
            info.grad_norm = float(torch.linalg.vector_norm(flat_g))
            if not math.isfinite(info.grad_norm):
                return self._skip(state, info, "non-finite gradient", loss)

            gen = None
            if refresh:
                if product is None:  # pragma: no cover - set above whenever refresh
                    raise RuntimeError("internal error: no curvature product.")

                curvature = _ClosureCurvature(product, live, wd, flat_g)
                block = int(group["block_size"])
                random = group["krylov_start"] == "random"
                gen = self._generator(state, group["seed"]) if random or block > 1 else None
                # Under torch.distributed the operator's sync_vector gives every rank rank 0's
                # start (vector or block), so all ranks run the same recurrence.
                start = "random" if random else None
                try:
                    d, kinfo = krylov_solve(
                        curvature,
                        flat_g,
                        int(group["lanczos_steps"]),
                        damping,
                        self._transform,
                        v0=start,
                        generator=gen,
                        return_info=True,
                        block_size=block,
                    )
                except FloatingPointError:
                    return self._skip(state, info, "non-finite curvature", loss)
                if not isinstance(kinfo, KrylovSolveInfo):  # pragma: no cover
                    raise RuntimeError("internal error: krylov_solve returned no info.")
                info.num_products = kinfo.num_products
                info.product_seconds = kinfo.product_seconds
                basis_age = 0
            else:
                theta = _cpu64(state["ritz_values"])
                d, kinfo = _solve_in_basis(theta, cached, damping, self._transform, flat_g)
                kinfo.weights = _cpu64(state["ritz_weights"])
                kinfo.residuals = _cpu64(state["ritz_residuals"])
                basis_age = state["basis_age"] + 1
                if not bool(torch.isfinite(d).all()):
                    return self._skip(state, info, "non-finite curvature", loss)

            info.ritz_values, info.weights = kinfo.ritz_values, kinfo.weights
            info.residuals, info.krylov_fraction = kinfo.residuals, kinfo.krylov_fraction
            info.num_clipped, info.basis_age = kinfo.num_clipped, basis_age

            # Momentum acts on d (heavy ball, as torch.optim.SGD without dampening).
            direction = d
            if momentum != 0.0:
                bufs = [self.state[p].get("momentum_buffer") for p in live]
                if all(b is not None for b in bufs):
                    direction = momentum * flatten_tensors(bufs) + d  # type: ignore[arg-type]
            update = lr * direction
            scale = 1.0
            bound = group["max_step_norm"]
            norm = float(torch.linalg.vector_norm(update))
            if bound is not None and norm > bound:
                scale = bound / norm
                update = update * scale
                norm = bound
            info.step_norm, info.step_scale = norm, scale
            info.predicted_decrease = kinfo.predicted_decrease(lr * scale)
            info.step_curvature = (lr * scale) ** 2 * kinfo.d_abs_curvature_d

            # Commit: nothing above changed the parameters or the state.
            for p, g, u in zip(live, grads, unflatten_vector(update, live), strict=True):
                p.grad = g
                p.sub_(u)
            if momentum != 0.0:
                for p, b in zip(live, unflatten_vector(direction, live), strict=True):
                    self.state[p]["momentum_buffer"] = b.clone()
            if gen is not None:
                state["generator_state"] = gen.get_state()
            if every > 1 and refresh and kinfo.ritz_vectors.shape[1] > 0:
                state["ritz_vectors"] = kinfo.ritz_vectors
                state["ritz_values"] = kinfo.ritz_values.tolist()
                state["ritz_weights"] = kinfo.weights.tolist()
                state["ritz_residuals"] = kinfo.residuals.tolist()
                state["basis_params"] = index
                state["basis_age"] = basis_age
            elif every > 1 and not refresh:
                state["basis_age"] = basis_age
            else:
                for key in _CACHE_KEYS:
                    state.pop(key, None)
            state["step"] += 1
            info.step = state["step"]

        info.total_seconds = time.perf_counter() - t_start
        info.bookkeeping_seconds = max(
            0.0,
            info.total_seconds
            - info.closure_seconds
            - info.gradient_seconds
            - info.product_seconds,
        )
        self.last_info = info
        return loss.detach()

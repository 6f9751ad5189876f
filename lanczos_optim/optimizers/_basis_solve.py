"""Phase 2 of a step: the damped Newton direction in a fresh Lanczos basis or a cached one.

:class:`BasisSolve` is a mixin of the Lanczos Newton optimisers. A fresh basis runs Lanczos on
the closure's curvature (warm-started from the cached basis with ``warm_start``, extended by the
previous direction with ``subspace_momentum``); with ``update_every > 1`` the basis is cached in
the optimiser's state (once, as the ``[m, P]`` Krylov basis and the small float64 eigenvectors
of its tridiagonal) and reused, its complement treated by ``reuse_complement``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lanczos_optim._augmented import _augmented_solve
from lanczos_optim._graph_products import BatchedProduct
from lanczos_optim._slices import all_finite
from lanczos_optim._warm_start import _warm_solver
from lanczos_optim.krylov import KrylovSolveInfo, _solve_in_basis, krylov_solve
from lanczos_optim.optimizers import _protocols, _subspace
from lanczos_optim.optimizers._closure_curvature import _ClosureCurvature
from lanczos_optim.optimizers._hyperparameters import Hyper
from lanczos_optim.optimizers.step_info import StepInfo

CACHE_KEYS = (
    "krylov_basis",
    "ritz_coordinates",
    "ritz_vectors",  # the Ritz vectors themselves, cached before the basis was stored instead
    "ritz_values",
    "ritz_weights",
    "ritz_residuals",
    "basis_params",
    "basis_age",
)


def cpu64(values: Sequence[float]) -> Tensor:
    """Float64 values on the CPU, where the small Lanczos quantities live."""
    return torch.tensor(values, dtype=torch.float64, device="cpu")


class SkipStep(Exception):
    """A fault (non-finite gradient or curvature) that skips the step: nothing is written."""


class Solve(NamedTuple):
    """A solve in a Krylov basis: ``d``, what the solve learned, its generator, basis age."""

    d: Tensor
    info: KrylovSolveInfo
    generator: torch.Generator | None
    basis_age: int


def basis_due(state: dict[str, Any], index: list[int], every: int) -> bool:
    """Whether this step computes a fresh Lanczos basis instead of reusing the cached one."""
    return (
        every == 1
        or state.get("krylov_basis") is None
        or state.get("basis_params") != index
        or state.get("basis_age", 0) + 1 >= every
    )


def cached_basis(
    state: dict[str, Any], group: dict[str, Any], like: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The cached Ritz values, basis ``Q`` (back in its storage dtype and device) and ``S``.

    ``load_state_dict`` casts state tensors to the parameters' dtype (exactly, so the stored
    values come back bit for bit); the basis goes back to its storage dtype here.
    """
    theta = cpu64(state["ritz_values"])
    q = state["krylov_basis"]
    q = q.to(device=group["basis_device"] or like.device, dtype=group["basis_dtype"] or q.dtype)
    s = torch.tensor(state["ritz_coordinates"], dtype=torch.float64, device="cpu")
    return theta, q, s.reshape(theta.numel(), theta.numel())


def cache_basis(
    state: dict[str, Any], solve: Solve, index: list[int], refresh: bool, every: int
) -> None:
    r"""Keep the basis for the next ``every - 1`` steps, or drop a cache no longer used.

    The ``[m, P]`` Krylov basis :math:`Q` is kept once, with the small float64 eigenvectors
    :math:`S` of the tridiagonal and the Ritz values, not as Ritz vectors :math:`Q^\top S`.
    """
    kinfo = solve.info
    if every > 1 and refresh and kinfo.basis.shape[0] > 0:
        for key in CACHE_KEYS:
            state.pop(key, None)
        state["krylov_basis"] = kinfo.basis
        state["ritz_coordinates"] = kinfo.coordinates.tolist()
        state["ritz_values"] = kinfo.ritz_values.tolist()
        state["ritz_weights"] = kinfo.weights.tolist()
        state["ritz_residuals"] = kinfo.residuals.tolist()
        state["basis_params"] = index
        state["basis_age"] = solve.basis_age
    elif every > 1 and not refresh:
        state["krylov_basis"] = kinfo.basis  # back in its storage dtype after load_state_dict
        state["basis_age"] = solve.basis_age
    else:
        for key in CACHE_KEYS:
            state.pop(key, None)


class BasisSolve:
    """Mixin: the step's direction in a Krylov basis (uses ``_generator``, ``_transform``)."""

    def _solve(
        self,
        group: dict[str, Any],
        state: dict[str, Any],
        product: BatchedProduct | None,
        live: list[Tensor],
        flat_g: Tensor,
        refresh: bool,
        hyper: Hyper,
        info: StepInfo,
    ) -> Solve:
        """The damped Newton direction ``d`` in a fresh Lanczos basis or in the cached one."""
        damping, wd = hyper.damping, hyper.weight_decay
        if refresh:
            if product is None:  # pragma: no cover - set by _differentiate whenever refresh
                raise RuntimeError("internal error: no curvature product.")
            curvature = _ClosureCurvature(product, live, wd, flat_g)
            block = int(group["block_size"])
            random = group["krylov_start"] == "random"
            gen = self._generator(state, group["seed"]) if random or block > 1 else None
            # Under torch.distributed the operator's sync_vector gives every rank rank 0's
            # start (vector or block), so all ranks run the same recurrence.
            previous = self._previous_basis(state, group, live, flat_g)
            solver = krylov_solve if previous is None else _warm_solver(previous)
            try:
                d, kinfo = solver(
                    curvature,
                    flat_g,
                    int(group["lanczos_steps"]),
                    damping,
                    self._transform,
                    v0="random" if random else None,
                    generator=gen,
                    return_info=True,
                    block_size=block,
                    basis_dtype=group["basis_dtype"],
                    basis_device=group["basis_device"],
                    tol=group["krylov_tol"],
                )
            except FloatingPointError:
                raise SkipStep("non-finite curvature") from None
            except RuntimeError as err:
                if _protocols.is_compiled_double_backward(err):
                    raise RuntimeError(
                        f"{type(self).__name__}: torch.compile'd models cannot be differentiated "
                        "twice; use curvature='ggn' with optimizer.attach(compiled_model) (eager "
                        "curvature products on model._orig_mod)."
                    ) from err
                raise
            if not isinstance(kinfo, KrylovSolveInfo):  # pragma: no cover
                raise RuntimeError("internal error: krylov_solve returned no info.")
            if group["subspace_momentum"]:
                prev = _subspace.previous(state, self._live_index(live), flat_g)
                try:
                    d, kinfo = _subspace.extend(kinfo, d, prev, flat_g, curvature.matvec)
                except FloatingPointError:
                    raise SkipStep("non-finite curvature") from None
            info.num_products = kinfo.num_products
            info.product_seconds = kinfo.product_seconds
            info.krylov_residual = kinfo.relative_residual
            solve = Solve(d, kinfo, gen, 0)
        else:
            op = None if product is None else _ClosureCurvature(product, live, wd, flat_g)
            solve = self._cached_solve(state, group, damping, flat_g, op)
            info.num_products = solve.info.num_products
            info.product_seconds = solve.info.product_seconds
        kinfo = solve.info
        info.ritz_values, info.weights = kinfo.ritz_values, kinfo.weights
        info.residuals, info.krylov_fraction = kinfo.residuals, kinfo.krylov_fraction
        info.num_clipped, info.basis_age = kinfo.num_clipped, solve.basis_age
        return solve

    def _previous_basis(
        self, state: dict[str, Any], group: dict[str, Any], live: list[Tensor], flat_g: Tensor
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """The cached ``(theta, Q, S)`` a ``warm_start`` refresh starts from, if it has one."""
        if not group["warm_start"] or state.get("krylov_basis") is None:
            return None
        if float(torch.linalg.vector_norm(flat_g)) == 0.0:
            return None
        if state.get("basis_params") != self._live_index(live):
            return None
        return cached_basis(state, group, flat_g)

    def _live_index(self, live: list[Tensor]) -> list[int]:
        """The positions of the live parameters among all parameters."""
        return [i for i, p in enumerate(self._params) if any(p is x for x in live)]

    def _cached_solve(
        self,
        state: dict[str, Any],
        group: dict[str, Any],
        damping: float,
        flat_g: Tensor,
        op: _ClosureCurvature | None = None,
    ) -> Solve:
        """The direction in the Krylov basis cached by an earlier step (``update_every > 1``).

        The basis goes back to its storage dtype and device first: ``load_state_dict`` casts
        state tensors to the parameters' (exactly, so the stored values come back bit for bit).
        With ``reuse_complement`` other than ``"damped"``, the gradient's complement joins the
        basis with one product of ``op`` (see :mod:`lanczos_optim._augmented`).
        """
        theta, q, s = cached_basis(state, group, flat_g)
        mode = group["reuse_complement"]
        if mode == "damped" or op is None:
            d, kinfo = _solve_in_basis(theta, q, s, damping, self._transform, flat_g)
        else:
            try:
                couple = mode == "augment"
                d, kinfo = _augmented_solve(
                    theta,
                    q,
                    s,
                    damping,
                    self._transform,
                    flat_g,
                    op.matvec,
                    couple=couple,
                    keep_vector=False,  # only the info's scalars are read: r-hat freed here
                )
            except FloatingPointError:
                raise SkipStep("non-finite curvature") from None
        if kinfo.num_products == 0:  # the cached solve: the cached run's weights and residuals
            kinfo.weights = cpu64(state["ritz_weights"])
            kinfo.residuals = cpu64(state["ritz_residuals"])
        if not all_finite(d):
            raise SkipStep("non-finite curvature")
        return Solve(d, kinfo, None, state["basis_age"] + 1)

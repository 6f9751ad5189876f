r"""A fresh Krylov basis warm-started from the previous basis's top Ritz vectors.

When an optimiser refreshes a reused basis, the previous run's Ritz vectors of largest
:math:`|\theta|` are good guesses of the new top eigenvectors (the curvature changes slowly).
Block Lanczos from the start block

.. math::
    [\,g,\; u_1, \dots, u_{b-1}\,]

(``b = width``, :math:`u_i = Q^\top s_i` the previous top Ritz vectors) builds the block
Krylov space of the gradient and those vectors with the same number of products as a cold
run. Householder QR keeps the gradient's direction first, so :math:`g` lies in the space and
the step has no complement; the space always contains the previous top directions, so their
Ritz values are Rayleigh quotients of the *current* curvature there at least.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lanczos_optim._basis import LanczosBasis
from lanczos_optim._block_lanczos import block_lanczos
from lanczos_optim._linear_operator import as_matvec
from lanczos_optim._slices import all_finite
from lanczos_optim.krylov import KrylovSolveInfo, _matmat_of, _solve_in_basis, _Timed


def _top_ritz_vectors(previous: tuple[Tensor, Tensor, Tensor], k: int, like: Tensor) -> Tensor:
    """The ``[P, k]`` previous Ritz vectors of largest ``|theta|`` in ``like``'s dtype/device."""
    theta, basis, coordinates = previous
    k = min(k, theta.numel())
    top = torch.argsort(theta.abs(), stable=True)[theta.numel() - k :]
    s = coordinates.to(device="cpu", dtype=torch.float64)[:, top]
    u = LanczosBasis.of(basis, dtype=like.dtype, device=like.device).combine(s)
    return u / torch.linalg.vector_norm(u, dim=0, keepdim=True).clamp_min(1e-30)


def _warm_solve(
    operator: object,
    v: Tensor,
    lanczos_steps: int,
    damping: float,
    transform: str,
    previous: tuple[Tensor, Tensor, Tensor],
    width: int,
    *,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
) -> tuple[Tensor, KrylovSolveInfo]:
    """:func:`~lanczos_optim.krylov_solve` from the start block ``[v, top Ritz vectors]``.

    ``previous`` is the earlier run's ``(theta, Q, S)``; ``width >= 2`` the block width (its
    ``width - 1`` top Ritz vectors join ``v``). ``v`` must be non-zero.

    Raises:
        FloatingPointError: If the operator returns non-finite values.
    """
    start_time = time.perf_counter()
    op = as_matvec(operator, dim=v.shape[0], dtype=v.dtype, device=v.device)
    start = torch.cat([v[:, None], _top_ritz_vectors(previous, width - 1, v)], dim=1)
    if op.sync is not None:  # distributed: every rank starts from rank 0's block
        start = torch.stack([op.sync(start[:, k]) for k in range(start.shape[1])], dim=1)
    timer = _Timed(v.device)
    block = block_lanczos(timer.wrap(_matmat_of(op)), start, min(lanczos_steps, op.dim))
    basis = block.basis.to(device=basis_device or v.device, dtype=basis_dtype or v.dtype)
    d, info = _solve_in_basis(
        block.ritz_values, basis, block.eigvecs, damping, transform, v, in_span=True
    )
    info.weights, info.residuals = block.weights, block.residuals
    info.num_products, info.breakdown = block.num_products, block.breakdown
    info.product_seconds = timer.seconds
    info.total_seconds = time.perf_counter() - start_time
    if not all_finite(d):
        raise FloatingPointError("the warm-started solve produced a non-finite result.")
    return d, info


def _warm_solver(previous: tuple[Tensor, Tensor, Tensor]) -> Callable[..., Any]:
    """A stand-in for :func:`~lanczos_optim.krylov_solve` that warm-starts from ``previous``.

    The block is ``[v, top Ritz vectors]`` of width ``max(block_size, 2)``; ``v0`` and
    ``generator`` are not used (the start is fixed), nor are options it does not know.
    """

    def solve(
        operator: object,
        v: Tensor,
        lanczos_steps: int,
        damping: float,
        transform: str = "newton",
        *,
        block_size: int = 1,
        basis_dtype: torch.dtype | None = None,
        basis_device: torch.device | str | None = None,
        **unused: object,
    ) -> tuple[Tensor, KrylovSolveInfo]:
        width = max(block_size, 2)
        storage = {"basis_dtype": basis_dtype, "basis_device": basis_device}
        return _warm_solve(
            operator, v, lanczos_steps, damping, transform, previous, width, **storage
        )

    return solve

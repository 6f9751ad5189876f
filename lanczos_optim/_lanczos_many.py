"""Several independent Lanczos runs in lock-step, sharing one ``matmat`` per step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lanczos_optim.lanczos import LanczosResult


def lanczos_many(
    matmat: Callable[[Tensor], Tensor],
    starts: Tensor,
    num_steps: int,
    callback: Callable[[int], None] | None = None,
) -> list[LanczosResult]:
    """Run one fully reorthogonalised Lanczos recurrence per column of ``starts`` ``[P, K]``.

    Every step multiplies the operator onto all still-active columns at once, which lets an
    operator share work between columns (the Hessian operator reuses one forward and one
    backward pass per batch for all of them). Each column breaks down independently.
    ``callback(j)``, if given, is called after lock-step ``j`` (1, 2, ...).
    """
    dim, k = starts.shape
    dtype, device = starts.dtype, starts.device
    eps = torch.finfo(dtype).eps
    v = starts / torch.linalg.vector_norm(starts, dim=0, keepdim=True)
    basis = torch.zeros(k, num_steps, dim, dtype=dtype, device=device)
    # The tridiagonal entries stay on the operator's device until the end: they mix with the
    # vectors in every step (a CPU [K] tensor times a CUDA [P, K] tensor raises).
    alphas = torch.zeros(k, num_steps, dtype=torch.float64, device=device)
    betas = torch.zeros(k, num_steps, dtype=torch.float64, device=device)
    steps = [num_steps] * k
    anorm = torch.zeros(k, dtype=torch.float64, device=device)
    active = list(range(k))
    v_prev = torch.zeros_like(v)
    for j in range(num_steps):
        basis[:, j] = v.T
        w = torch.zeros_like(v)
        product = matmat(v[:, active])
        if product.shape != (dim, len(active)):
            raise ValueError(
                f"matmat returned shape {tuple(product.shape)}; expected ({dim}, {len(active)})."
            )
        if not torch.isfinite(product).all():
            raise FloatingPointError(
                f"Lanczos step {j + 1}: the operator returned non-finite values."
            )
        w[:, active] = product.to(dtype)
        alpha = (v.double() * w.double()).sum(0)
        beta_prev = betas[:, j - 1] if j else torch.zeros(k, dtype=torch.float64, device=device)
        w = w - alpha.to(dtype) * v - beta_prev.to(dtype) * v_prev
        q = basis[:, : j + 1]  # [K, j+1, P]
        for _ in range(2):
            w = w - torch.einsum("kjp,kj->pk", q, torch.einsum("kjp,pk->kj", q, w))
        beta = torch.linalg.vector_norm(w.double(), dim=0)
        for c in list(active):
            alphas[c, j] = alpha[c]
            betas[c, j] = beta[c]
            anorm[c] = max(float(anorm[c]), float(alpha[c].abs() + beta[c] + beta_prev[c]))
            if float(beta[c]) <= eps ** (2 / 3) * float(anorm[c]):
                steps[c] = j + 1
                active.remove(c)
        if callback is not None:
            callback(j + 1)
        if not active:
            break
        v_prev, v = v, torch.where(beta.to(dtype) > 0, w / beta.clamp_min(1e-300).to(dtype), 0 * w)
        v[:, [c for c in range(k) if c not in active]] = 0

    alphas, betas, anorm = alphas.cpu(), betas.cpu(), anorm.cpu()
    results = []
    for c in range(k):
        m = steps[c]
        last = float(betas[c, m - 1])
        broke = m < num_steps or last <= eps ** (2 / 3) * float(anorm[c])
        results.append(
            LanczosResult.from_tridiagonal(
                alphas[c, :m].clone(), betas[c, : m - 1].clone(), last, broke
            )
        )
    return results

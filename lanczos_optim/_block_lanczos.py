r"""Block Lanczos: a Krylov space built ``b`` products at a time, for batched products.

With a start block :math:`Q_0` of ``b`` orthonormal columns, step :math:`j` multiplies the
operator onto a whole block (one batched product, e.g. a vmapped backward pass) and
orthonormalises what is new against every earlier block (full reorthogonalisation):

.. math::
    W_j = C Q_j,\quad H_j = Q^\top W_j,\quad Q_{j+1} R_{j+1} = W_j - Q H_j ,

so that :math:`Q^\top C Q` is block tridiagonal. Its eigenpairs :math:`(\theta_i, s_i)` give
Ritz pairs :math:`(\theta_i, Q s_i)` with residuals :math:`\|R_{s} s_i^{\mathrm{last}}\|`, and
the Gauss quadrature weights of the first start column are :math:`s_{0,i}^2`, as in plain
Lanczos. A block of width ``b`` explores ``b`` directions per step, so ``m`` Krylov dimensions
cost ``m / b`` batched products instead of ``m`` sequential ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lanczos_optim._basis import _DGKS  # second Gram-Schmidt pass below this kept share

_CUT = 2 / 3  # columns whose norm falls below eps**_CUT * ||T|| are dropped (as in `lanczos`)


@dataclass
class BlockLanczosResult:
    r"""What :func:`block_lanczos` returns.

    Ritz values (float64, CPU, ascending), the ``[m, P]`` basis rows :math:`Q` and the float64
    ``[m, m]`` eigenvectors :math:`S` of the block tridiagonal (Ritz vectors
    :math:`Q^\top S`), upper bounds on their residuals (float64, CPU), Gauss weights of the
    first start column, products used, and whether the Krylov space became invariant.
    """

    ritz_values: Tensor
    basis: Tensor
    eigvecs: Tensor
    residuals: Tensor
    weights: Tensor
    num_products: int
    breakdown: bool

    @property
    def ritz_vectors(self) -> Tensor:
        """The unit Ritz vectors ``[P, m]``, formed on each access."""
        u = self.basis.T @ self.eigvecs.to(device=self.basis.device, dtype=self.basis.dtype)
        return u / torch.linalg.vector_norm(u, dim=0, keepdim=True)


def _qr(w: Tensor) -> tuple[Tensor, Tensor]:
    """Householder QR; in float32 for half-precision vectors, which LAPACK cannot factorise."""
    if w.dtype.itemsize < 4:
        q, r = torch.linalg.qr(w.float())
        return q.to(w.dtype), r
    return torch.linalg.qr(w)


def _orthonormal_columns(w: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """``w = Q R`` with orthonormal ``Q`` spanning the directions of ``w`` above ``floor``.

    Householder QR, then an SVD of the small triangle: the kept columns are the left singular
    directions with singular value above ``floor``, strongest first (stable, unlike Gram-matrix
    methods, which square the condition number).
    """
    q, r = _qr(w)
    u, sig, vt = torch.linalg.svd(r.double().cpu())
    keep = sig > floor
    q = q @ u[:, keep].to(device=q.device, dtype=q.dtype)
    return q, sig[keep, None] * vt[keep]


def block_lanczos(
    matmat: Callable[[Tensor], Tensor],
    start: Tensor,
    num_products: int,
) -> BlockLanczosResult:
    """Run block Lanczos from the columns of ``start`` ``[P, b]`` for ``num_products`` columns.

    The last block is cut to what is left of the budget, so exactly ``min(num_products, P)``
    columns are multiplied (fewer on breakdown, when the Krylov space became invariant).
    """
    dim = start.shape[0]
    dtype, device = start.dtype, start.device
    eps = torch.finfo(dtype).eps
    # Householder QR keeps the first column's direction: it is the vector whose quadrature
    # weights are reported (and, for an optimiser, the gradient, which then lies in the space).
    q = _qr(start[:, : min(start.shape[1], dim)])[0]
    budget = min(num_products, dim)
    store = torch.empty(budget, dim, dtype=dtype, device=device)  # basis rows, filled in order
    offsets = [0]  # block j is store[offsets[j] : offsets[j + 1]]
    h_cols: list[Tensor] = []  # H_j: [dims so far incl. block j, b_j] float64 on the CPU
    r_blocks: list[Tensor] = []  # R_{j+1}: [b_{j+1}, b_j]
    cut: Tensor | None = None  # rows of R for the columns a cut last block left out
    used = 0
    anorm = 0.0
    r_last = torch.zeros(0, 0, dtype=torch.float64, device="cpu")
    while used < budget and q.shape[1] > 0:
        if q.shape[1] > budget - used:
            cut = r_blocks[-1][budget - used :] if r_blocks else None
            q = q[:, : budget - used]
        width = q.shape[1]
        store[used : used + width] = q.T
        offsets.append(used + width)
        w = matmat(store[used : used + width].T).to(dtype)
        if w.shape != q.shape:
            raise ValueError(f"matmat returned shape {tuple(w.shape)}; expected {tuple(q.shape)}.")
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError("Block Lanczos: the operator returned non-finite values.")
        used += width
        basis = store[:used]  # [used, P], contiguous rows
        before = torch.linalg.vector_norm(w, dim=0)
        h = basis @ w
        w = w - basis.T @ h
        if bool((torch.linalg.vector_norm(w, dim=0) < _DGKS * before).any()):
            h2 = basis @ w  # second Gram-Schmidt pass where the first cancelled much
            w = w - basis.T @ h2
            h = h + h2
        h = h.double().cpu()
        h_cols.append(h)
        anorm = max(anorm, float(torch.linalg.matrix_norm(h, ord=2)))
        q, r = _orthonormal_columns(w, eps**_CUT * max(anorm, 1e-300))
        r_last = r
        if used < budget:
            r_blocks.append(r)
    breakdown = used < budget

    m = used
    t = torch.zeros(m, m, dtype=torch.float64, device="cpu")
    for j, h in enumerate(h_cols):
        t[: offsets[j + 1], offsets[j] : offsets[j + 1]] = h
        if j + 2 < len(offsets):
            r = r_blocks[j][: offsets[j + 2] - offsets[j + 1]]
            t[offsets[j + 1] : offsets[j + 2], offsets[j] : offsets[j + 1]] = r
    t = (t + t.T) / 2
    theta, s = torch.linalg.eigh(t)
    last = s[offsets[-2] : offsets[-1]]
    residuals = torch.zeros(m, dtype=torch.float64, device="cpu")
    if r_last.shape[0] > 0:
        residuals += torch.linalg.vector_norm(r_last @ last, dim=0)
    if cut is not None and cut.shape[0] > 0:  # triangle inequality: a bound, as documented
        before = s[offsets[-3] : offsets[-2]]
        residuals += torch.linalg.vector_norm(cut @ before, dim=0)
    return BlockLanczosResult(
        ritz_values=theta,
        basis=store[:m],
        eigvecs=s,
        residuals=residuals,
        weights=s[0] ** 2,
        num_products=used,
        breakdown=breakdown,
    )

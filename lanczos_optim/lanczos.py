"""The Lanczos iteration with full reorthogonalisation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lanczos_optim._basis import LanczosBasis
from lanczos_optim._convergence import STOP_ON, ResidualTest
from lanczos_optim._linear_operator import _MatVec, as_matvec
from lanczos_optim._slices import sub_scaled
from lanczos_optim._symmetry import SymmetryCheck
from lanczos_optim.validation import check_lanczos_steps

__all__ = ["LanczosResult", "lanczos"]


@dataclass
class LanczosResult:
    r"""What an ``m``-step Lanczos run learned about a symmetric operator :math:`A`.

    The tridiagonal :math:`T = V^\top A V` has diagonal ``alpha`` and off-diagonal ``beta``.
    With :math:`T = S \Theta S^\top`, the Ritz values are :math:`\theta_i`, the Ritz vectors
    :math:`u_i = V s_i`, and the Gauss quadrature weights :math:`\gamma_i = (e_1^\top s_i)^2`.
    The pairs :math:`(\theta_i, \gamma_i)` form the discrete measure whose first :math:`2m-1`
    moments equal :math:`v_0^\top A^k v_0 / v_0^\top v_0`.

    Attributes:
        alpha: Diagonal of :math:`T`, float64, shape ``[m]``.
        beta: Off-diagonal of :math:`T`, float64, shape ``[m - 1]``.
        ritz_values: Eigenvalues of :math:`T`, ascending, float64, shape ``[m]``.
        weights: Quadrature weights (squared first components of :math:`T`'s eigenvectors),
            float64, summing to 1.
        residuals: Residual bounds :math:`|\beta_m s_{m,i}| \ge \|A u_i - \theta_i u_i\|`.
        num_steps: Number of steps actually taken (fewer than asked on breakdown or early stop).
        residual_norm: :math:`\beta_m`, the norm of the last Lanczos residual.
        ritz_vectors: ``[P, m]`` unit Ritz vectors in the operator's dtype, when asked for.
        basis: ``[m, P]`` orthonormal Lanczos vectors, when asked for.
        eigvecs_T: Eigenvectors :math:`S` of :math:`T`, float64 ``[m, m]``.
        breakdown: True if the Krylov space became invariant (:math:`\beta \approx 0`).

    Example:
        >>> import torch
        >>> from lanczos_optim import lanczos
        >>> A = torch.tensor([[2.0, 1, 0], [1, 2, 1], [0, 1, 2]], dtype=torch.float64)
        >>> res = lanczos(A, 3, v0=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> res.num_steps, bool(torch.allclose(res.ritz_values, torch.linalg.eigvalsh(A)))
        (3, True)
    """

    alpha: Tensor
    beta: Tensor
    ritz_values: Tensor
    weights: Tensor
    residuals: Tensor
    num_steps: int
    residual_norm: float
    eigvecs_T: Tensor
    breakdown: bool = False
    ritz_vectors: Tensor | None = None
    basis: Tensor | None = None

    @classmethod
    def from_tridiagonal(
        cls, alpha: Tensor, beta: Tensor, residual_norm: float, breakdown: bool
    ) -> LanczosResult:
        """Solve the float64 tridiagonal eigenproblem and collect the Ritz data."""
        theta, s = _eigh_tridiagonal(alpha, beta)
        return cls(
            alpha=alpha,
            beta=beta,
            ritz_values=theta,
            weights=s[0] ** 2,
            residuals=(residual_norm * s[-1]).abs(),
            num_steps=alpha.numel(),
            residual_norm=residual_norm,
            eigvecs_T=s,
            breakdown=breakdown,
        )

    def tridiagonal(self) -> Tensor:
        """Return the dense ``[m, m]`` float64 tridiagonal matrix :math:`T`."""
        return _tridiagonal(self.alpha, self.beta)


def _tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    t = torch.diag(alpha)
    if beta.numel():
        t = t + torch.diag(beta, 1) + torch.diag(beta, -1)
    return t


def _eigh_tridiagonal(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    return torch.linalg.eigh(_tridiagonal(alpha, beta))


def _start_vector(
    v0: Tensor | None,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    gen: torch.Generator | None,
) -> Tensor:
    if v0 is None:
        gdev = gen.device if gen is not None else device
        v = torch.randn(dim, generator=gen, dtype=dtype, device=gdev).to(device)
    else:
        if not isinstance(v0, Tensor):
            raise TypeError(f"v0 must be a tensor; got {type(v0).__name__}.")
        if v0.shape != (dim,):
            raise ValueError(f"v0 must have shape ({dim},); got {tuple(v0.shape)}.")
        v = v0.detach().to(dtype=dtype, device=device, copy=True)
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(norm) or float(norm) == 0.0:
        raise ValueError(f"v0 must have a finite, non-zero norm; got norm {float(norm)}.")
    return v / norm


def lanczos(
    operator: object,
    num_steps: int,
    *,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    reorthogonalize: bool = True,
    compute_vectors: bool = False,
    keep_basis: bool = False,
    tol: float | None = None,
    stop_on: str = "extremes",
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    basis_device: torch.device | str | None = None,
    basis_dtype: torch.dtype | None = None,
    callback: Callable[[int], None] | None = None,
) -> LanczosResult:
    r"""Run ``num_steps`` Lanczos steps on a symmetric operator.

    Builds an orthonormal basis :math:`V = [v_1, \dots, v_m]` of the Krylov space
    :math:`\mathcal{K}_m(A, v_0)` and the tridiagonal :math:`T = V^\top A V`:

    .. math::
        w = A v_j - \beta_{j-1} v_{j-1}, \quad \alpha_j = v_j^\top w, \quad
        w \leftarrow w - \alpha_j v_j, \quad \beta_j = \|w\|, \quad v_{j+1} = w / \beta_j.

    With ``reorthogonalize=True`` each :math:`w` is projected off the whole basis by classical
    Gram-Schmidt applied twice, so the basis stays orthogonal to working precision. :math:`T`'s
    eigenproblem is solved in float64 with ``torch.linalg.eigh``. The Ritz values are *not* the
    top-m eigenvalues: with a random start they and the weights form a moment-matched discrete
    approximation of the whole spectral density (Granziol et al., section 3 and appendix B).

    Breakdown (:math:`\beta_j \le \epsilon^{2/3} \|T\|`, an invariant subspace) stops cleanly
    with fewer steps. With ``tol``, the run stops once the residual bounds of the Ritz values
    chosen by ``stop_on`` fall below ``tol * max|theta|``.

    Args:
        operator: A dense symmetric tensor, an object with ``shape`` and ``matvec`` or ``@``
            (e.g. :class:`~lanczos_optim.HessianOperator`), or a callable with ``dim=``.
        num_steps: Number of steps ``m >= 1``; more than ``P`` are capped at ``P`` (exact:
            the Krylov space is then the whole space).
        v0: Start vector of shape ``[P]`` (normalised here). Default: a Gaussian draw.
        generator: Random generator for the default start vector.
        reorthogonalize: Full reorthogonalisation (default). ``False`` gives the plain
            three-term recurrence, which loses orthogonality and produces ghost Ritz values.
        compute_vectors: Also return the ``[P, m]`` Ritz vectors.
        keep_basis: Also return the ``[m, P]`` Lanczos basis.
        tol: Optional relative tolerance for early stopping on the residual bounds.
        stop_on: Which Ritz values ``tol`` watches: ``"extremes"`` (smallest and largest),
            ``"largest"``, ``"smallest"`` or ``"all"``.
        dim: Dimension of a callable operator.
        dtype: Dtype of a callable operator.
        device: Device of a callable operator.
        basis_device: Where the ``m`` Lanczos vectors are stored (e.g. ``"cpu"`` while the
            operator runs on a GPU). Default: the operator's device.
        basis_dtype: Storage precision of the basis (e.g. ``torch.bfloat16`` to halve memory).
            The products, the current vector and the reorthogonalisation arithmetic stay in
            the operator's dtype; the stored copies are rounded, and the recurrence subtracts
            the stored (rounded) previous vector, leaving its rounding error to the full
            reorthogonalisation (with ``reorthogonalize=False`` it keeps the previous vector
            itself). Orthogonality and the extreme Ritz values then hold to about the storage
            precision. Memory of the basis: ``m * P * bytes(basis_dtype)``.
        callback: Called as ``callback(j)`` after step ``j`` (1, 2, ...), once the step's
            product is done, including a last step that breaks down or converges; e.g. to
            advance a progress bar.

    Returns:
        A :class:`LanczosResult`.

    Raises:
        ValueError: On a non-square or non-symmetric matrix, ``num_steps`` not an int >= 1,
            a ``v0`` of wrong shape or zero norm, or a bad ``tol``/``stop_on``.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> res = lanczos(A, 3, v0=torch.ones(3, dtype=torch.float64))
        >>> [round(x, 6) for x in res.ritz_values.tolist()]
        [1.0, 2.0, 3.0]
        >>> round(float(res.weights.sum()), 6)
        1.0

    References:
        Golub & Meurant, *Matrices, Moments and Quadrature*, 1994; Granziol, Wan & Garipov,
        *Deep Curvature Suite*, https://arxiv.org/abs/1912.09656.
    """
    if isinstance(v0, Tensor):
        dtype = dtype or v0.dtype
        device = device or v0.device
    op = as_matvec(operator, dim=dim, dtype=dtype, device=device)
    num_steps = check_lanczos_steps(num_steps, op.dim, name="num_steps")
    check = _residual_test(tol, stop_on, num_steps)
    start = [_start_vector(v0, op.dim, op.dtype, op.device, generator)]
    if op.sync is not None:  # a distributed operator: every rank starts from rank 0's vector
        start = [op.sync(start[0])]
    res, basis = _run(
        op, start, num_steps, check, reorthogonalize, callback, basis_dtype, basis_device
    )
    if compute_vectors:
        u = basis.combine(res.eigvecs_T)
        res.ritz_vectors = u / torch.linalg.vector_norm(u, dim=0, keepdim=True)
    if keep_basis:
        res.basis = basis.tensor()
    return res


def _run(
    op: _MatVec,
    start: list[Tensor],
    num_steps: int,
    check: ResidualTest | None,
    reorthogonalize: bool = True,
    callback: Callable[[int], None] | None = None,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
) -> tuple[LanczosResult, LanczosBasis]:
    """Up to ``num_steps`` steps from the unit vector in ``start`` (stopped early by ``check``).

    The vector is taken out of the one-element list ``start``, so that no caller keeps it
    alive once the basis holds its copy.
    """
    basis = LanczosBasis(
        num_steps,
        op.dim,
        dtype=op.dtype,
        device=op.device,
        storage_dtype=basis_dtype,
        storage_device=basis_device,
    )
    symmetry = SymmetryCheck(op.dtype, basis_dtype)  # free: one dot product per step
    run = _Recurrence(op, basis, reorthogonalize, check, callback, symmetry)
    run.iterate(start, num_steps)
    res = LanczosResult.from_tridiagonal(
        torch.tensor(run.alphas, dtype=torch.float64, device="cpu"),
        torch.tensor(run.betas[: len(run.alphas) - 1], dtype=torch.float64, device="cpu"),
        run.beta_prev,
        run.breakdown,
    )
    return res, basis


def _residual_test(tol: float | None, stop_on: str, num_steps: int) -> ResidualTest | None:
    """The early-stopping test for ``tol``/``stop_on`` (``None`` without ``tol``)."""
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive or None; got {tol}.")
    if stop_on not in STOP_ON:
        raise ValueError(f"stop_on must be one of {STOP_ON}; got {stop_on!r}.")
    return None if tol is None else ResidualTest(tol, stop_on, capacity=min(num_steps, 64))


class _Recurrence:
    r"""The Lanczos three-term recurrence with optional full reorthogonalisation.

    After :meth:`iterate`, ``alphas`` and ``betas`` hold :math:`T`'s entries, ``beta_prev`` the
    last residual norm :math:`\beta_m` and ``breakdown`` whether the Krylov space became
    invariant.
    """

    def __init__(
        self,
        op: _MatVec,
        basis: LanczosBasis,
        reorthogonalize: bool,
        check: ResidualTest | None,
        callback: Callable[[int], None] | None,
        symmetry: SymmetryCheck,
    ) -> None:
        self.op, self.basis, self.reorthogonalize = op, basis, reorthogonalize
        self.check, self.callback, self.symmetry = check, callback, symmetry
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.beta_prev = 0.0
        self.breakdown = False
        self._anorm = 0.0
        self._eps = torch.finfo(op.dtype).eps

    def _step(
        self, j: int, current: list[Tensor], v_prev: Tensor | None
    ) -> tuple[float, Tensor, Tensor | None]:
        r"""Step ``j`` on ``v`` taken out of ``current``: :math:`\beta_j`, residual, ``v_prev``.

        The residual is unnormalised. The next step's ``v_prev`` is the stored basis row when
        it holds ``v`` exactly, so nothing keeps ``v`` once the recurrence is done with it (the
        dot products still use ``v`` itself: a row's memory alignment can change their last
        bits). A row stored in another dtype or device is not ``v``: with full
        reorthogonalisation the next step subtracts :math:`\beta_j` times the stored row
        (``v_prev`` is ``None``), converted block by block, and the Gram-Schmidt pass that
        follows removes what its rounding leaves along the basis; only the plain recurrence
        keeps ``v`` itself. The residual is updated in place, slice by slice: no ``[P]``
        temporary besides the product and the Gram-Schmidt correction.
        """
        op = self.op
        v = current.pop()
        row = self.basis.append(v)
        w = op.matvec(v)
        if w.shape != v.shape:
            raise ValueError(f"operator returned shape {tuple(w.shape)}; expected ({op.dim},).")
        w = w.to(op.dtype)
        if w is v or w._base is not None:  # never update the operator's or the caller's vector
            w = w.clone()
        alpha = float(torch.dot(v, w))
        sub_scaled(w, alpha, v)
        if self.basis.exact_rows:
            v = row  # the caller's vector is no longer needed: freed here
        elif self.reorthogonalize:
            v = None  # the next step reads the stored row
        if j > 0:
            self._sub_previous(j, w, v_prev)
        if self.reorthogonalize:
            w = self.basis.project_out(w, overwrite=True)
        beta = float(torch.linalg.vector_norm(w))
        self.alphas.append(alpha)
        self._anorm = max(self._anorm, abs(alpha) + beta + self.beta_prev)
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise FloatingPointError(
                f"Lanczos step {j + 1}: the operator returned non-finite values."
            )
        if self.callback is not None:
            self.callback(j + 1)
        return beta, w, v

    def _sub_previous(self, j: int, w: Tensor, v_prev: Tensor | None) -> None:
        r"""Check symmetry against :math:`v_{j-1}`, then ``w -= beta_{j-1} v_{j-1}`` in place.

        ``v_prev`` ``None``: :math:`v_{j-1}` is the stored row ``j - 1``, read block by block.
        """
        if v_prev is None:
            self.symmetry.compare(self.basis.row_dot(j - 1, w), self.beta_prev, self._anorm, j)
            self.basis.sub_row(w, self.beta_prev, j - 1)
        else:
            self.symmetry.compare(float(torch.dot(v_prev, w)), self.beta_prev, self._anorm, j)
            sub_scaled(w, self.beta_prev, v_prev)

    def _stops(self, j: int, beta: float) -> bool:
        """Whether the run ends after step ``j``: breakdown, or converged under ``tol``."""
        if beta <= self._eps ** (2 / 3) * self._anorm:
            self.breakdown = True
            return True
        if self.check is not None:
            self.check.push(self.alphas[-1], self.beta_prev)
            return j + 1 >= self.check.min_steps and self.check.converged(beta)
        return False

    def iterate(self, start: list[Tensor], num_steps: int) -> None:
        """Run up to ``num_steps`` steps from the unit vector taken out of ``start``."""
        v_prev: Tensor | None = None  # unused in step 0
        current = [start.pop()]
        for j in range(num_steps):
            beta, w, stored = self._step(j, current, v_prev)
            if self._stops(j, beta):
                self.beta_prev = beta
                return
            if j < num_steps - 1:
                self.betas.append(beta)
            self.beta_prev = beta
            v_prev = stored
            current.append(w.div_(beta))
            del w

r"""Damped inverse-curvature-vector products in a Lanczos (Krylov) eigenbasis.

This is the building block of the Lanczos Newton optimisers and of the Laplace approximation
(Granziol et al., section 2.2): for a symmetric curvature matrix :math:`C` and any vector
:math:`v`, an approximation of :math:`(C + \delta I)^{-1} v` (or of :math:`(|C| + \delta I)^{-1} v`)
from ``m`` curvature-vector products.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lanczos_optim._basis import LanczosBasis
from lanczos_optim._block_lanczos import block_lanczos
from lanczos_optim._convergence import SolveResidualTest, solve_residual, weighted_residual
from lanczos_optim._linear_operator import _MatVec, as_matvec
from lanczos_optim._slices import all_finite, squared_norm
from lanczos_optim.lanczos import _run, _start_vector
from lanczos_optim.validation import check_lanczos_steps

__all__ = ["TRANSFORMS", "KrylovSolveInfo", "krylov_solve"]

#: The spectral transforms :func:`krylov_solve` knows.
TRANSFORMS = ("newton", "abs")


def _spectral_factors(theta: Tensor, damping: float, transform: str) -> tuple[Tensor, int]:
    """Return ``f(theta)`` (float64) and how many Ritz values were clipped."""
    theta = theta.to(device="cpu", dtype=torch.float64)
    if transform == "abs":
        return 1.0 / (theta.abs() + damping), 0
    clipped = theta <= -damping
    shifted = torch.where(clipped, torch.zeros_like(theta), theta) + damping
    return 1.0 / shifted, int(clipped.sum())


@dataclass
class KrylovSolveInfo:
    r"""What :func:`krylov_solve` learned, enough to apply the same solve to another vector.

    Attributes:
        ritz_values: Ritz values :math:`\theta_i`, ascending, float64 ``[m]``.
        weights: Gauss quadrature weights of the start vector, float64 ``[m]``.
        residuals: Residual bounds :math:`\|C u_i - \theta_i u_i\|`, float64 ``[m]``.
        basis: The orthonormal Krylov basis :math:`Q`, ``[m, P]`` rows, in its storage dtype
            and on its storage device (``basis_dtype``/``basis_device``).
        coordinates: :math:`S`, float64 ``[m, m]``: the Ritz vectors are :math:`U = Q^\top S`
            (see :attr:`ritz_vectors`, formed only when asked for).
        damping: The damping :math:`\delta`.
        transform: ``"newton"`` or ``"abs"``.
        factors: :math:`f(\theta_i)`, float64 ``[m]``.
        num_clipped: Ritz values at or below :math:`-\delta` treated as zero curvature
            (``"newton"`` only; always 0 for ``"abs"``).
        num_products: Curvature-vector products used (the number of Lanczos steps).
        breakdown: Whether the Krylov space became invariant before ``lanczos_steps``.
        krylov_fraction: :math:`\|U^\top v\|^2 / \|v\|^2`, the share of :math:`v` inside the
            Krylov space (1 when the run starts from :math:`v`).
        v_dot_d: :math:`v^\top d`.
        d_abs_curvature_d: :math:`d^\top |C| d` measured inside the Krylov space (equal to
            ``d_curvature_d`` for a positive semi-definite :math:`C`).
        d_curvature_d: :math:`d^\top C d` measured inside the Krylov space,
            :math:`\sum_i \theta_i (f(\theta_i) u_i^\top v)^2`. The curvature of the component
            outside the Krylov space is not measured (counted as zero); it is zero when the run
            starts from :math:`v`.
        product_seconds: Wall-clock seconds spent inside the operator's products.
        total_seconds: Wall-clock seconds of the whole solve.
        relative_residual: :math:`\|(C + \delta I) d - v\| / \|v\|` from the tridiagonal, for a
            run started from :math:`v` (``nan`` otherwise): exact for ``"newton"`` (the part
            outside the Krylov space where Ritz values were clipped), the Ritz pairs' residual
            bounds weighted by :math:`v`'s weights for ``"abs"`` and for block Lanczos (see
            ``tol`` of :func:`krylov_solve`).
    """

    ritz_values: Tensor
    weights: Tensor
    residuals: Tensor
    basis: Tensor
    coordinates: Tensor
    damping: float
    transform: str
    factors: Tensor
    num_clipped: int = 0
    num_products: int = 0
    breakdown: bool = False
    krylov_fraction: float = 1.0
    v_dot_d: float = 0.0
    d_curvature_d: float = 0.0
    d_abs_curvature_d: float = 0.0
    product_seconds: float = 0.0
    total_seconds: float = 0.0
    relative_residual: float = math.nan
    _in_span: bool = field(default=False, repr=False)
    _dtype: torch.dtype = field(default=torch.float64, repr=False)
    _device: torch.device = field(default=torch.device("cpu"), repr=False)
    #: A unit vector appended to ``basis`` (the augmented reuse step of the optimisers):
    #: ``coordinates`` then has one row more than ``basis``. ``None`` with such
    #: ``coordinates`` when the vector was not kept (:meth:`apply` then raises).
    _extra: Tensor | None = field(default=None, repr=False)

    def predicted_decrease(self, lr: float = 1.0) -> float:
        r"""Decrease of the quadratic model for the step :math:`-\mathrm{lr}\, d`.

        .. math::
            \mathrm{lr}\; v^\top d - \tfrac{1}{2} \mathrm{lr}^2\; d^\top C d ,

        with :math:`v` the gradient and :math:`d^\top C d` as in :attr:`d_curvature_d`.
        """
        return lr * self.v_dot_d - 0.5 * lr * lr * self.d_curvature_d

    @property
    def ritz_vectors(self) -> Tensor:
        r"""The unit Ritz vectors :math:`U = Q^\top S`, ``[P, m]`` in the solved vector's dtype.

        Formed on each access (an ``m x P`` matrix, as large as the basis); the solve itself
        never forms them.
        """
        self._check_extra()
        m = self.basis.shape[0]
        u = self._view().combine(self.coordinates[:m])
        if self._extra is not None:
            extra = self._extra.to(device=u.device, dtype=u.dtype)
            u = u + extra[:, None] * self.coordinates[m:].to(device=u.device, dtype=u.dtype)
        return u / torch.linalg.vector_norm(u, dim=0, keepdim=True)

    def _check_extra(self) -> None:
        """Raise when the appended unit vector was not kept (an optimiser's reuse step)."""
        if self._extra is None and self.coordinates.shape[0] > self.basis.shape[0]:
            raise RuntimeError(
                "this solve's complement vector was not kept (an optimiser's reuse step keeps "
                "only the step's scalars); the basis alone cannot apply it."
            )

    def _view(self) -> LanczosBasis:
        return LanczosBasis.of(self.basis, dtype=self._dtype, device=self._device)

    def apply(self, v: Tensor) -> Tensor:
        r"""Apply the same damped inverse to another vector :math:`v` (no new products).

        .. math::
            d = Q^\top S\, f(\Theta)\, S^\top Q v + \frac{1}{\delta}\,(v - Q^\top S S^\top Q v)
        """
        self._check_extra()
        data = self.basis
        if self._extra is not None:  # the augmented basis, formed for this one product
            data = torch.cat([data.to(v.device, v.dtype), self._extra.to(v.device, v.dtype)[None]])
        basis = LanczosBasis.of(data, dtype=v.dtype, device=v.device)
        return _apply(basis, self.coordinates, self.factors, self.damping, v, in_span=False)[0]


def _apply(
    basis: LanczosBasis, s: Tensor, factors: Tensor, damping: float, v: Tensor, *, in_span: bool
) -> tuple[Tensor, Tensor, float]:
    r"""Return ``d``, the Ritz coefficients ``S^T Q v`` (float64) and the complement's norm².

    The step is formed in the basis's coordinates, :math:`d = Q^\top S f S^\top Q v`, so the
    ``[P, m]`` Ritz vectors are never formed; the complement is :math:`v - Q^\top S S^\top Q v`.
    With ``in_span`` (the Krylov space was started from ``v``, so ``v`` lies in it exactly),
    the complement is rounding noise and is dropped (norm² 0) rather than amplified by
    ``1/damping``. Otherwise ``d`` is built in the complement's buffer: ``complement /
    damping``, then :math:`Q^\top S f S^\top Q v` added block by block of columns.
    """
    coeffs = s.T @ basis.coordinates(v).to(device=s.device, dtype=s.dtype)
    fc = factors * coeffs
    if in_span:
        d = basis.combine((s @ fc)[:, None])[:, 0]
        return d, coeffs, 0.0
    d = basis.complement(v, s @ coeffs)
    r2 = squared_norm(d)
    basis.add_combination(d.div_(damping), s @ fc)
    return d, coeffs, r2


def _solve_in_basis(
    ritz_values: Tensor,
    basis: Tensor,
    coordinates: Tensor,
    damping: float,
    transform: str,
    v: Tensor,
    *,
    in_span: bool = False,
    vnorm2: float | None = None,
) -> tuple[Tensor, KrylovSolveInfo]:
    """Apply the damped inverse of the Ritz pairs ``(Q, S, theta)`` to ``v``; return ``d``, info.

    Shared by :func:`krylov_solve` and the optimisers (which reuse a basis for several steps),
    so that a fresh and a reused basis go through exactly the same arithmetic. ``basis`` is the
    stored ``[m, P]`` Krylov basis (any storage dtype and device), ``coordinates`` the float64
    ``[m, m]`` eigenvectors of the tridiagonal. ``weights`` and ``residuals`` of the returned
    info are empty; the caller fills what it knows.
    """
    factors, clipped = _spectral_factors(ritz_values, damping, transform)
    s = coordinates.to(device="cpu", dtype=torch.float64)
    view = LanczosBasis.of(basis, dtype=v.dtype, device=v.device)
    d, c64, r2 = _apply(view, s, factors, damping, v, in_span=in_span)
    if vnorm2 is None:
        vnorm2 = squared_norm(v)
    fc = factors * c64
    empty = torch.zeros(0, dtype=torch.float64, device="cpu")
    info = KrylovSolveInfo(
        ritz_values=ritz_values,
        weights=empty,
        residuals=empty,
        basis=basis,
        coordinates=s,
        damping=damping,
        transform=transform,
        factors=factors,
        num_clipped=clipped,
        krylov_fraction=min(1.0, float(c64 @ c64) / vnorm2) if vnorm2 > 0 else 1.0,
        v_dot_d=float(fc @ c64) + r2 / damping,
        d_curvature_d=float(ritz_values.double() @ (fc * fc)),
        d_abs_curvature_d=float(ritz_values.double().abs() @ (fc * fc)),
        _in_span=in_span,
        _dtype=v.dtype,
        _device=v.device,
    )
    return d, info


def _check_args(v: object, lanczos_steps: object, damping: object, transform: object) -> None:
    if not isinstance(v, Tensor):
        raise TypeError(f"v must be a tensor; got {type(v).__name__}.")
    if v.ndim != 1 or not v.is_floating_point():
        raise ValueError(
            f"v must be a 1-D floating-point tensor; got shape {tuple(v.shape)}, dtype {v.dtype}."
        )
    check_lanczos_steps(lanczos_steps)  # capped at P where the operator's dimension is known
    if (
        isinstance(damping, bool)
        or not isinstance(damping, (int, float))
        or not math.isfinite(damping)
        or not damping > 0
    ):
        raise ValueError(f"Invalid damping value: {damping!r} (must be a finite number > 0).")
    if transform not in TRANSFORMS:
        raise ValueError(f"Invalid transform: {transform!r}; expected one of {TRANSFORMS}.")


def _check_block_size(block_size: object) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"Invalid block_size value: {block_size!r} (must be an int >= 1).")
    return block_size


def _start_block(
    first: Tensor | None, dim: int, width: int, like: Tensor, gen: torch.Generator | None
) -> Tensor:
    """``[P, width]`` start block: ``first`` (if given) then Gaussian columns from ``gen``."""
    draws = width - (first is not None)
    gdev = gen.device if gen is not None else torch.device("cpu")
    cols = torch.randn(dim, draws, generator=gen, dtype=like.dtype, device=gdev).to(like.device)
    if first is None:
        return cols
    # The same checks and conversion as plain Lanczos' start vector (shape, finite, non-zero).
    first = _start_vector(first, dim, like.dtype, like.device, None)
    return torch.cat([first[:, None], cols], dim=1)


class _Timed:
    """Wraps operator calls and adds up their wall-clock seconds (CUDA synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.seconds = 0.0
        self._device = device if device.type == "cuda" else None

    def wrap(self, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def timed(w: Tensor) -> Tensor:
            if self._device is not None:
                torch.cuda.synchronize(self._device)
            t0 = time.perf_counter()
            out = fn(w)
            if self._device is not None:
                torch.cuda.synchronize(self._device)
            self.seconds += time.perf_counter() - t0
            return out

        return timed


def _matmat_of(op: _MatVec) -> Callable[[Tensor], Tensor]:
    if op.matmat is not None:
        return op.matmat
    return lambda m: torch.stack([op.matvec(m[:, k]) for k in range(m.shape[1])], dim=1)


def krylov_solve(
    operator: object,
    v: Tensor,
    lanczos_steps: int,
    damping: float,
    transform: str = "newton",
    *,
    v0: Tensor | str | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
    block_size: int = 1,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
    tol: float | None = None,
) -> Tensor | tuple[Tensor, KrylovSolveInfo]:
    r"""Damped inverse-curvature-vector product from ``lanczos_steps`` Lanczos steps.

    A Lanczos run of :math:`m` steps on the symmetric curvature :math:`C` gives Ritz pairs
    :math:`(\theta_i, u_i)`, :math:`U = [u_1, \dots, u_m]`. With damping :math:`\delta > 0`,

    .. math::
        d = \sum_{i=1}^{m} f(\theta_i)\, u_i u_i^\top v
            + \frac{1}{\delta} \big(v - U U^\top v\big),

    where the second term treats the part of :math:`v` outside the Krylov space as zero
    curvature, and

    - ``transform="newton"``: :math:`f(\theta) = 1/(\theta + \delta)`, an approximation of
      :math:`(C + \delta I)^{-1} v`. Ritz values :math:`\theta \le -\delta` (where
      :math:`\theta + \delta` would be zero or negative, a step uphill) are clipped to zero
      curvature, :math:`f = 1/\delta`; their number is reported as ``num_clipped``;
    - ``transform="abs"``: :math:`f(\theta) = 1/(|\theta| + \delta)`, the saddle-free
      :math:`(|C| + \delta I)^{-1} v` of Dauphin et al. (2014), which turns negative curvature
      into a direction of descent.

    Starting the Krylov space from :math:`v` itself (the default) makes :math:`v` lie in it
    exactly, so the complement vanishes (it is set to zero rather than amplified rounding
    noise), and with :math:`m = P` steps :math:`d` is exact. For a positive-definite :math:`C`
    and ``"newton"``, :math:`d` then equals the Lanczos (conjugate gradient) solution of
    :math:`(C + \delta I) d = v` after :math:`m` steps. The Laplace approximation of a network's
    posterior needs exactly :math:`(C + \delta I)^{-1} v` with :math:`\delta` the prior precision
    (Granziol et al., section 2.2). At most :math:`P` steps are taken.

    Args:
        operator: Symmetric :math:`C`: a dense ``[P, P]`` tensor, an operator object with
            ``shape`` and ``matvec``/``@`` (e.g. :class:`~lanczos_optim.GGNOperator`), or a
            callable ``w -> C w`` on ``[P]`` vectors of ``v``'s dtype and device.
        v: The ``[P]`` vector to solve for (for an optimiser, the gradient).
        lanczos_steps: Lanczos steps :math:`m \ge 1` = curvature products; capped at P (exact).
        damping: :math:`\delta > 0`.
        transform: ``"newton"`` (default) or ``"abs"`` (saddle-free).
        v0: Start of the Krylov space: ``None`` (default) for ``v`` itself, ``"random"`` for a
            Gaussian draw from ``generator``, or a ``[P]`` tensor.
        generator: Random generator for ``v0="random"``.
        return_info: Also return a :class:`KrylovSolveInfo` (Ritz values, weights, residual
            bounds, the share of ``v`` in the Krylov space, the quadratic model's terms, the
            number of clipped values and of products, timings) that can
            :meth:`~KrylovSolveInfo.apply` the same solve to other vectors.
        block_size: Products per Krylov step (block Lanczos). With ``b > 1`` the start block
            is the start vector and ``b - 1`` Gaussian columns from ``generator``, and each
            step multiplies ``b`` vectors at once (the operator's ``matmat``: one batched pass
            where the operator batches, e.g. a vmapped backward), so the ``lanczos_steps``
            Krylov dimensions take ``lanczos_steps / b`` sequential steps. The space differs
            from plain Lanczos (it is not the Krylov space of the start vector alone); with
            ``lanczos_steps = P`` both are exact. Default 1: plain Lanczos.
        basis_dtype: Storage precision of the ``m x P`` Krylov basis (e.g.
            ``torch.bfloat16``), as in :func:`~lanczos_optim.lanczos`. Default: ``v``'s dtype.
        basis_device: Where the basis is stored (e.g. ``"cpu"``). Default: ``v``'s device.
            Block Lanczos (``block_size > 1``) builds its basis in ``v``'s dtype and device and
            stores it converted afterwards.
        tol: Stop early, after fewer than ``lanczos_steps`` steps, once the relative residual
            of the damped system in the Krylov space is at most ``tol`` (default ``None``: all
            steps). After :math:`k` steps from :math:`v`, with :math:`T_k = S \Theta S^\top`,

            .. math::
                \frac{\|(C + \delta I) d - v\|}{\|v\|}
                    = \beta_k \big|e_k^\top (T_k + \delta I)^{-1} e_1\big|
                    = \beta_k \Big|\sum_i s_{k,i}\, f(\theta_i)\, s_{1,i}\Big|

            for ``"newton"`` (the conjugate gradient residual, from the tridiagonal alone; with
            clipped Ritz values the part outside the Krylov space), and for ``"abs"`` the Ritz
            pairs' residual bounds weighted by :math:`v`'s weights,
            :math:`\sum_i f(\theta_i) |s_{1,i}| |\beta_k s_{k,i}|`. Needs the run started from
            :math:`v` (``v0=None``) and ``block_size=1``. The value reached is recorded as
            ``relative_residual`` with ``return_info`` (also without ``tol``).

    Returns:
        ``d`` with ``v``'s shape, dtype and device; with ``return_info``, ``(d, info)``.

    Raises:
        TypeError: If ``v`` is not a tensor.
        ValueError: On a bad shape, ``lanczos_steps`` not an int ``>= 1``, ``damping <= 0``,
            an unknown ``transform`` or ``v0``, a non-finite ``v``, an operator whose size
            or dtype does not match ``v``, or a ``tol`` that is not a finite number ``> 0`` or
            comes with a ``v0`` or ``block_size > 1``.
        FloatingPointError: If the operator returns non-finite values.

    Example:
        >>> import torch
        >>> C = torch.diag(torch.tensor([-2.0, 1.0, 4.0], dtype=torch.float64))
        >>> v = torch.ones(3, dtype=torch.float64)
        >>> krylov_solve(C, v, 3, damping=1.0, transform="abs")
        tensor([0.3333, 0.5000, 0.2000], dtype=torch.float64)
        >>> d, info = krylov_solve(C, v, 3, damping=1.0, return_info=True)
        >>> d  # the Ritz value -2 <= -damping is clipped to zero curvature
        tensor([1.0000, 0.5000, 0.2000], dtype=torch.float64)
        >>> info.num_clipped
        1

    References:
        Dauphin et al., *Identifying and attacking the saddle point problem in high-dimensional
        non-convex optimization*, 2014, https://arxiv.org/abs/1406.2572;
        Granziol, Wan & Garipov, *Deep Curvature Suite*, 2019, https://arxiv.org/abs/1912.09656.
    """
    start = time.perf_counter()
    _check_args(v, lanczos_steps, damping, transform)
    _check_block_size(block_size)
    damping = float(damping)
    if not isinstance(v0, (Tensor, type(None))) and v0 != "random":
        raise ValueError(f"v0 must be None, 'random' or a tensor; got {v0!r}.")
    _check_tol(tol, v0, block_size)
    op = as_matvec(operator, dim=v.shape[0], dtype=v.dtype, device=v.device)
    vnorm2 = _check_operand(op, v)
    if vnorm2 == 0.0:
        d, info = torch.zeros_like(v), _zero_info(v, damping, transform)
    else:
        timer = _Timed(v.device)
        steps = min(lanczos_steps, op.dim)
        if block_size > 1:
            theta, q, s, record = _block_run(op, v, v0, steps, generator, timer, block_size)
            q = q.to(device=basis_device or q.device, dtype=basis_dtype or q.dtype)
        else:
            storage = {"basis_dtype": basis_dtype, "basis_device": basis_device}
            check = _solve_test(tol, damping, transform, steps)
            theta, q, s, record = _single_run(op, v, v0, steps, generator, timer, storage, check)
        d, info = _solve_in_basis(
            theta, q, s, damping, transform, v, in_span=v0 is None, vnorm2=vnorm2
        )
        beta = record.pop("residual_norm", None)
        for key, value in record.items():
            setattr(info, key, value)
        if v0 is None:
            info.relative_residual = _relative_residual(info, beta)
        info.product_seconds = timer.seconds
    info.total_seconds = time.perf_counter() - start
    if not all_finite(d):
        raise FloatingPointError("krylov_solve produced a non-finite result.")
    return (d, info) if return_info else d


def _check_tol(tol: object, v0: object, block_size: int) -> None:
    """Raise a one-line ``ValueError`` on a bad ``tol`` or one the run cannot apply."""
    if tol is None:
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol):
        raise ValueError(f"Invalid tol value: {tol!r} (must be None or a finite number > 0).")
    if not tol > 0:
        raise ValueError(f"Invalid tol value: {tol!r} (must be None or a finite number > 0).")
    if v0 is not None or block_size > 1:
        raise ValueError(
            f"tol needs the Krylov space started from v (v0=None, block_size=1); got v0="
            f"{'a tensor' if isinstance(v0, Tensor) else repr(v0)}, block_size={block_size}."
        )


def _solve_test(
    tol: float | None, damping: float, transform: str, steps: int
) -> SolveResidualTest | None:
    """The early-stopping test of ``tol`` (``None`` without)."""
    if tol is None:
        return None

    def factors(theta: np.ndarray) -> np.ndarray:
        return _spectral_factors(torch.from_numpy(theta), damping, transform)[0].numpy()

    return SolveResidualTest(float(tol), factors, transform == "newton", min(steps, 64))


def _relative_residual(info: KrylovSolveInfo, beta: float | None) -> float:
    """The solve's relative residual from the tridiagonal (plain) or the bounds (block)."""
    if info.num_products == 0:
        return 0.0
    s, factors = info.coordinates.numpy(), info.factors.numpy()
    if beta is None:  # block Lanczos: its residual bounds, weighted by v's weights
        return weighted_residual(s[0], factors, info.residuals.numpy())
    return solve_residual(s, factors, beta, exact=info.transform == "newton")


def _check_operand(op: _MatVec, v: Tensor) -> float:
    """Check ``v`` against the operator and return its squared norm (in float64)."""
    if op.dim != v.shape[0]:
        raise ValueError(
            f"v must have shape ({op.dim},) to match the operator; got {tuple(v.shape)}."
        )
    if op.dtype != v.dtype:
        raise ValueError(f"v has dtype {v.dtype} but the operator has dtype {op.dtype}.")
    vnorm2 = squared_norm(v)
    if not math.isfinite(vnorm2):
        raise ValueError("v has non-finite entries.")
    return vnorm2


def _zero_info(v: Tensor, damping: float, transform: str) -> KrylovSolveInfo:
    """The record of the solve with ``v = 0`` (no products, ``d = 0``)."""
    empty = torch.zeros(0, dtype=torch.float64, device="cpu")
    return KrylovSolveInfo(
        ritz_values=empty,
        weights=empty,
        residuals=empty,
        basis=v.new_zeros(0, v.shape[0]),
        coordinates=torch.zeros(0, 0, dtype=torch.float64, device="cpu"),
        damping=damping,
        transform=transform,
        factors=empty,
        krylov_fraction=1.0,
        _in_span=True,
        _dtype=v.dtype,
        _device=v.device,
    )


def _block_run(
    op: _MatVec,
    v: Tensor,
    v0: Tensor | str | None,
    steps: int,
    generator: torch.Generator | None,
    timer: _Timed,
    block_size: int,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Block Lanczos of width ``block_size``: Ritz values, basis, eigenvectors of T, record."""
    first = v if v0 is None else (v0 if isinstance(v0, Tensor) else None)
    width = min(block_size, op.dim)
    matmat = timer.wrap(_matmat_of(op))
    start_block = _start_block(first, op.dim, width, v, generator)
    if op.sync is not None:  # distributed: every rank starts from rank 0's block
        start_block = torch.stack([op.sync(start_block[:, k]) for k in range(width)], dim=1)
    block = block_lanczos(matmat, start_block, steps)
    record = {"weights": block.weights, "residuals": block.residuals}
    record |= {"num_products": block.num_products, "breakdown": block.breakdown}
    return block.ritz_values, block.basis, block.eigvecs, record


def _single_run(
    op: _MatVec,
    v: Tensor,
    v0: Tensor | str | None,
    steps: int,
    generator: torch.Generator | None,
    timer: _Timed,
    storage: dict[str, Any],
    check: SolveResidualTest | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    r"""Plain Lanczos: Ritz values, the stored basis, the tridiagonal's eigenvectors, the record.

    ``check`` stops the run early (``tol``); the record's ``residual_norm`` is :math:`\beta_m`.
    """
    timed = as_matvec(timer.wrap(op.matvec), dim=op.dim, dtype=op.dtype, device=op.device)
    start = v if v0 is None else (None if isinstance(v0, str) else v0)
    unit = [_start_vector(start, op.dim, op.dtype, op.device, generator)]
    res, basis = _run(timed, unit, steps, check, **storage)  # _run takes the vector out
    record = {"weights": res.weights, "residuals": res.residuals}
    record |= {"num_products": res.num_steps, "breakdown": res.breakdown}
    record["residual_norm"] = res.residual_norm
    return res.ritz_values, basis.tensor(), res.eigvecs_T, record

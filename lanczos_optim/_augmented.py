r"""A reused Krylov basis with the new gradient's complement: the augmented reuse step.

An optimiser that reuses a Krylov basis :math:`Q` (rows, ``[m, P]``) for several steps meets
gradients :math:`g` that only partly lie in it. Instead of the blind step :math:`r/\delta` on the
complement :math:`r = g - Q^\top Q g`, the complement joins the basis: with
:math:`\hat r = r / \|r\|` and one curvature product :math:`C \hat r` on the current batch,

.. math::
    A = \begin{pmatrix} T & Q C \hat r \\ \hat r^\top C Q^\top & \hat r^\top C \hat r
    \end{pmatrix}, \qquad T = S \Theta S^\top ,

is the curvature projected on :math:`\mathrm{span}(Q, \hat r)` (its :math:`T` block taken from
the basis's own run), :math:`A = W \Phi W^\top`, and the step is

.. math::
    d = [Q^\top, \hat r]\; W f(\Phi) W^\top \begin{pmatrix} Q g \\ \|r\| \end{pmatrix} ,

with :math:`f` the transform of :func:`~lanczos_optim.krylov_solve`. For a fixed curvature this
is the exact Galerkin solve of :math:`(C + \delta I) d = g` on :math:`\mathrm{span}(Q, \hat r)`.
``couple=False`` drops the coupling :math:`Q C \hat r`: the complement then gets its own
Rayleigh-quotient scale :math:`f(\hat r^\top C \hat r)` and the rest the cached solve.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from lanczos_optim._basis import LanczosBasis
from lanczos_optim._slices import add_scaled, all_finite, dot64, norm64, squared_norm, sub_scaled
from lanczos_optim.krylov import KrylovSolveInfo, _solve_in_basis, _spectral_factors


def _complement_floor(v: Tensor, basis: Tensor) -> float:
    """Relative norm below which a complement is rounding noise: sqrt(eps) of the coarser dtype."""
    eps = max(torch.finfo(v.dtype).eps, torch.finfo(basis.dtype).eps)
    return eps**0.5


def _augmented_solve(
    ritz_values: Tensor,
    basis: Tensor,
    coordinates: Tensor,
    damping: float,
    transform: str,
    v: Tensor,
    matvec: Callable[[Tensor], Tensor],
    *,
    couple: bool = True,
    extra: Tensor | None = None,
    in_span: bool = False,
    keep_vector: bool = True,
) -> tuple[Tensor, KrylovSolveInfo]:
    r"""The step in ``span(Q, r)`` for a reused basis ``(Q, S, theta)``; see the module docstring.

    A complement below :func:`_complement_floor` (``v`` already in the basis) gets the cached
    solve of :func:`~lanczos_optim.krylov._solve_in_basis` and no product. The info's
    ``krylov_fraction`` is the share of ``v`` inside the reused basis (before the complement
    joined it), ``num_products`` the products taken (1 or 0), ``weights`` the squared Ritz
    coordinates of ``v`` over its squared norm, ``residuals`` empty.

    With ``extra`` (the subspace momentum of :mod:`lanczos_optim._subspace`), the complement of
    ``extra`` joins the basis instead of ``v``'s: :math:`r = e - Q^\top Q e`, and ``v``'s
    coordinate on it is :math:`\hat r^\top v`; ``in_span`` says that ``v`` lies in
    :math:`\mathrm{span}(Q)` (a run started from ``v``), otherwise the rest of ``v`` outside
    :math:`\mathrm{span}(Q, \hat r)` gets the step :math:`1/\delta`, as in
    :func:`~lanczos_optim.krylov._solve_in_basis`.

    The info keeps the complement's unit vector :math:`\hat r` (``[P]``) for its
    :meth:`~lanczos_optim.krylov.KrylovSolveInfo.apply` and ``ritz_vectors``; without
    ``keep_vector`` (the optimisers, which read only the info's scalars) it is freed on
    return and those two raise.

    Raises:
        FloatingPointError: If the product is not finite.
    """
    view = LanczosBasis.of(basis, dtype=v.dtype, device=v.device)
    qv = view.coordinates(v)
    vnorm2 = squared_norm(v)
    if extra is None:
        r = view.complement(v, qv)  # v - Q^T Q v, in one buffer
    else:
        r = view.project_out(extra.to(device=v.device, dtype=v.dtype))
    qv64 = qv.to(device="cpu", dtype=torch.float64)
    share = min(1.0, float(qv64 @ qv64) / vnorm2) if vnorm2 > 0 else 1.0
    rnorm = norm64(r)
    scale = vnorm2**0.5 if extra is None else norm64(extra)
    if vnorm2 == 0.0 or rnorm <= _complement_floor(v, basis) * scale:
        del r
        return _solve_in_basis(
            ritz_values, basis, coordinates, damping, transform, v, in_span=in_span
        )
    rhat = r.div_(rnorm)  # r is this function's own buffer
    # v's coordinate on rhat, and (a momentum step from a basis v does not span) v's rest.
    rv = rnorm if extra is None else dot64(rhat, v)
    rest = None
    if extra is not None and not in_span:
        rest = view.complement(v, qv)
        sub_scaled(rest, rv, rhat)
    t0 = time.perf_counter()
    cr = matvec(rhat)
    seconds = time.perf_counter() - t0
    if not all_finite(cr):
        raise FloatingPointError("the curvature product of the complement is not finite.")
    s = coordinates.to(device="cpu", dtype=torch.float64)
    theta = ritz_values.to(device="cpu", dtype=torch.float64)
    m = theta.numel()
    a = torch.zeros(m + 1, m + 1, dtype=torch.float64, device="cpu")
    a[:m, :m] = (s * theta) @ s.T
    if couple:
        a[:m, m] = a[m, :m] = view.coordinates(cr).to(device="cpu", dtype=torch.float64)
    a[m, m] = dot64(rhat, cr)
    del cr  # one [P] buffer less while d is formed
    phi, w = torch.linalg.eigh((a + a.T) / 2)
    c = w.T @ torch.cat([qv64, qv64.new_tensor([rv])])
    factors, clipped = _spectral_factors(phi, damping, transform)
    fc = factors * c
    y = (w @ fc).to(device=v.device, dtype=v.dtype)
    d = view.combine(y[:m, None])[:, 0]
    add_scaled(d, y[m], rhat)
    v_dot_d = float(fc @ c)
    if rest is not None:
        v_dot_d += squared_norm(rest) / damping
        d += rest.div_(damping)  # rest is this function's own buffer
    info = KrylovSolveInfo(
        ritz_values=phi,
        weights=c * c / vnorm2,
        residuals=torch.zeros(0, dtype=torch.float64, device="cpu"),
        basis=basis,
        coordinates=w,
        damping=damping,
        transform=transform,
        factors=factors,
        num_clipped=clipped,
        num_products=1,
        krylov_fraction=share,
        v_dot_d=v_dot_d,
        d_curvature_d=float(phi @ (fc * fc)),
        d_abs_curvature_d=float(phi.abs() @ (fc * fc)),
        product_seconds=seconds,
        _in_span=rest is None,
        _dtype=v.dtype,
        _device=v.device,
        _extra=rhat if keep_vector else None,
    )
    return d, info

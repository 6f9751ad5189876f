r"""``subspace_momentum``: the previous direction joins the Krylov space of the step.

Heavy-ball momentum adds :math:`\mu d_{t-1}` with a fixed :math:`\mu`. Subspace momentum lets
the quadratic model choose it: after the Lanczos run from the gradient :math:`g` (basis
:math:`Q`, ``[m, P]`` rows), the previous direction :math:`d_{t-1}` joins the basis through one
more curvature product on the current batch, and the step is the damped Galerkin solve

.. math::
    d_t = V\, \bigl(V^\top (C + \delta I) V\bigr)^{-1} V^\top g ,
    \qquad V = [\,Q^\top,\ \hat r\,], \quad
    \hat r = \frac{(I - Q^\top Q)\, d_{t-1}}{\|(I - Q^\top Q)\, d_{t-1}\|} ,

(with the optimiser's spectral transform of the projected curvature), i.e. the minimiser of the
damped quadratic model over :math:`\mathrm{span}(K_m(C, g), d_{t-1})`. This is the subspace
optimisation of Narkiss & Zibulevsky (SESOP, 2005) and what Martens' Hessian-free optimisation
(2010) gets by starting conjugate gradients from the previous solution: directions of low
curvature that the gradient keeps pointing along accumulate over steps instead of being
rediscovered by each short Krylov run. It costs one product and one ``P``-sized buffer (the
previous direction, in ``state``); the coefficient of :math:`d_{t-1}` may be negative or zero
when the current curvature says so. See :func:`lanczos_optim._augmented._augmented_solve`.

On the first step, after a change of the parameters that receive a gradient, and when
:math:`d_{t-1}` already lies in the Krylov space (within rounding), the step is the plain
Krylov step. ``update_every > 1`` is refused (a reused basis has its own complement step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from lanczos_optim._augmented import _augmented_solve
from lanczos_optim.krylov import KrylovSolveInfo

#: The keys of the state this option keeps.
STATE_KEYS = ("subspace_direction", "subspace_params")


def check(hp: dict[str, Any]) -> None:
    """Raise a torch-style ``ValueError`` on an invalid ``subspace_momentum``.

    Example:
        >>> check({"subspace_momentum": True, "update_every": 1})
        >>> check({"subspace_momentum": 1, "update_every": 1})
        Traceback (most recent call last):
        ...
        ValueError: Invalid subspace_momentum value: 1 (must be a bool)
    """
    value = hp.get("subspace_momentum", False)
    if not isinstance(value, bool):
        raise ValueError(f"Invalid subspace_momentum value: {value!r} (must be a bool)")
    if value and hp["update_every"] != 1:
        raise ValueError(
            f"Invalid subspace_momentum value: {value!r} with update_every="
            f"{hp['update_every']} (subspace_momentum needs update_every=1)"
        )


def previous(state: dict[str, Any], index: list[int], like: Tensor) -> Tensor | None:
    """The previous direction, when it belongs to the same live parameters as this step."""
    prev = state.get("subspace_direction")
    if prev is None or state.get("subspace_params") != index or prev.numel() != like.numel():
        return None
    return prev.to(device=like.device, dtype=like.dtype)


def extend(
    kinfo: KrylovSolveInfo,
    d: Tensor,
    prev: Tensor | None,
    g: Tensor,
    matvec: Callable[[Tensor], Tensor],
) -> tuple[Tensor, KrylovSolveInfo]:
    """The step over ``span(Q, prev)`` from a fresh Krylov solve ``(d, kinfo)`` of ``g``.

    Raises:
        FloatingPointError: If the extra curvature product is not finite.
    """
    if prev is None or kinfo.basis.shape[0] == 0:
        return d, kinfo
    d2, info = _augmented_solve(
        kinfo.ritz_values,
        kinfo.basis,
        kinfo.coordinates,
        kinfo.damping,
        kinfo.transform,
        g,
        matvec,
        extra=prev,
        in_span=kinfo._in_span,
        keep_vector=False,  # the optimiser reads only the info's scalars
    )
    info.num_products += kinfo.num_products
    info.product_seconds += kinfo.product_seconds
    info.relative_residual = kinfo.relative_residual
    if info.num_products == kinfo.num_products:  # prev in the Krylov space: the plain step
        return d, kinfo
    return d2, info


def remember(state: dict[str, Any], direction: Tensor, index: list[int]) -> None:
    """Keep this step's direction (before the learning rate) for the next step."""
    state["subspace_direction"] = direction.detach()
    state["subspace_params"] = list(index)

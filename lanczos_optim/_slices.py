"""Work on long vectors slice by slice, without a temporary as long as the vector.

Elementwise updates, a finiteness check, and float64 dot products of low-precision vectors.

Example:
    >>> import torch
    >>> w = torch.ones(5)
    >>> sub_scaled(w, 2.0, torch.arange(5.0))
    >>> w
    tensor([ 1., -1., -3., -5., -7.])
    >>> all_finite(torch.tensor([1.0, float("inf")]))
    False
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Entries per slice of an in-place elementwise update (256 KiB of float32) and of a float64
#: dot product (512 KiB of float64; vectors this short are cast whole).
SLICE = 2**16
#: Entries per slice of a finiteness check (1 MiB of float32 for ``isfinite``'s intermediate).
FINITE_SLICE = 2**18


def sub_scaled(w: Tensor, scale: float, x: Tensor) -> None:
    """``w -= scale * x`` slice by slice: the values of ``w - scale * x``, no ``[P]`` temporary."""
    for start in range(0, w.numel(), SLICE):
        stop = start + SLICE
        w[start:stop].sub_(scale * x[start:stop])


def add_scaled(d: Tensor, scale: Tensor, x: Tensor) -> None:
    """``d += scale * x`` slice by slice: the values of ``d + scale * x``, no ``[P]`` temporary."""
    for start in range(0, d.numel(), SLICE):
        stop = start + SLICE
        d[start:stop] += scale * x[start:stop]


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite, checked slice by slice (one sync at the end).

    ``torch.isfinite(x).all()`` makes ``x``-sized temporaries (a float ``abs`` and a bool mask);
    here they are one slice long.
    """
    flat = x.reshape(-1)
    if flat.numel() <= FINITE_SLICE:
        return bool(torch.isfinite(flat).all())
    ok = torch.ones((), dtype=torch.bool, device=flat.device)
    for start in range(0, flat.numel(), FINITE_SLICE):
        ok &= torch.isfinite(flat[start : start + FINITE_SLICE]).all()
    return bool(ok)


def dot64(a: Tensor, b: Tensor) -> float:
    """``a . b`` accumulated in float64, slice by slice (one cast of each vector if short).

    A vector of at most :data:`SLICE` entries is cast whole, so the value is the one of
    ``torch.dot(a.double(), b.double())`` to the bit; a longer one sums the float64 dot products
    of its slices, so the float64 copies never exceed one slice.

    Example:
        >>> a = torch.arange(3.0)
        >>> dot64(a, a)
        5.0
    """
    if a.numel() <= SLICE:
        return float(torch.dot(a.double(), b.double()))
    total = 0.0
    for start in range(0, a.numel(), SLICE):
        stop = start + SLICE
        total += float(torch.dot(a[start:stop].double(), b[start:stop].double()))
    return total


def squared_norm(a: Tensor) -> float:
    """``a . a`` accumulated in float64 (see :func:`dot64`)."""
    return dot64(a, a)


def norm64(a: Tensor) -> float:
    """The Euclidean norm of ``a`` computed in float64, without a float64 copy of a long ``a``.

    Short vectors give ``torch.linalg.vector_norm(a.double())`` to the bit.

    Example:
        >>> norm64(torch.tensor([3.0, 4.0]))
        5.0
    """
    if a.numel() <= SLICE:
        return float(torch.linalg.vector_norm(a.double()))
    return math.sqrt(squared_norm(a))

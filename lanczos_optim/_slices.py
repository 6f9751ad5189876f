"""Elementwise work on long vectors slice by slice, without a temporary as long as the vector.

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

import torch
from torch import Tensor

#: Entries per slice of an in-place elementwise update (256 KiB of float32).
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

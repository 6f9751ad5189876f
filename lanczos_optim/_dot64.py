"""Float64 dot products of low-precision vectors without a float64 copy of the whole vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Entries per chunk (512 KiB in float64); vectors this short are cast whole, as before.
_CHUNK = 2**16


def _dot64(a: Tensor, b: Tensor) -> float:
    """``a . b`` accumulated in float64, chunk by chunk (one cast of each vector if short).

    A vector of at most :data:`_CHUNK` entries is cast whole, so the value is the one of
    ``torch.dot(a.double(), b.double())`` to the bit; a longer one sums the float64 dot products
    of its chunks, so the float64 copies never exceed one chunk.

    Example:
        >>> a = torch.arange(3.0)
        >>> _dot64(a, a)
        5.0
    """
    if a.numel() <= _CHUNK:
        return float(torch.dot(a.double(), b.double()))
    total = 0.0
    for start in range(0, a.numel(), _CHUNK):
        stop = start + _CHUNK
        total += float(torch.dot(a[start:stop].double(), b[start:stop].double()))
    return total


def _squared_norm(a: Tensor) -> float:
    """``a . a`` accumulated in float64 (see :func:`_dot64`)."""
    return _dot64(a, a)


def _norm64(a: Tensor) -> float:
    """The Euclidean norm of ``a`` computed in float64, without a float64 copy of a long ``a``.

    Short vectors give ``torch.linalg.vector_norm(a.double())`` to the bit.

    Example:
        >>> _norm64(torch.tensor([3.0, 4.0]))
        5.0
    """
    if a.numel() <= _CHUNK:
        return float(torch.linalg.vector_norm(a.double()))
    return math.sqrt(_squared_norm(a))

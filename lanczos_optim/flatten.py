"""Conversions between lists of parameter-shaped tensors and one flat vector."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["flatten_tensors", "unflatten_vector"]


def flatten_tensors(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (a copy).

    Args:
        tensors: Tensors of any shapes, same dtype and device.

    Returns:
        A 1-D tensor of length ``sum(t.numel())``.

    Example:
        >>> import torch
        >>> flatten_tensors([torch.ones(2, 2), torch.zeros(3)]).shape
        torch.Size([7])
    """
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_vector(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like ``like``.

    Args:
        vector: A 1-D tensor with ``sum(t.numel() for t in like)`` entries.
        like: Tensors whose shapes give the pieces.

    Returns:
        A list of views of ``vector``, one per tensor in ``like``.

    Raises:
        ValueError: If the length of ``vector`` does not match.

    Example:
        >>> import torch
        >>> like = [torch.ones(2, 2), torch.ones(3)]
        >>> [p.shape for p in unflatten_vector(torch.arange(7.0), like)]
        [torch.Size([2, 2]), torch.Size([3])]
    """
    total = sum(t.numel() for t in like)
    if vector.ndim != 1 or vector.numel() != total:
        raise ValueError(
            f"vector must have shape ({total},) to match the parameters; got {tuple(vector.shape)}."
        )
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[offset : offset + n].view_as(t))
        offset += n
    return out

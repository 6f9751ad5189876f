"""A finiteness check of a long vector without a temporary as long as the vector."""

from __future__ import annotations

import torch
from torch import Tensor

#: Entries per slice (1 MiB of float32 for ``isfinite``'s intermediate).
_SLICE = 2**18


def _all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite, checked slice by slice (one sync at the end).

    ``torch.isfinite(x).all()`` makes ``x``-sized temporaries (a float ``abs`` and a bool mask);
    here they are one slice long.

    Example:
        >>> _all_finite(torch.tensor([1.0, float("inf")]))
        False
    """
    flat = x.reshape(-1)
    if flat.numel() <= _SLICE:
        return bool(torch.isfinite(flat).all())
    ok = torch.ones((), dtype=torch.bool, device=flat.device)
    for start in range(0, flat.numel(), _SLICE):
        ok &= torch.isfinite(flat[start : start + _SLICE]).all()
    return bool(ok)

"""The check that an operator sees the same data on every pass over it.

A curvature operator passes over its data once per product; Lanczos assumes one fixed matrix.
A shuffled loader (with ``drop_last`` or BatchNorm batch statistics) or a random augmentation
gives a different matrix on every pass. Two checks, both cheap:

* a DataLoader whose sampler is random is refused at once;
* every pass fingerprints its batches (a float64 sum and a position-weighted sum of every input
  and target tensor, one extra read of the data) and compares them with the first pass's,
  once at the end of the pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

_FIX = (
    "use a DataLoader with shuffle=False and no random transforms, or a fixed list of "
    "(inputs, targets) batches (or pass check_deterministic=False)"
)
_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


def check_loader(data: object) -> None:
    """Refuse a DataLoader whose sampler draws a new order on every pass.

    Raises:
        ValueError: For a shuffling DataLoader.
    """
    if isinstance(data, DataLoader) and isinstance(data.sampler, _RANDOM_SAMPLERS):
        raise ValueError(
            f"data is a DataLoader with a {type(data.sampler).__name__}, so every product "
            f"would see other batches; {_FIX}."
        )


def tensors_of(obj: object) -> list[Tensor]:
    """The tensors in ``obj``: a tensor, or a dict, tuple or list of them (nested)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in tensors_of(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tensors_of(v)]
    return []


def _sums(t: Tensor) -> Tensor:
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    flat = flat.to(torch.float64)
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), flat @ positions])


def fingerprint(*objs: object) -> Tensor:
    """Float64 sums and position-weighted sums of every tensor in ``objs``, on their device."""
    parts = [_sums(t) for obj in objs for t in tensors_of(obj)]
    if not parts:
        return torch.zeros(0, dtype=torch.float64, device="cpu")
    device = parts[0].device
    return torch.cat([p.to(device) for p in parts])


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(
        a, b.to(a.device), rtol=1e-9, atol=0.0, equal_nan=True
    )


class DataFingerprint:
    """The fingerprints of the first full pass, against which every later pass is compared."""

    def __init__(self) -> None:
        self._first: list[Tensor] | None = None

    def watch(self, batches: Iterator[tuple[object, object, int]]) -> Iterator:
        """Yield ``batches`` unchanged; at the end of the pass, compare it with the first.

        Raises:
            ValueError: If the pass differs from the first one.
        """
        seen = []
        for x, y, n in batches:
            seen.append(fingerprint(x, y))
            yield x, y, n
        if self._first is None:
            self._first = seen
            return
        if len(seen) != len(self._first):
            raise ValueError(
                f"data yielded {len(seen)} batches on this pass and {len(self._first)} on the "
                f"first; the data must be the same on every pass: {_FIX}."
            )
        if _same(torch.cat(seen), torch.cat(self._first)):
            return
        for i, (a, b) in enumerate(zip(seen, self._first, strict=True)):
            if not _same(a, b):
                raise ValueError(
                    f"batch {i} of data differs from the first pass over it (shuffled or "
                    f"randomly augmented?); the data must be the same on every pass: {_FIX}."
                )

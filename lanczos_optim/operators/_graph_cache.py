"""Autograd graphs kept between products, and the test that they still describe the model."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

import torch
from torch import Tensor, nn

from lanczos_optim._graph_products import Product

CachedBatches = list[tuple[Product, int]]


def _keyed_tensors(model: nn.Module, data: object) -> tuple[list[Tensor], list[Tensor]]:
    """The model's parameters and buffers, and the tensors of a list of batches."""
    state = list(chain(model.parameters(), model.buffers()))
    batches = []
    if isinstance(data, (list, tuple)):  # cheap to look at; a DataLoader is not
        batches = [t for batch in data for t in batch if isinstance(t, Tensor)]
    return state, batches


def _cacheable(tensors: list[Tensor]) -> bool:
    # Sparse and other non-strided layouts have no storage pointer, inference tensors no
    # version counter: products on such models or data are computed without a cache.
    return all(t.layout == torch.strided and not t.is_inference() for t in tensors)


def _sums(t: Tensor, weighted: bool) -> Tensor:
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    elif flat.element_size() < 4:
        flat = flat.float()
    total = flat.sum(dtype=torch.float64)
    if not weighted:
        return total[None]
    positions = torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device)
    return torch.stack([total, (flat @ positions).to(torch.float64)])


def _checksum(state: list[Tensor], batches: list[Tensor]) -> bytes:
    """Float64 sums of every tensor, and position-weighted sums of the model's, as bytes.

    Catches what version counters miss: writes through ``.data`` or to a NumPy array behind a
    tensor, including permutations of weights (the weighted sum sees positions). Compared as
    bytes so that NaN equals itself.
    """
    tensors = [(t, True) for t in state] + [(t, False) for t in batches]
    if not tensors:
        return b""
    device = tensors[0][0].device
    with torch.no_grad():
        parts = [_sums(t, weighted).to(device) for t, weighted in tensors]
    return torch.cat(parts).cpu().numpy().tobytes()


class GraphCache:
    """Per-batch product closures, rebuilt when the model, its buffers or the data change.

    A cached entry is valid while every parameter and buffer of the model, and every tensor of a
    list of batches, is the same tensor object with the same autograd version counter and storage
    as when the entry was built, and their checksums (:func:`_checksum`) are unchanged: about
    one read of the parameters and the listed data per product.
    """

    def __init__(self) -> None:
        self.entries: CachedBatches | None = None
        self._tensors: list[Tensor] = []
        self._versions: list[tuple[int, int]] = []
        self._sums = b""

    def clear(self) -> None:
        """Drop the graphs (and the memory they hold)."""
        self.entries, self._tensors, self._versions, self._sums = None, [], [], b""

    def _valid(self, state: list[Tensor], batches: list[Tensor]) -> bool:
        tensors = state + batches
        return (
            self.entries is not None
            and len(tensors) == len(self._tensors)
            and all(a is b for a, b in zip(tensors, self._tensors, strict=True))
            and [(t._version, t.data_ptr()) for t in tensors] == self._versions
            and _checksum(state, batches) == self._sums
        )

    def get(
        self, model: nn.Module, data: object, build: Callable[[], CachedBatches]
    ) -> CachedBatches | None:
        """The cached entries, built first if missing or stale; ``None`` if caching is unsafe."""
        state, batches = _keyed_tensors(model, data)
        if not _cacheable(state + batches):
            self.clear()
            return None
        if not self._valid(state, batches):
            self.clear()  # free the stale graphs before building new ones
            entries = build()
            self._tensors = state + batches
            self._versions = [(t._version, t.data_ptr()) for t in self._tensors]
            self._sums = _checksum(state, batches)
            self.entries = entries
        return self.entries

"""Autograd graphs kept between products, and the test that they still describe the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain

import torch
from torch import Tensor, nn

from lanczos_optim._graph_products import Product

CachedBatches = list[tuple[Product, int]]


def _state_tensors(model: nn.Module, data: object) -> list[Tensor]:
    tensors = list(chain(model.parameters(), model.buffers()))
    if isinstance(data, (list, tuple)):  # cheap to look at; a DataLoader is not
        tensors += [t for batch in data for t in batch if isinstance(t, Tensor)]
    return tensors


def _fingerprint(tensors: Iterable[Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t._version, t.data_ptr()) for t in tensors)


def _checksum(model: nn.Module) -> Tensor:
    # Catches writes through ``p.data``, which autograd's version counters do not see.
    tensors = list(chain(model.parameters(), model.buffers()))
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    device = tensors[0].device
    with torch.no_grad():
        sums = [t.sum(dtype=torch.float64).to(device) for t in tensors]
    return torch.stack(sums).cpu()


class GraphCache:
    """Per-batch product closures, rebuilt when the model, its buffers or the data change.

    A cached entry is valid while every parameter and buffer of the model (and every tensor of a
    list of batches) has the same autograd version counter and storage as when it was built, and
    the float64 sums of the parameters and buffers are unchanged (writes through ``.data`` do not
    bump version counters).
    """

    def __init__(self) -> None:
        self.entries: CachedBatches | None = None
        self._key: tuple[tuple[tuple[int, int], ...], Tensor] | None = None

    def clear(self) -> None:
        """Drop the graphs (and the memory they hold)."""
        self.entries, self._key = None, None

    def _valid(self, model: nn.Module, data: object) -> bool:
        if self.entries is None or self._key is None:
            return False
        versions, sums = self._key
        return versions == _fingerprint(_state_tensors(model, data)) and torch.equal(
            sums, _checksum(model)
        )

    def get(
        self, model: nn.Module, data: object, build: Callable[[], CachedBatches]
    ) -> CachedBatches:
        """Return the cached entries, calling ``build`` first if they are missing or stale."""
        if not self._valid(model, data):
            self.clear()  # free the stale graphs before building new ones
            entries = build()
            self._key = (_fingerprint(_state_tensors(model, data)), _checksum(model))
            self.entries = entries
        assert self.entries is not None
        return self.entries

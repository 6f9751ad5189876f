"""Autograd graphs kept between products, and the test that they still describe the model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from lanczos_optim._determinism import tensors_of
from lanczos_optim._graph_products import Product

#: Per batch: its product (``None`` for a batch of weight 0), size and weight.
CachedBatches = list[tuple[Product | None, int, Tensor | float]]

#: How a kept graph is checked before each product: ``"fast"`` compares tensor identity,
#: autograd version counters and storage, plus checksums of the model's buffers (BatchNorm
#: updates its running statistics without bumping their version counters); ``"full"`` also
#: checksums every parameter and every tensor of a list of batches, which catches writes that
#: bypass autograd (``p.data``, a NumPy array refilled behind the inputs) at the price of
#: reading them all per product.
CACHE_CHECKS = ("fast", "full")


#: Optimiser steps taken anywhere in the process (a global ``torch.optim`` step post-hook):
#: fused optimisers (``Adam(fused=True)``, ...) update parameters in place without bumping their
#: version counters, so every kept graph is checked against this count too.
_OPTIMIZER_STEPS = [0]
_STEP_HOOK: list[object] = []


def _count_optimizer_steps() -> None:
    if not _STEP_HOOK:

        def hook(*_: object) -> None:
            _OPTIMIZER_STEPS[0] += 1

        _STEP_HOOK.append(register_optimizer_step_post_hook(hook))


def check_cache_check(cache_check: object) -> str:
    """Return ``cache_check`` if it is one of :data:`CACHE_CHECKS`, else raise ``ValueError``."""
    if cache_check not in CACHE_CHECKS:
        raise ValueError(f"cache_check must be one of {CACHE_CHECKS}; got {cache_check!r}.")
    return cache_check  # type: ignore[return-value]


def _keyed_tensors(
    model: nn.Module, data: object
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The model's parameters, its buffers, and the tensors of a list of batches."""
    batches = []
    if isinstance(data, (list, tuple)):  # cheap to look at; a DataLoader is not
        batches = [t for batch in data for t in tensors_of(batch)]  # dict inputs too
    return list(model.parameters()), list(model.buffers()), batches


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
    as when the entry was built, no ``torch.optim`` optimiser has stepped since (any optimiser:
    fused ones write parameters without a version bump), and the checksums (:func:`_checksum`)
    of the buffers (``"fast"``) or of everything (``"full"``: about one read of the parameters
    and the listed data per product) are unchanged.
    """

    def __init__(self, check: str = "fast") -> None:
        self.check = check_cache_check(check)
        _count_optimizer_steps()
        self._steps = -1
        self.entries: CachedBatches | None = None
        self._tensors: list[Tensor] = []
        self._versions: list[tuple[int, int]] = []
        self._sums = b""

    def clear(self) -> None:
        """Drop the graphs (and the memory they hold)."""
        self.entries, self._tensors, self._versions, self._sums = None, [], [], b""

    def _summed(self, params: list[Tensor], buffers: list[Tensor], batches: list[Tensor]) -> bytes:
        if self.check == "full":
            return _checksum(params + buffers, batches)
        return _checksum(buffers, [])

    def _valid(self, params: list[Tensor], buffers: list[Tensor], batches: list[Tensor]) -> bool:
        tensors = params + buffers + batches
        return (
            self.entries is not None
            and self._steps == _OPTIMIZER_STEPS[0]
            and len(tensors) == len(self._tensors)
            and all(a is b for a, b in zip(tensors, self._tensors, strict=True))
            and [(t._version, t.data_ptr()) for t in tensors] == self._versions
            and self._summed(params, buffers, batches) == self._sums
        )

    def get(
        self, model: nn.Module, data: object, build: Callable[[], CachedBatches]
    ) -> CachedBatches | None:
        """The cached entries, built first if missing or stale; ``None`` if caching is unsafe."""
        params, buffers, batches = _keyed_tensors(model, data)
        if not _cacheable(params + buffers + batches):
            self.clear()
            return None
        if not self._valid(params, buffers, batches):
            self.clear()  # free the stale graphs before building new ones
            entries = build()
            self._tensors = params + buffers + batches
            self._versions = [(t._version, t.data_ptr()) for t in self._tensors]
            self._sums = self._summed(params, buffers, batches)
            self._steps = _OPTIMIZER_STEPS[0]
            self.entries = entries
        return self.entries

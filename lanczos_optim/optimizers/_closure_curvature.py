"""The curvature of the closure's graph as a flat linear operator, averaged over ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from lanczos_optim._graph_products import BatchedProduct
from lanczos_optim.flatten import flatten_tensors, unflatten_vector


def _world_size() -> int:
    """Number of ``torch.distributed`` ranks (1 when not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _mean_over_ranks(flat: Tensor) -> Tensor:
    """All-reduce a flat tensor to its mean over ranks (identity in one process)."""
    world = _world_size()
    if world == 1:
        return flat
    flat = flat.clone()
    dist.all_reduce(flat)
    return flat / world


class _ClosureCurvature:
    """The curvature of the closure's graph (plus weight decay) as a flat linear operator.

    Products are averaged over ``torch.distributed`` ranks; :meth:`matmat` multiplies several
    vectors in one vmapped backward pass where the graph allows it.
    """

    def __init__(
        self, product: BatchedProduct, live: list[Tensor], wd: float | Tensor, like: Tensor
    ):
        self._product, self._live, self._wd = product, live, wd
        self.shape = (like.numel(), like.numel())
        self.dtype, self.device = like.dtype, like.device
        self.sync_vector = _rank0_vector if _world_size() > 1 else None

    def _finish(self, out: Tensor, v: Tensor) -> Tensor:
        out = _mean_over_ranks(out)
        wd = self._wd
        if isinstance(wd, Tensor):  # per-group weight decay: one value per coordinate
            return out.add_((wd if v.ndim == 1 else wd[:, None]) * v)  # out is a new tensor
        return out.add_(wd * v) if wd != 0.0 else out

    def matvec(self, v: Tensor) -> Tensor:
        """One product; the parameters' gradients land in one flat buffer as they come.

        A hook on each parameter copies its product into its slice of the output buffer, so
        the per-parameter products and their flat copy are never all alive at once. When the
        product returns anything but those slices (a rescaled or cast gradient), its values
        are flattened as before.
        """
        buffer = _LazyFlat(self._live, self.dtype, self.device)
        hooks = [p.register_hook(buffer.hook(i)) for i, p in enumerate(self._live)]
        try:
            with torch.enable_grad():
                prods = self._product(unflatten_vector(v, self._live))
        finally:
            for hook in hooks:
                hook.remove()
        out = buffer.holds(prods)
        if out is None:
            out = flatten_tensors(prods)
        del prods
        return self._finish(out, v)

    def matmat(self, m: Tensor) -> Tensor:
        columns = [unflatten_vector(m[:, k], self._live) for k in range(m.shape[1])]
        with torch.enable_grad():
            prods = self._product.many(columns)
        return self._finish(torch.stack([flatten_tensors(p) for p in prods], dim=1), m)


class _LazyFlat:
    """A flat buffer for the parameters' products, made when the first one arrives."""

    def __init__(self, live: list[Tensor], dtype: torch.dtype, device: torch.device) -> None:
        self._live, self._dtype, self._device = live, dtype, device
        self._slots: list[Tensor] | None = None
        self._filled = [False] * len(live)
        self.flat: Tensor | None = None

    def hook(self, i: int) -> Callable[[Tensor], Tensor | None]:
        """A gradient hook for parameter ``i``: store the gradient, hand its slice on instead."""

        def store(grad: Tensor) -> Tensor | None:
            if grad.dtype != self._dtype or grad.requires_grad or self._filled[i]:
                # not a plain product, or a second one (e.g. one per micro-batch, summed by
                # the product): left as it is, and the product's result is flattened
                return None
            if self._slots is None:
                numel = sum(p.numel() for p in self._live)
                self.flat = torch.empty(numel, dtype=self._dtype, device=self._device)
                self._slots = unflatten_vector(self.flat, self._live)
            slot = self._slots[i]
            if grad.shape != slot.shape:
                return None
            slot.copy_(grad)
            self._filled[i] = True
            return slot

        return store

    def holds(self, prods: list[Tensor]) -> Tensor | None:
        """The flat buffer if ``prods`` are exactly its slices, else ``None``."""
        if self._slots is None:
            return None
        for g, slot in zip(prods, self._slots, strict=True):
            if g.data_ptr() != slot.data_ptr() or g.shape != slot.shape:
                return None
            if g.stride() != slot.stride():
                return None
        return self.flat


def _rank0_vector(v: Tensor) -> Tensor:
    """Rank 0's copy of ``v`` on every rank."""
    v = v.clone()
    dist.broadcast(v, src=0)
    return v

"""The curvature of the closure's graph as a flat linear operator, averaged over ranks."""

from __future__ import annotations

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
        with torch.enable_grad():
            out = flatten_tensors(self._product(unflatten_vector(v, self._live)))
        return self._finish(out, v)

    def matmat(self, m: Tensor) -> Tensor:
        columns = [unflatten_vector(m[:, k], self._live) for k in range(m.shape[1])]
        with torch.enable_grad():
            prods = self._product.many(columns)
        return self._finish(torch.stack([flatten_tensors(p) for p in prods], dim=1), m)


def _rank0_vector(v: Tensor) -> Tensor:
    """Rank 0's copy of ``v`` on every rank."""
    v = v.clone()
    dist.broadcast(v, src=0)
    return v

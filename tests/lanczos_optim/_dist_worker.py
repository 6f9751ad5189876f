"""Worker for test_distributed.py: run under torchrun with 2 processes (gloo, CPU)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lanczos_optim import GGNOperator, HessianOperator, lanczos, spectral_density


def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return model, x, y


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 5) -> list:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def spectra(model, data) -> dict[str, np.ndarray]:
    out = {}
    for name, cls in (("hessian", HessianOperator), ("ggn", GGNOperator)):
        op = cls(model, nn.CrossEntropyLoss(), data)
        res = lanczos(op, 30, generator=torch.Generator().manual_seed(7))
        out[f"{name}_ritz"] = res.ritz_values.numpy()
        out[f"{name}_weights"] = res.weights.numpy()
        kept = cls(model, nn.CrossEntropyLoss(), data, cache_graphs=True)
        res = lanczos(kept, 30, generator=torch.Generator().manual_seed(7))
        out[f"{name}_ritz_kept_graphs"] = res.ritz_values.numpy()
        sd = spectral_density(op, 10, 3, generator=torch.Generator().manual_seed(8))
        out[f"{name}_slq_nodes"] = sd.nodes.numpy()
        loss, grad = op.loss_and_gradient()
        out[f"{name}_loss"] = np.array([loss])
        out[f"{name}_grad"] = grad.numpy()
    out.update(weighted(model, data))
    return out


def weighted(model, data) -> dict[str, np.ndarray]:
    """Class weights and ignored targets: the normaliser is all-reduced with the products."""
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([0.3, 1.7, 0.9], dtype=torch.float64))
    data = [(x, y.masked_fill(x[:, 0] > 0.5, -100)) for x, y in data]  # per sample: any sharding
    out = {}
    for name, cls in (("hessian", HessianOperator), ("ggn", GGNOperator)):
        op = cls(model, loss_fn, data)
        v = torch.linspace(-1.0, 1.0, op.shape[0], dtype=torch.float64)
        out[f"{name}_weighted_product"] = (op @ v).numpy()
        loss, grad = op.loss_and_gradient()
        out[f"{name}_weighted_loss"] = np.array([loss])
        out[f"{name}_weighted_grad"] = grad.numpy()
    return out


def _compute(rank: int) -> dict[str, np.ndarray]:
    model, x, y = problem()
    torch.manual_seed(100 + rank)  # different global RNG per rank: the start vector must not care
    shard = slice(0, 13) if rank == 0 else slice(13, 20)  # ragged shards, ragged batches
    return spectra(model, batches(x[shard], y[shard]))


def main() -> None:
    from _dist_common import run_on_ranks  # beside this script, on sys.path under torchrun

    run_on_ranks(_compute, lambda other: {"other_rank_hessian": other["hessian_ritz"]})


if __name__ == "__main__":
    main()

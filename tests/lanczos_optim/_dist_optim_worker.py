"""Worker for test_distributed.py: both optimisers with 2 gloo processes, each a data shard."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton


def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(16, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def train(model, cls, x, y, steps: int = 4) -> np.ndarray:
    opt = cls(model.parameters(), lanczos_steps=8, krylov_start="random", seed=3)
    for _ in range(steps):

        def closure():
            out = model(x)
            return nn.functional.cross_entropy(out, y), out

        opt.step(closure)
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()


def _compute(rank: int) -> dict[str, np.ndarray]:
    torch.manual_seed(100 + rank)  # ranks' global RNGs differ: the optimiser must not care
    out = {}
    for name, cls in (("newton", LanczosNewton), ("saddle_free", LanczosSaddleFreeNewton)):
        model, x, y = problem()
        shard = slice(0, 8) if rank == 0 else slice(8, 16)  # equal shards: mean of means
        out[name] = train(model, cls, x[shard], y[shard])
    return out


def main() -> None:
    from _dist_common import run_on_ranks  # beside this script, on sys.path under torchrun

    run_on_ranks(_compute, lambda other: {f"{k}_rank1": v for k, v in other.items()})


if __name__ == "__main__":
    main()

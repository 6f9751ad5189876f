"""Worker for test_distributed.py: both optimisers with 2 gloo processes, each a data shard."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
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


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)  # ranks' global RNGs differ: the optimiser must not care
    out = {}
    for name, cls in (("newton", LanczosNewton), ("saddle_free", LanczosSaddleFreeNewton)):
        model, x, y = problem()
        shard = slice(0, 8) if rank == 0 else slice(8, 16)  # equal shards: mean of means
        out[name] = train(model, cls, x[shard], y[shard])
    gathered = [None, None]
    dist.all_gather_object(gathered, {k: v.tolist() for k, v in out.items()})
    if rank == 0:
        np.savez(sys.argv[1], **out, **{f"{k}_rank1": np.array(v) for k, v in gathered[1].items()})
    dist.barrier()
    dist.destroy_process_group()
    # torch 2.14's gloo/store threads sometimes abort the interpreter's shutdown ("terminate
    # called without an active exception", about 1 run in 10) after all the work is done and
    # written; skip the C++ static destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

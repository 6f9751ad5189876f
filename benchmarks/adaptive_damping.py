"""Quick digits run: LanczosNewton with fixed damping against adaptive damping (one thread).

The digits MLP of ``benchmarks/peers_optim.py`` (64-64-10 tanh, batches of 64, its 80/20
train/validation split and batch order), lr 1 and the other options at their defaults. Prints
the markdown table of ``docs/guides/optimizers.md`` (section "Adaptive damping"): the final
full training loss and validation loss, mean over the seeds, and each seed's final damping.

Run:  python benchmarks/adaptive_damping.py [--steps 300] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_optim as po

from lanczos_optim import LanczosNewton

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults (fixed damping 1)": {},
    "fixed damping 0.3": {"damping": 0.3},
    "fixed damping 3": {"damping": 3.0},
    "fixed damping 1e-4 (the floor)": {"damping": 1e-4},
    "adaptive from 1": {"adaptive_damping": True},
    "adaptive from 0.1": {"adaptive_damping": True, "damping": 0.1},
    "adaptive from 10": {"adaptive_damping": True, "damping": 10.0},
    "adaptive from 1, rho on another batch": {"adaptive_damping": True, "other_batch": True},
}


class _OtherBatch(LanczosNewton):
    """Adaptive damping with ``rho_closure`` on a random training batch of the same size."""

    def __init__(self, params: Any, model: torch.nn.Module, data: po.Data, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.model, self.data = model, data
        self.gen = torch.Generator().manual_seed(7)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        x, y = self.data.train
        idx = torch.randint(0, len(y), (64,), generator=self.gen)
        return super().step(closure, rho_closure=lambda: po._ce(self.model(x[idx]), y[idx]))


def _maker(data: po.Data, made: list[LanczosNewton]) -> po.Make:
    def make(params: Any, model: torch.nn.Module, **setting: Any) -> LanczosNewton:
        if setting.pop("other_batch", False):
            opt: LanczosNewton = _OtherBatch(params, model, data, **setting)
        else:
            opt = LanczosNewton(params, **setting)
        made.append(opt)
        return opt

    return make


def run(label: str, steps: int, seeds: list[int]) -> str:
    """One table row: mean final train and validation loss, and the final dampings."""
    prob = po.problems(False)["digits-mlp"]
    prob.steps = steps
    data = po.load_data(prob)
    setting = CONFIGS[label]
    train, val, damping = [], [], []
    for seed in seeds:
        made: list[LanczosNewton] = []
        spec = po.Spec(label, _maker(data, made), [setting])
        done = po.train_run(prob, data, spec, po.Run("digits", label, setting, seed, "tune"), None)
        train.append(done.train_loss[-1])
        val.append(done.eval_loss)
        damping.append(made[0].param_groups[0]["damping"])
    dampings = ", ".join(f"{d:.3g}" for d in damping)
    return f"| {label} | {sum(train) / len(train):.4f} | {sum(val) / len(val):.4f} | {dampings} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| LanczosNewton | train loss | validation loss | final damping (per seed) |")
    print("|---|---|---|---|")
    for label in CONFIGS:
        print(run(label, args.steps, args.seeds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

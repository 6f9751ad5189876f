"""Train a LightningModule with LanczosNewton and LanczosSaddleFreeNewton (automatic optimisation).

Two things differ from a LightningModule trained with SGD or Adam::

    def backward(self, loss, *args, **kwargs):
        loss.backward(create_graph=True)          # keep the gradient's graph for the curvature

    def configure_optimizers(self):
        return LanczosNewton(self.parameters()).attach(self)   # attach: outputs for the GGN

Lightning's closure runs ``training_step`` and ``backward`` itself; the optimiser reads the
gradient from ``p.grad`` and its curvature products from the graph that ``create_graph=True``
kept (``LanczosSaddleFreeNewton`` uses the Hessian by default and needs no ``attach``).
``gradient_clip_val`` clips that gradient; ``precision="bf16-mixed"`` works as it is (the
optimiser's own arithmetic runs in float32).

Run it (digits, a small MLP; ``--quick`` takes a few seconds)::

    .venv/bin/python examples/lightning_example.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton


class DigitsClassifier(L.LightningModule):
    """A 64-32-10 tanh MLP on 8x8 digits."""

    def __init__(self, optimizer: str = "LanczosNewton") -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        self.optimizer_name = optimizer
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(create_graph=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "LanczosNewton":
            return LanczosNewton(self.parameters(), lanczos_steps=10).attach(self)
        return LanczosSaddleFreeNewton(self.parameters(), lanczos_steps=10)


def loader(quick: bool) -> DataLoader:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    if quick:
        x, y = x[:512], y[:512]
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset, 16 steps")
    parser.add_argument("--precision", default="32", help="Lightning precision, e.g. bf16-mixed")
    args = parser.parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)
    ok = True
    for name in ("LanczosNewton", "LanczosSaddleFreeNewton"):
        torch.manual_seed(0)
        module = DigitsClassifier(name)
        trainer = L.Trainer(
            max_steps=16 if args.quick else 200,
            accelerator="cpu",
            precision=args.precision,
            gradient_clip_val=5.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, loader(args.quick))
        first, last = module.losses[0], sum(module.losses[-4:]) / 4
        print(f"lightning.{name}: first_loss={first:.4f} last_loss={last:.4f}")
        ok = ok and last < first
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

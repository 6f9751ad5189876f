"""Swap SGD for LanczosNewton in an ordinary PyTorch training loop: three lines change.

The loop below is the standard closure form that every ``torch.optim`` optimiser accepts.
Going from SGD to LanczosNewton changes exactly these three lines::

    -    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    +    optimizer = LanczosNewton(model.parameters())
         ...
    -            loss.backward()
    -            return loss
    +            return loss, outputs

LanczosNewton differentiates the loss itself (it needs the graph for its curvature products),
so the closure only runs the forward pass; with the default GGN curvature it also needs the
model outputs. ``p.grad`` is still filled in, and ``optimizer.last_info`` tells what the step
measured (Ritz values, products, time).

Run it (digits, a small MLP; ``--quick`` takes a few seconds)::

    .venv/bin/python examples/swap_optimizer.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lanczos_optim import LanczosNewton


def make_data(quick: bool) -> tuple[DataLoader, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    if quick:
        x, y = x[:256], y[:256]
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)
    return loader, x, y


def train(epochs: int, quick: bool) -> float:
    torch.manual_seed(0)
    loader, x_all, y_all = make_data(quick)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = LanczosNewton(
        model.parameters()
    )  # was: torch.optim.SGD(..., lr=0.05, momentum=0.9)

    for epoch in range(epochs):
        start = time.perf_counter()
        for x, y in loader:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y):
                optimizer.zero_grad()
                outputs = model(x)
                loss = loss_fn(outputs, y)
                # was: loss.backward()
                return loss, outputs  # was: return loss

            optimizer.step(closure)

        with torch.no_grad():
            full = float(loss_fn(model(x_all), y_all))
            acc = float((model(x_all).argmax(1) == y_all).float().mean())
        info = optimizer.last_info
        print(
            f"epoch {epoch + 1}: training loss {full:.4f}, accuracy {acc:.3f}, "
            f"{time.perf_counter() - start:.2f} s | last step: {info.num_products} products, "
            f"Ritz values [{float(info.ritz_values[0]):.3g}, {float(info.ritz_values[-1]):.3g}], "
            f"{info.product_seconds / info.total_seconds:.0%} of its time in products"
        )
    return full


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a subset and one epoch")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 5)
    if args.quick:
        torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead (and contention)
    loss = train(epochs, args.quick)
    return 0 if loss == loss else 1  # non-zero exit on a NaN loss


if __name__ == "__main__":
    raise SystemExit(main())

"""Step time of LanczosNewton on a torch.compile'd model against the eager model.

A compiled model cannot be differentiated twice (aot_autograd), so with
``optimizer.attach(compiled)`` the forward pass and the gradient run compiled while the
curvature products run on an eager re-run of ``model._orig_mod`` (one extra eager forward per
step). This script measures what that costs or saves: a 784-512-512-10 tanh MLP on a batch of
random data, LanczosNewton (GGN, ``lanczos_steps`` products), eager against compiled, in both
the closure and the backward protocol, medians of interleaved repeats after warm-up.

Run: ``python benchmarks/compile_step.py [--device cuda] [--backend inductor] [--steps 10]``.
Prints one line per protocol: ``compile.<protocol>: eager_ms=... compiled_ms=... ratio=...``
(ratio = compiled / eager; below 1 the compiled model is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lanczos_optim import LanczosNewton


def _model(device: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10)
    ).to(device)


def _step(opt: LanczosNewton, run: nn.Module, x: torch.Tensor, y: torch.Tensor, proto: str):
    if proto == "closure":

        def closure():
            out = run(x)
            return nn.functional.cross_entropy(out, y), out

        opt.step(closure)
    else:
        nn.functional.cross_entropy(run(x), y).backward(create_graph=True)
        opt.step()
        opt.zero_grad()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(device: str, backend: str, steps: int, batch: int, lanczos_steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 784, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    for proto in ("closure", "backward"):
        runs = {}
        for kind in ("eager", "compiled"):
            model = _model(device)
            run = torch.compile(model, backend=backend) if kind == "compiled" else model
            opt = LanczosNewton(model.parameters(), lanczos_steps=lanczos_steps).attach(run)
            runs[kind] = (opt, run)
            for _ in range(3):  # warm-up (compilation)
                _step(opt, run, x, y, proto)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(steps):
            for kind, (opt, run) in runs.items():
                _sync(device)
                t0 = time.perf_counter()
                _step(opt, run, x, y, proto)
                _sync(device)
                times[kind].append(time.perf_counter() - t0)
        eager, compiled = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
        print(
            f"compile.{proto}: eager_ms={eager:.2f} compiled_ms={compiled:.2f} "
            f"ratio={compiled / eager:.3f} backend={backend} device={device}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor", help="inductor, aot_eager, ...")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lanczos-steps", type=int, default=20)
    args = parser.parse_args(argv)
    measure(args.device, args.backend, args.steps, args.batch_size, args.lanczos_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak resident memory of two optimiser steps on torchvision's ResNet-18, against a goal.

Each optimiser runs in a fresh process (so the peaks do not mix): torchvision ResNet-18 with 10
classes (P = 11.2 M parameters), a batch of 32 random 3 x 32 x 32 images, two steps, on the CPU.
Reported: the process's peak resident memory (RSS, ``ru_maxrss``) and its rise above the RSS
once the model and batch exist. The goal for a Lanczos optimiser is Adam's peak plus its
``m x P`` basis (``m = lanczos_steps``, in the basis's storage dtype) plus one gradient-sized
buffer. Writes benchmarks/results/optimizer_memory.md.

Run: ``python benchmarks/optimizer_memory.py [--batch 32] [--quick]`` (``--quick``: a small
MLP instead of ResNet-18, for the test of this script).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _report import write_report  # benchmarks/_report.py (this script's folder)

_CHILD = r"""
import json, resource, sys, torch
from torch import nn
arch, batch, name, kwargs = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
torch.manual_seed(0)
if arch == "resnet18":
    import torchvision
    model, shape = torchvision.models.resnet18(num_classes=10), (3, 32, 32)
else:
    layers = [nn.Flatten(), nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, 10)]
    model, shape = nn.Sequential(*layers), (3, 4, 4)
x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
params = sum(p.numel() for p in model.parameters())
if "basis_dtype" in kwargs:
    kwargs["basis_dtype"] = getattr(torch, kwargs["basis_dtype"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if name in ("SGD", "Adam"):
    opt = getattr(torch.optim, name)(model.parameters(), **kwargs)
    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
else:
    import lanczos_optim
    opt = getattr(lanczos_optim, name)(model.parameters(), **kwargs)
    def closure():
        out = model(x)
        return nn.functional.cross_entropy(out, y), out
    def step():  # the canonical closure loop: zero_grad, then step (as Adam's row)
        opt.zero_grad()
        return opt.step(closure)
losses = [float(step()) for _ in range(2)]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak": peak / 1024, "rise": (peak - base) / 1024, "params": params,
                  "losses": losses}))
"""

#: (label, optimiser, keywords, Lanczos basis rows, bytes per basis entry)
CONFIGS: tuple[tuple[str, str, dict, int, int], ...] = (
    ("SGD (momentum 0.9)", "SGD", {"lr": 0.1, "momentum": 0.9}, 0, 0),
    ("Adam", "Adam", {"lr": 1e-3}, 0, 0),
    ("LanczosNewton defaults", "LanczosNewton", {}, 5, 4),
    ("LanczosNewton(lanczos_steps=20)", "LanczosNewton", {"lanczos_steps": 20}, 20, 4),
    (
        "LanczosNewton(lanczos_steps=20, basis_dtype=bfloat16)",
        "LanczosNewton",
        {"lanczos_steps": 20, "basis_dtype": "bfloat16"},
        20,
        2,
    ),
    (
        "LanczosNewton(lanczos_steps=5, update_every=5)",
        "LanczosNewton",
        {"lanczos_steps": 5, "update_every": 5},
        5,
        4,
    ),
)


def run(arch: str, batch: int, name: str, kwargs: dict) -> dict:
    """One configuration in a fresh process; its peak RSS (MiB), rise, P and losses."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, arch, str(batch), name, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(arch: str, batch: int) -> list[str]:
    """The report's lines: one row per configuration, the goal where a basis is kept."""
    lines = [
        f"Two steps on the CPU, {arch}, batch {batch}; each row a fresh process. Goal of a "
        "Lanczos optimiser: Adam's peak + m x P basis + one gradient (P floats).",
        "",
        "| optimizer | peak RSS MiB | rise MiB | goal MiB | within goal |",
        "|---|---|---|---|---|",
    ]
    adam = None
    for label, name, kwargs, rows, nbytes in CONFIGS:
        r = run(arch, batch, name, kwargs)
        adam = r["peak"] if name == "Adam" else adam
        goal, verdict = "-", "-"
        if rows and adam is not None:
            budget = adam + (rows * nbytes + 4) * r["params"] / 2**20
            goal = f"{budget:.0f}"
            verdict = "yes" if r["peak"] <= budget else f"no (+{r['peak'] - budget:.0f})"
        lines.append(f"| {label} | {r['peak']:.0f} | {r['rise']:.0f} | {goal} | {verdict} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a small MLP instead of ResNet-18")
    parser.add_argument("--out", default="benchmarks/results/optimizer_memory.md")
    args = parser.parse_args()
    arch = "mlp" if args.quick else "resnet18"
    write_report(table(arch, args.batch), args.out)


if __name__ == "__main__":
    main()

r"""Gradient signal-to-noise ratio on the damping study's problems (issue 17, item 1).

Why does adaptive damping with the reduction ratio measured on a *second* batch
(``rho_closure``) drive the damping to its ceiling? For a large damping :math:`\delta` the step
is :math:`d \approx -g_B/\delta` along the step batch's gradient :math:`g_B`, the model predicts
the decrease :math:`\|g_B\|^2/\delta` and an independent batch :math:`B'` sees
:math:`g_{B'}^\top g_B/\delta`. The ratio of the expectations is then the gradient's signal fraction

.. math::
    \mathrm{SNR} = \frac{\|\bar g\|^2}{\mathbb E \|g_B\|^2}, \qquad
    \mathbb E \|g_B\|^2 = \|\bar g\|^2 + \frac{N - b}{b\,(N - 1)}
    \Bigl(\tfrac1N \sum_i \|g_i\|^2 - \|\bar g\|^2\Bigr),

(:math:`\bar g` the full training gradient, :math:`g_i` the per-example gradients, batches of
:math:`b` of the :math:`N` examples drawn without replacement, as a shuffled loader does). A
smaller damping lets the step fit the batch's noise, which lowers the ratio further. Where the
SNR is near or below the Levenberg--Marquardt threshold :math:`\rho < 1/4` no damping satisfies
the rule, and it raises the damping at every step.

This script trains LanczosNewton at its defaults on each problem of ``peers_optim`` (its data,
batch size and step budget; seed 0) and prints the exact SNR (per-example gradients with
``torch.func``, no sampling) at four points of the run.

    python benchmarks/gradient_snr.py            # about 3 minutes of one CPU thread
    python benchmarks/gradient_snr.py --quick    # tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_optim as po
from _report import write_report

from lanczos_optim import LanczosNewton

CHUNK = 256  # examples per vmap call


def gradient_snr(model: nn.Module, loss_fn: po.LossFn, x: Tensor, y: Tensor, batch: int) -> float:
    r""":math:`\|\bar g\|^2 / \mathbb E\|g_B\|^2` over batches of ``batch`` without replacement."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = torch.func.functional_call(model, p, (xi[None],))
        return loss_fn(out, yi[None])

    per_example = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
    n = len(y)
    total = [torch.zeros_like(v, dtype=torch.float64) for v in params.values()]
    squares = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, CHUNK):
        grads = per_example(params, x[start : start + CHUNK], y[start : start + CHUNK])
        for acc, g in zip(total, grads.values(), strict=True):
            g = g.double()
            acc += g.sum(0)
            squares += g.flatten(1).pow(2).sum()
    signal = sum(float((t / n).pow(2).sum()) for t in total)
    spread = float(squares) / n - signal
    return signal / (signal + (n - batch) / (batch * (n - 1)) * spread)


def _run(name: str, prob: po.Problem) -> list[str]:
    data = po.load_data(prob)
    x, y = data.train
    loss_fn = po.loss_of(prob)
    torch.manual_seed(0)
    model = prob.model()
    opt = LanczosNewton(model.parameters())
    order = torch.Generator().manual_seed(0)
    marks = [0, prob.steps // 10, prob.steps // 2, prob.steps]
    snr: dict[int, float] = {}
    for step in range(prob.steps + 1):
        if step in marks:
            snr[step] = gradient_snr(model, loss_fn, x, y, prob.batch)
        if step == prob.steps:
            break
        idx = torch.randperm(len(y), generator=order)[: prob.batch]

        def closure(idx: Tensor = idx) -> tuple[Tensor, Tensor]:
            out = model(x[idx])
            return loss_fn(out, y[idx]), out

        opt.step(closure)
    cells = [f"{snr[s]:.3f}" for s in marks]
    steps = " / ".join(str(s) for s in marks)
    return [f"| {name} | {prob.batch} | {len(y)} | {steps} | " + " | ".join(cells) + " |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny problems (seconds)")
    parser.add_argument("--out", default=str(po.RESULTS / "gradient_snr.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    lines = [
        "| problem | batch | training examples | at steps | SNR at start | at 10 % | at 50 % "
        "| at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, prob in po.problems(args.quick).items():
        lines += _run(name, prob)
    minutes = (time.perf_counter() - began) / 60
    head = (
        f"`benchmarks/gradient_snr.py`{' --quick' if args.quick else ''}, LanczosNewton "
        f"defaults, seed 0, torch {torch.__version__}, one CPU thread; {minutes:.1f} min. "
        "SNR = ||mean gradient||^2 / E||batch gradient||^2 (exact, per-example gradients)."
    )
    write_report([head, "", *lines], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

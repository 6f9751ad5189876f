r"""Greedy cross-validated damping on the damping study's problems (issue 17, item 1).

Adaptive damping with :math:`\rho` measured on a second batch runs the damping to its ceiling
(``damping_study.py``). This script asks whether the *best one-step* damping, judged on a second
batch, is any better. After each LanczosNewton step it takes the step's Ritz values
:math:`\theta_i`, the coordinates :math:`a_i = u_i^\top g_B` of the step batch's gradient and
:math:`b_i = u_i^\top g_{B'}` of a second, independent batch's gradient (one more forward and
backward pass, at the parameters before the step), and estimates the second batch's decrease
for the step :math:`-\sum_i a_i u_i / (\theta_i + \delta)` for every damping :math:`\delta`:

.. math::
    D(\delta) = \sum_i \frac{a_i b_i}{\theta_i + \delta}
              - \frac{1}{2} \sum_i \frac{\theta_i a_i^2}{(\theta_i + \delta)^2},
    \qquad \delta^\star = \arg\max_\delta D(\delta)
    \quad (\text{one direction: } \delta^\star = \theta (a / b - 1)).

:math:`g_{B'}` is unbiased for the full gradient, so for each :math:`\delta`, :math:`D(\delta)` is
an unbiased estimate of the one-step decrease of the training loss's quadratic model (curvature
from the step's batch); its maximiser :math:`\delta^\star` is not unbiased. ``--full-gradient``
takes :math:`b` from the whole training split's gradient instead, a control without sampling
noise in :math:`b`. :math:`D` counts only the Krylov space: with the default gradient start the
step has no component outside it (with ``krylov_start="random"`` it would). The
damping then moves towards :math:`\delta^\star` by the Levenberg--Marquardt factor 3/2 per step
(kept where :math:`\delta^\star` is within that factor), within :math:`[10^{-4}, 10^4]`.

Reported per problem and seed (``peers_optim``'s problems, initial weights and batches, as in
``damping_study.py``): the training loss against the fixed grid {0.1, 0.3, 1, 3} run in the same
process (the tuned reference), the held-out loss, the damping's median over the run and the
median of the targets :math:`\delta^\star`, and the step time against the default step.

    python benchmarks/greedy_damping.py                    # about 6 minutes of one CPU thread
    python benchmarks/greedy_damping.py --full-gradient    # the control
    python benchmarks/greedy_damping.py --quick            # tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import damping_study as ds
import peers_optim as po
from _report import write_report

from lanczos_optim import flatten_tensors

DELTAS = torch.logspace(-4, 4, 81, dtype=torch.float64)  # 10 points a decade
LABEL = "greedy cross-validated"


def greedy_damping(theta: Tensor, a: Tensor, b: Tensor, deltas: Tensor = DELTAS) -> float:
    r"""The damping in ``deltas`` that maximises :math:`D(\delta)` (module docstring)."""
    theta, a, b = (t.double().cpu() for t in (theta.clamp_min(0), a, b))
    shifted = theta[None] + deltas[:, None]
    gain = (a * b)[None] / shifted - 0.5 * theta[None] * a[None] ** 2 / shifted**2
    return float(deltas[int(gain.sum(1).argmax())])


class _Greedy(ds._Recorded):
    """LanczosNewton whose damping moves towards each step's greedy target."""

    def __init__(self, params: Any, model: torch.nn.Module, second: Any, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.model, self.second, self.solved = model, second, None
        self.targets: list[float] = []

    def _solve(self, *args: Any, **kw: Any) -> Any:
        solve = super()._solve(*args, **kw)
        self.solved = solve.info
        return solve

    def step(self, closure: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        params = [p for group in self.param_groups for p in group["params"]]
        with torch.enable_grad():
            g2 = flatten_tensors(torch.autograd.grad(self.second(self.model), params))
        self.forwards += 1
        out = super().step(closure, **kw)
        if self.last_info is None or self.last_info.skipped or self.solved is None:
            return out
        u = self.solved.ritz_vectors.double()
        a = u.T @ flatten_tensors([p.grad for p in params]).double()
        target = greedy_damping(self.solved.ritz_values, a, u.T @ g2.double())
        self.targets.append(target)
        damping = float(self.param_groups[0]["damping"])
        if target > 1.5 * damping:
            damping *= 1.5
        elif target < damping / 1.5:
            damping /= 1.5
        for group in self.param_groups:
            group["damping"] = min(max(damping, 1e-4), 1e4)
        return out


def _greedy_row(
    name: str, prob: po.Problem, data: po.Data, seed: int, full: bool = False
) -> dict[str, Any]:
    """The greedy row's run: ``b`` from ``damping_study``'s second stream of batches, or with
    ``full`` from the gradient of the whole training split (the control without sampling noise
    in ``b``)."""
    xtr, ytr = data.train
    loss_fn = po.loss_of(prob)
    batches = po.Batches(len(ytr), prob.batch, po.SECOND_STREAM + seed)
    made: list[_Greedy] = []

    def second(model: torch.nn.Module) -> Tensor:
        if full:
            return loss_fn(model(xtr), ytr)
        idx = batches.next()
        return loss_fn(model(xtr[idx]), ytr[idx])

    def make(params: Any, model: torch.nn.Module, **setting: Any) -> _Greedy:
        made.append(_Greedy(params, model, second, **setting))
        return made[-1]

    run = po.train_run(
        prob, data, po.Spec(LABEL, make, [{}]), po.Run(name, LABEL, {}, seed, "seed"), None
    )
    opt = made[0]
    return {
        "train": run.train_loss[-1],
        "held": run.eval_loss,
        "median": statistics.median(opt.dampings),
        "target": statistics.median(opt.targets),
        "seconds": run.step_seconds,
    }


def _line(name: str, seed: int, grid: list[dict[str, Any]], g: dict[str, Any]) -> str:
    default = next(r for r in grid if r["label"] == ds.DEFAULT)
    tuned = min(grid, key=lambda r: r["train"])
    return (
        f"| {name} | {seed} | {g['train']:.4g} | {g['train'] / tuned['train']:.3f} "
        f"| {tuned['label']} | {g['held']:.4g} | {default['held']:.4g} | {g['median']:.3g} "
        f"| {g['target']:.3g} | {g['seconds'] / default['seconds']:.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument(
        "--full-gradient",
        action="store_true",
        help="b from the whole training split's gradient instead of a second batch (a control)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = "greedy_damping_full.md" if args.full_gradient else "greedy_damping.md"
    out = args.out or po.RESULTS / report
    torch.set_num_threads(1)
    started = time.perf_counter()
    lines = [
        "| problem | seed | train loss | x tuned | tuned (best fixed) | held-out | held-out, "
        "default | median damping | median target | step time x default |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, prob in po.problems(args.quick).items():
        data = po.load_data(prob)
        for seed in args.seeds:
            grid = [ds._one(name, prob, data, label, seed) for label in ds.GRID]
            greedy = _greedy_row(name, prob, data, seed, args.full_gradient)
            lines.append(_line(name, seed, grid, greedy))
            print(lines[-1], flush=True)
    head = (
        f"`benchmarks/greedy_damping.py{' --quick' if args.quick else ''}"
        f"{' --full-gradient' if args.full_gradient else ''}`, LanczosNewton lr 1, "
        f"torch {torch.__version__}, one CPU thread, seeds {args.seeds}; this run took "
        f"{(time.perf_counter() - started) / 60:.1f} min."
    )
    write_report([head, "", *lines], out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Damping study: fixed against adaptive damping on the four problems (issue 17, items 1 and 4).

One LanczosNewton damping setting per row (lr 1, the other options at their defaults): fixed
damping 1 (the default), the fixed dampings 0.1, 0.3 and 3 (with 1, the grid of
``peers_optim``'s tuned LanczosNewton), ``adaptive_damping=True``, adaptive with
``max_step_norm=0.3``, adaptive with 20 Lanczos steps, fixed damping 1e-3 with 20 Lanczos steps,
adaptive with both ``max_step_norm=0.3`` and 20 Lanczos steps, and four adaptive rows that
measure the reduction ratio on a second batch (``step(closure, rho_closure=...)``, see "Second
batch" below), on the digits MLP, the Fashion-MNIST MLP and CNN and the deep autoencoder of
``benchmarks/peers_optim.py`` (its problems, data splits, initial weights and batch order:
``peers_optim.train_run``).

Second batch. ``rho_closure`` is the mean training loss (the problem's loss function) on one
mini-batch of the training split, of the problem's batch size, evaluated under ``no_grad`` by
the optimiser before and after the step. "ρ on a second batch": step t uses the t-th batch of
a second stream over the training split, drawn exactly as ``train_run`` draws the training
batches (a ``torch.randperm`` per epoch, a new one when fewer than a batch of indices remain)
but from ``torch.Generator().manual_seed(2000 + seed)`` instead of ``1000 + seed``: independent
of the step's batch (the two may share examples by chance). "ρ on the next batch": step t uses
batch t + 1 of the training stream itself (the batch the next step trains on, what a loop that
prefetches one batch has at hand). "ρ on the step's and a second batch": ``rho_closure``
returns the mean of the closure's loss (the step's batch) and the second stream's batch's loss,
the loss of the union of the two batches: its ratio sits between the optimistic
same-batch one and the pessimistic second-batch one.

Reported per row: the final training loss (whole training split), the held-out (test) loss, the
damping in force at the end and its median over the steps (the damping each step used), the
extra forward passes per step (closure re-evaluations and ``rho_closure`` calls: 0 for a fixed
damping, 1 for the same-batch ratio, 2 with a second batch, 4 with both), the share of the
steps that the ``max_step_norm`` trust region shortened (``last_info.step_scale < 1``), the step
time (measured during training, evaluation excluded, the extra forwards included; noisy on a
shared machine) as a ratio to the default row, and the training loss as a ratio to the best of
the fixed grid {0.1, 0.3, 1, 3} (the tuned setting; item 1 asks for 1.10 at most on every
problem). Seed 0 and the ``--check-seeds`` (default: seed 1) run every row; the tuned reference
is the grid's best of the same seed. On the autoencoder, Adam at its tuned
setting (from ``peers_optim.json``) runs in the same process, and each row's steps and seconds
to Adam's final training loss are compared with Adam's own (seed 0; the training loss is
evaluated every 5 steps there).

    python benchmarks/damping_study.py            # about 25 minutes of one CPU thread
    python benchmarks/damping_study.py --quick    # tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_optim as po
from _peers_table import _reach
from _report import write_report

from lanczos_optim import LanczosNewton

DEFAULT = "fixed 1 (default)"
GRID = ("fixed 0.1", "fixed 0.3", DEFAULT, "fixed 3")  # peers_optim's tuned grid (lr 1)
ROWS: dict[str, dict[str, Any]] = {
    DEFAULT: {},
    "fixed 0.1": {"damping": 0.1},
    "fixed 0.3": {"damping": 0.3},
    "fixed 3": {"damping": 3.0},
    "adaptive": {"adaptive_damping": True},
    "adaptive, max_step_norm 0.3": {"adaptive_damping": True, "max_step_norm": 0.3},
    "adaptive, 20 steps": {"adaptive_damping": True, "lanczos_steps": 20},
    "fixed 1e-3, 20 steps": {"damping": 1e-3, "lanczos_steps": 20},
    "adaptive, max_step_norm 0.3, 20 steps": {
        "adaptive_damping": True,
        "max_step_norm": 0.3,
        "lanczos_steps": 20,
    },
    # "rho" is the study's own key (not an optimiser option): where rho_closure's batch comes from
    "adaptive, ρ on a second batch": {"adaptive_damping": True, "rho": "second"},
    "adaptive, max_step_norm 0.3, ρ on a second batch": {
        "adaptive_damping": True,
        "max_step_norm": 0.3,
        "rho": "second",
    },
    "adaptive, ρ on the next batch": {"adaptive_damping": True, "rho": "next"},
    "adaptive, ρ on the step's and a second batch": {"adaptive_damping": True, "rho": "both"},
}
HEADER = [
    "| problem | damping setting | train loss | held-out loss | final damping | median damping "
    "| extra forwards / step | steps cut by trust region | step time x default "
    "| train loss x tuned |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def _rho_source(prob: po.Problem, data: po.Data, where: str, seed: int) -> Any:
    """``source(model)``: a callable returning each step's ``rho_closure`` (module docstring)."""
    xtr, ytr = data.train
    loss_fn = po.loss_of(prob)
    stream = po.TRAIN_STREAM if where == "next" else po.SECOND_STREAM
    batches = po.Batches(len(ytr), prob.batch, stream + seed)
    if where == "next":
        batches.next()  # the training stream's first batch: step t gets batch t + 1

    def source(model: torch.nn.Module) -> Any:
        def next_closure() -> Any:
            idx = batches.next()
            x, y = xtr[idx], ytr[idx]
            return lambda: loss_fn(model(x), y)

        return next_closure

    return source


class _Recorded(LanczosNewton):
    """LanczosNewton that records its steps: taken, shortened, damping used, forward passes.

    With ``rho`` (a callable returning each step's second-batch closure) every step passes a
    ``rho_closure``: that closure, or with ``both`` the mean of its loss and the closure's.
    """

    def __init__(self, params: Any, rho: Any = None, both: bool = False, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.rho, self.both = rho, both
        self.taken, self.cut, self.forwards = 0, 0, 0
        self.dampings: list[float] = []

    def _counted(self, fn: Any) -> Any:
        def counted() -> Any:
            self.forwards += 1
            return fn()

        return counted

    def step(self, closure: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        closure = self._counted(closure)
        if self.rho is not None:
            second = self._counted(self.rho())
            kw["rho_closure"] = _mean_loss(closure, second) if self.both else second
        out = super().step(closure, **kw)
        self.forwards -= 1  # the step's own forward is not an extra one
        info = self.last_info
        if info is not None and not info.skipped:
            self.taken += 1
            self.cut += info.step_scale < 1.0
            self.dampings.append(info.damping)
        return out


def _mean_loss(first: Any, second: Any) -> Any:
    """A closure returning the mean of the losses of ``first`` and ``second``."""

    def loss(closure: Any) -> Tensor:
        ret = closure()
        return ret[0] if isinstance(ret, tuple) else ret

    return lambda: 0.5 * (loss(first) + loss(second))


def _maker(made: list[_Recorded], rho_source: Any) -> po.Make:
    def make(params: Any, model: torch.nn.Module, **setting: Any) -> _Recorded:
        where = setting.pop("rho", None)
        rho = rho_source(where)(model) if where else None
        opt = _Recorded(params, rho, where == "both", **setting)
        if setting.get("adaptive_damping"):
            opt.attach(model)  # as build_optimizer does
        made.append(opt)
        return opt

    return make


def _one(name: str, prob: po.Problem, data: po.Data, label: str, seed: int) -> dict[str, Any]:
    """One row's run: its losses, dampings, extra forwards, trust-region share and step time."""
    made: list[_Recorded] = []
    setting = ROWS[label]
    make = _maker(made, lambda where: _rho_source(prob, data, where, seed))
    spec = po.Spec(label, make, [setting])
    every = 5 if prob.autoencoder else None
    run = po.train_run(prob, data, spec, po.Run(name, label, setting, seed, "seed"), every)
    opt = made[0]
    return {
        "label": label,
        "run": run,
        "train": run.train_loss[-1] if not run.diverged else math.inf,
        "held": run.eval_loss,
        "damping": float(opt.param_groups[0]["damping"]),
        "median": statistics.median(opt.dampings) if opt.dampings else math.nan,
        "forwards": opt.forwards / max(1, opt.taken),
        "cut": opt.cut / max(1, opt.taken),
        "seconds": run.step_seconds,
    }


def _tuned(results: list[dict[str, Any]]) -> float:
    """The tuned reference of one problem and seed: the fixed grid's best training loss."""
    return min(r["train"] for r in results if r["label"] in GRID)


def _rows(results: list[dict[str, Any]], name: str) -> list[str]:
    """The table's lines for one problem and seed."""
    base = next(r for r in results if r["label"] == DEFAULT)["seconds"]
    tuned = _tuned(results)
    return [
        f"| {name} | {r['label']} | {r['train']:.4g} | {r['held']:.4g} | {r['damping']:.3g} "
        f"| {r['median']:.3g} | {r['forwards']:.2g} | {100 * r['cut']:.0f} % "
        f"| {r['seconds'] / base:.2f} | {r['train'] / tuned:.3f} |"
        for r in results
    ]


def _adam_setting() -> dict[str, float]:
    """Adam's tuned setting on the autoencoder in ``peers_optim.json`` (lr 0.01 without it)."""
    path = po.RESULTS / "peers_optim.json"
    if path.exists():
        for row in json.loads(path.read_text())["rows"]:
            if row["problem"] == "autoencoder" and row["optimizer"] == "Adam":
                return row["setting"]
    return {"lr": 0.01}


def _to_adam(results: list[dict[str, Any]], prob: po.Problem, data: po.Data) -> list[str]:
    """Steps and seconds of each autoencoder row to Adam's final training loss (seed 0)."""
    setting = _adam_setting()
    spec = po.Spec("Adam", po._named("adam"), [setting])
    adam = po.train_run(prob, data, spec, po.Run("autoencoder", "Adam", setting, 0, "seed"), 5)
    target = adam.train_loss[-1]
    t_adam, n_adam = _reach(asdict(adam), target)
    lines = [
        f"Adam ({', '.join(f'{k}={v}' for k, v in setting.items())}): final training loss "
        f"{target:.4g}, first reached at step {n_adam} after {t_adam:.2f} s.",
        "",
        "| damping setting | train loss | steps to Adam's loss | seconds | seconds x Adam |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        t, n = _reach(asdict(r["run"]), target)
        reached = n is not None
        lines.append(
            f"| {r['label']} | {r['train']:.4g} | {n if reached else 'never'} "
            f"| {f'{t:.2f}' if reached else 'never'} "
            f"| {f'{t / t_adam:.1f}' if reached else 'never'} |"
        )
    return lines


def _problem(
    name: str, prob: po.Problem, data: po.Data, seeds: list[int], log: Any
) -> dict[int, list]:
    """Every row on every seed."""
    out: dict[int, list[dict[str, Any]]] = {}
    for seed in seeds:
        out[seed] = []
        for label in ROWS:
            out[seed].append(_one(name, prob, data, label, seed))
            r = out[seed][-1]
            log(
                f"{name} seed {seed} {label}: train {r['train']:.4g} held {r['held']:.4g} "
                f"damping {r['damping']:.3g} median {r['median']:.3g} extra {r['forwards']:.2g} "
                f"cut {r['cut']:.2f} {r['seconds'] * 1e3:.1f} ms"
            )
    return out


def _summary(tables: dict[str, dict[int, list]], seed: int) -> list[str]:
    """Per row: on how many problems its training loss is within 10 % of the tuned grid's best."""
    lines = ["| damping setting | problems within 10 % of tuned | worst x tuned |", "|---|---|---|"]
    for label in ROWS:
        ratios = []
        for results in tables.values():
            tuned = _tuned(results[seed])
            ratios += [r["train"] / tuned for r in results[seed] if r["label"] == label]
        if ratios:
            within = sum(x <= 1.10 for x in ratios)
            lines.append(f"| {label} | {within} of {len(ratios)} | {max(ratios):.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--check-seeds", type=int, nargs="*", default=[1])
    parser.add_argument("--out", type=Path, default=po.RESULTS / "damping_study.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, seeds = time.perf_counter(), [0, *args.check_seeds]
    all_problems = po.problems(args.quick)
    data = {name: po.load_data(prob) for name, prob in all_problems.items()}
    tables = {
        name: _problem(name, prob, data[name], seeds, lambda msg: print(msg, flush=True))
        for name, prob in all_problems.items()
    }
    ae = all_problems["autoencoder"]
    to_adam = _to_adam(tables["autoencoder"][0], ae, data["autoencoder"])
    lines = [
        f"# Damping study{' (--quick)' if args.quick else ''}",
        "",
        f"`benchmarks/damping_study.py{' --quick' if args.quick else ''}`, LanczosNewton lr 1, "
        f"torch {torch.__version__}, one CPU thread, seeds {seeds}; this run took "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
    ]
    for seed in seeds:
        lines += ["", f"## Seed {seed}", "", *HEADER]
        for name, results in tables.items():
            lines += _rows(results[seed], name)
        lines += ["", f"Within 10 % of the tuned grid's best training loss (seed {seed}):", ""]
        lines += _summary(tables, seed)
    lines += ["", "## Autoencoder: time to Adam's final training loss (seed 0)", "", *to_adam]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

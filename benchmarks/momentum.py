"""Quick measurement: momentum for LanczosNewton (issue 17, item 2), one CPU thread.

LanczosNewton without momentum, with ``subspace_momentum=True`` (the previous direction joins
the Krylov space; the quadratic model picks its coefficient) and with heavy-ball ``momentum``
(0.5, lr 0.5), at the default damping 1 and at damping 0.1, on the digits and Fashion-MNIST MLPs
of ``benchmarks/peers_optim.py``; on its autoencoder at damping 0.01 with 20 Lanczos steps (the
setting that leaves the mean-image plateau). Each row starts from the seed's weights and sees the
seed's batches (``peers_optim.train_run``). Reported: the training loss (whole training split)
and the held-out loss after the step budget, mean over the seeds, and the step time as a ratio
to the row without momentum of the same problem and damping.

    python benchmarks/momentum.py            # the problems of peers_optim (about 5 minutes)
    python benchmarks/momentum.py --quick    # tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_optim as po
from _report import write_report

_MLP_BASES = ({}, {"damping": 0.1})
#: problem -> the settings without momentum each variant is compared with.
BASES: dict[str, tuple[dict[str, Any], ...]] = {
    "digits-mlp": _MLP_BASES,
    "fashion-mlp": _MLP_BASES,
    "autoencoder": ({"damping": 0.01, "lanczos_steps": 20},),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "subspace_momentum": {"subspace_momentum": True},
    "momentum 0.5, lr 0.5": {"momentum": 0.5, "lr": 0.5},
}


def _mean_run(name: str, prob: po.Problem, data: po.Data, setting: dict, seeds: int) -> tuple:
    """Mean final training loss, held-out loss and step seconds over the seeds."""
    runs = []
    for seed in range(seeds):
        spec = po.Spec("LanczosNewton", po._named("lanczos_newton"), [setting])
        run = po.Run(name, spec.label, setting, seed, "seed")
        runs.append(po.train_run(prob, data, spec, run, eval_every=None))
    return (
        statistics.fmean(r.train_loss[-1] for r in runs),
        statistics.fmean(r.eval_loss for r in runs),
        statistics.fmean(r.step_seconds for r in runs),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=po.RESULTS / "momentum.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = 1 if args.quick else args.seeds
    lines = [
        f"LanczosNewton momentum, {seeds} seed(s), one CPU thread, torch {torch.__version__}.",
        "",
        "| problem | setting | momentum | train loss | held-out loss | step time x none |",
        "|---|---|---|---|---|---|",
    ]
    all_problems = po.problems(args.quick)
    for name, bases in BASES.items():
        prob = all_problems[name]
        data = po.load_data(prob)
        for base in bases:
            none_seconds = None
            for label, extra in VARIANTS.items():
                train, held, seconds = _mean_run(name, prob, data, base | extra, seeds)
                none_seconds = none_seconds or seconds
                where = ", ".join(f"{k}={v}" for k, v in base.items()) or "defaults"
                lines.append(
                    f"| {name} | {where} | {label} | {train:.4g} | {held:.4g} "
                    f"| {seconds / none_seconds:.2f} |"
                )
                print(lines[-1], flush=True)
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

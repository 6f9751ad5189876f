"""Quick measurement: how many Krylov steps per optimiser step (issue 17, item 2).

LanczosNewton (defaults otherwise: lr 1, damping 1, GGN) with ``lanczos_steps`` in {5, 10, 20}
and ``krylov_tol`` in {1e-1, 1e-2} (at most 20 steps), the curvature from a quarter of the
batch (``curvature_closure``) at 20 steps and at ``krylov_tol=1e-2``, next to SGD with momentum
(lr 0.1) for the time ratio, on the digits MLP (64-64-10 tanh, batch 64) and the Fashion-MNIST MLP
(784-128-10 tanh, batch 128, a 12000-image training subset), the problems of
``benchmarks/peers_optim.py``. One CPU thread; each setting starts from the seed's weights and
sees the seed's batches. Reported per setting (mean over seeds): the training loss (the whole
training split) and the validation loss after the step budget, the mean number of curvature
products per step and the median step time (all settings step in turn on each batch, so
that CPU contention hits them alike) as a ratio to SGD's and to ``lanczos_steps=20``.

    python benchmarks/krylov_size.py            # 300 / 200 steps, 2 seeds (minutes)
    python benchmarks/krylov_size.py --quick    # a few steps (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from peers_optim import Data, Problem, _ce, _evaluate, _tanh_mlp, load_data  # noqa: E402
from torch import Tensor  # noqa: E402

from lanczos_optim import LanczosNewton  # noqa: E402

SETTINGS: dict[str, dict[str, object]] = {
    "SGD (lr 0.1, momentum 0.9)": {},
    "lanczos_steps=5": {"lanczos_steps": 5},
    "lanczos_steps=10": {"lanczos_steps": 10},
    "lanczos_steps=20": {"lanczos_steps": 20},
    "krylov_tol=1e-1 (max 20)": {"lanczos_steps": 20, "krylov_tol": 1e-1},
    "krylov_tol=1e-2 (max 20)": {"lanczos_steps": 20, "krylov_tol": 1e-2},
    "lanczos_steps=20, curvature on 1/4 batch": {"lanczos_steps": 20},
    "krylov_tol=1e-2, curvature on 1/4 batch": {"lanczos_steps": 20, "krylov_tol": 1e-2},
}
SUB_BATCH = "curvature on 1/4 batch"  # these settings pass a curvature_closure on a quarter


def _problems(quick: bool) -> dict[str, Problem]:
    if quick:
        return {
            "digits-mlp": Problem("digits", lambda: _tanh_mlp([64, 16, 10]), False, 32, 5, 256, 64)
        }
    return {
        "digits-mlp": Problem(
            "digits", lambda: _tanh_mlp([64, 64, 10]), False, 64, 300, None, None
        ),
        "fashion-mlp": Problem(
            "fashion-mnist", lambda: _tanh_mlp([784, 128, 10]), False, 128, 200, 12000, 1000
        ),
    }


def _make(label: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if label.startswith("SGD"):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return LanczosNewton(model.parameters(), **SETTINGS[label])  # type: ignore[arg-type]


def _step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor, sub: bool
) -> int:
    """One step; returns the curvature products it used."""
    if isinstance(opt, LanczosNewton):

        def closure(xb: Tensor = xb, yb: Tensor = yb) -> tuple[Tensor, Tensor]:
            out = model(xb)
            return _ce(out, yb), out

        quarter = len(yb) // 4
        opt.step(
            closure,
            curvature_closure=(lambda: closure(xb[:quarter], yb[:quarter])) if sub else None,
        )
        return opt.last_info.num_products  # type: ignore[union-attr]
    opt.zero_grad()
    _ce(model(xb), yb).backward()
    opt.step()
    return 0


def _run(prob: Problem, data: Data, seed: int) -> dict[str, dict[str, float]]:
    """All settings in lockstep on the same batches, so that CPU contention hits them alike."""
    runs = {}
    for label in SETTINGS:
        torch.manual_seed(seed)
        model = prob.model()
        runs[label] = (model, _make(label, model), [], [0])
    (x, y), order = data.train, torch.Generator().manual_seed(1000 + seed)
    perm, pos = torch.randperm(len(y), generator=order), 0
    for _ in range(prob.steps):
        if pos + prob.batch > len(y):
            perm, pos = torch.randperm(len(y), generator=order), 0
        idx = perm[pos : pos + prob.batch]
        pos += prob.batch
        for label, (model, opt, times, products) in runs.items():
            t0 = time.perf_counter()
            products[0] += _step(model, opt, x[idx], y[idx], label.endswith(SUB_BATCH))
            times.append(time.perf_counter() - t0)
    return {
        label: {
            "train": _evaluate(model, _ce, x, y, False)[0],
            "val": _evaluate(model, _ce, *data.val, False)[0],
            "products": products[0] / prob.steps,
            "seconds": statistics.median(times),
        }
        for label, (model, _, times, products) in runs.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = range(1 if args.quick else args.seeds)
    for name, prob in _problems(args.quick).items():
        data = load_data(prob)
        per_seed = [_run(prob, data, s) for s in seeds]
        rows = {label: [r[label] for r in per_seed] for label in SETTINGS}
        mean = {
            lab: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for lab, rs in rows.items()
        }
        sgd, ref = (
            mean["SGD (lr 0.1, momentum 0.9)"]["seconds"],
            mean["lanczos_steps=20"]["seconds"],
        )
        print(f"\n{name} ({prob.steps} steps, batch {prob.batch}, {len(seeds)} seeds)\n")
        print(
            "| setting | train loss | val loss | products / step | step time x SGD | x 20 steps |"
        )
        print("|---|---|---|---|---|---|")
        for lab, m in mean.items():
            print(
                f"| {lab} | {m['train']:.4f} | {m['val']:.4f} | {m['products']:.1f} | "
                f"{m['seconds'] / sgd:.1f} | {m['seconds'] / ref:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

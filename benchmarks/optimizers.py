"""Benchmark: SGD, Adam, LanczosNewton and LanczosSaddleFreeNewton on small CPU problems.

Problems: scikit-learn digits (an MLP and a small CNN) and a Fashion-MNIST subset (a small CNN),
several seeds, the same batches for every optimiser of a seed. Recorded: the full training-set
loss and accuracy against iterations and against the optimiser's wall-clock seconds (data
loading and evaluation excluded), and the final test accuracy. Two studies follow: damping,
Krylov size, a trust-region bound and the saddle-free learning rate on the digits CNN (how the
defaults were chosen), and the paper's Figure 1 protocol (damping = 10 * lr for lr in
{1, 0.1, 0.01, 0.001, 0.0001}) on the digits CNN.

Writes plots (matplotlib, Agg) and ``benchmarks/results/optimizers.md``.

    .venv/bin/python benchmarks/optimizers.py            # full run (about 15 minutes, 2 cores)
    .venv/bin/python benchmarks/optimizers.py --quick    # a smoke run in well under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OptFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


# ----------------------------------------------------------------------------- data and models
def _load(name: str, train: bool, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from diagnostics.training.datasets import load_dataset

    x, y = load_dataset(name, train=train, subset=subset, seed=0).tensors
    return x.float(), y.long()


def _mlp(side: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, 64), nn.Tanh(), nn.Linear(64, 10))


def _mlp_fashion() -> nn.Module:
    # The measurement: 784-128-10.
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def _cnn_digits() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def _cnn_fashion() -> nn.Module:
    # Strided convolutions rather than pooling: half the cost of a curvature product.
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 10),
    )


@dataclass
class Problem:
    dataset: str
    model: Callable[[], nn.Module]
    batch: int
    steps: int
    train_subset: int | None = None
    test_subset: int | None = None


PROBLEMS = {
    "digits-mlp": Problem("digits", lambda: _mlp(8), batch=64, steps=200),
    "digits-cnn": Problem("digits", _cnn_digits, batch=64, steps=200),
    "fashion-cnn": Problem(
        "fashion-mnist", _cnn_fashion, batch=128, steps=150, train_subset=6000, test_subset=2000
    ),
    "fashion-mlp": Problem(
        "fashion-mnist", _mlp_fashion, batch=128, steps=150, train_subset=6000, test_subset=2000
    ),
}


def _sgd(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(ps, lr=0.05, momentum=0.9)


def _adam(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(ps, lr=1e-3)


OPTIMIZERS: dict[str, OptFactory] = {
    "SGD(lr=0.05, momentum=0.9)": _sgd,
    "Adam(lr=1e-3)": _adam,
    "LanczosNewton()": lambda ps: LanczosNewton(ps),
    "LanczosSaddleFreeNewton()": lambda ps: LanczosSaddleFreeNewton(ps),
}


# ----------------------------------------------------------------------------- one run
@dataclass
class Run:
    problem: str
    optimizer: str
    seed: int
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: float = math.nan
    diverged: bool = False
    seconds_per_step: float = math.nan
    products_per_step: float = 0.0


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        total, correct = 0.0, 0
        for i in range(0, len(y), 2000):
            out = model(x[i : i + 2000])
            total += float(nn.functional.cross_entropy(out, y[i : i + 2000], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + 2000]).sum())
    return total / len(y), correct / len(y)


_DATA: dict[tuple[str, bool, int | None], tuple[torch.Tensor, torch.Tensor]] = {}


def data(name: str, train: bool, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    key = (name, train, subset)
    if key not in _DATA:
        _DATA[key] = _load(name, train, subset)
    return _DATA[key]


def run(
    problem_name: str,
    opt_name: str,
    factory: OptFactory,
    seed: int,
    steps: int | None = None,
    eval_every: int = 10,
) -> Run:
    prob = PROBLEMS[problem_name]
    steps = steps or prob.steps
    xtr, ytr = data(prob.dataset, True, prob.train_subset)
    xte, yte = data(prob.dataset, False, prob.test_subset)
    torch.manual_seed(seed)
    model = prob.model()
    opt = factory(list(model.parameters()))
    lanczos = isinstance(opt, (LanczosNewton, LanczosSaddleFreeNewton))
    order_gen = torch.Generator().manual_seed(1000 + seed)
    rec = Run(problem_name, opt_name, seed)
    loss0, acc0 = _evaluate(model, xtr, ytr)
    rec.steps.append(0)
    rec.seconds.append(0.0)
    rec.train_loss.append(loss0)
    rec.train_acc.append(acc0)
    perm = torch.randperm(len(ytr), generator=order_gen)
    pos, clock, products = 0, 0.0, 0
    for it in range(1, steps + 1):
        if pos + prob.batch > len(ytr):
            perm, pos = torch.randperm(len(ytr), generator=order_gen), 0
        idx = perm[pos : pos + prob.batch]
        pos += prob.batch
        xb, yb = xtr[idx], ytr[idx]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb):
            outputs = model(xb)
            loss = nn.functional.cross_entropy(outputs, yb)
            if lanczos:
                return loss, outputs
            opt.zero_grad()
            loss.backward()
            return loss

        t0 = time.perf_counter()
        loss = float(opt.step(closure).detach())
        clock += time.perf_counter() - t0
        if lanczos and opt.last_info is not None:
            products += opt.last_info.num_products
        if not math.isfinite(loss) or loss > 20 * max(loss0, 1.0):
            rec.diverged = True
        if it % eval_every == 0 or it == steps or rec.diverged:
            tl, ta = _evaluate(model, xtr, ytr)
            rec.steps.append(it)
            rec.seconds.append(clock)
            rec.train_loss.append(tl)
            rec.train_acc.append(ta)
            if not math.isfinite(tl) or tl > 20 * max(loss0, 1.0):
                rec.diverged = True
        if rec.diverged:
            break
    rec.test_acc = math.nan if rec.diverged else _evaluate(model, xte, yte)[1]
    rec.seconds_per_step = clock / max(1, rec.steps[-1])
    rec.products_per_step = products / max(1, rec.steps[-1])
    return rec


# ----------------------------------------------------------------------------- reporting
def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "diverged"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def _final(r: Run, attr: str) -> float:
    return math.nan if r.diverged else getattr(r, attr)[-1]


def _loss_at(r: Run, seconds: float) -> float:
    """Training loss at the last evaluation within ``seconds`` of optimiser time."""
    best = r.train_loss[0]
    for t, loss in zip(r.seconds, r.train_loss, strict=True):
        if t <= seconds:
            best = loss
    return math.nan if r.diverged else best


def _time_to(r: Run, target: float) -> float:
    """Optimiser seconds until the training loss first reached ``target`` (inf: never)."""
    if r.diverged:
        return math.inf
    for t, loss in zip(r.seconds, r.train_loss, strict=True):
        if loss <= target:
            return t
    return math.inf


def _reach_cell(times: list[float]) -> str:
    reached = [t for t in times if math.isfinite(t)]
    if not reached:
        return f"not reached (0/{len(times)})"
    return f"{statistics.mean(reached):.2f} s ({len(reached)}/{len(times)})"


def _table(runs: list[Run], title_col: str = "optimizer", budget: bool = False) -> list[str]:
    extra = " loss at SGD's time | time to SGD's final loss |" if budget else ""
    lines = [
        f"| problem | {title_col} | seeds | final train loss | final train acc | test acc | "
        f"s/step | products/step | diverged |{extra}",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if budget else ""),
    ]
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.problem, r.optimizer), []).append(r)
    sgd_time: dict[tuple[str, int], float] = {
        (r.problem, r.seed): r.seconds[-1] for r in runs if r.optimizer.startswith("SGD")
    }
    sgd_loss: dict[tuple[str, int], float] = {
        (r.problem, r.seed): _final(r, "train_loss") for r in runs if r.optimizer.startswith("SGD")
    }
    for (prob, name), rs in groups.items():
        cell = ""
        if budget:
            at = [_loss_at(r, sgd_time.get((r.problem, r.seed), math.inf)) for r in rs]
            reach = [_time_to(r, sgd_loss.get((r.problem, r.seed), -math.inf)) for r in rs]
            cell = f" {_mean_std(at)} | {_reach_cell(reach)} |"
        lines.append(
            f"| {prob} | `{name}` | {len(rs)} | "
            f"{_mean_std([_final(r, 'train_loss') for r in rs])} | "
            f"{_mean_std([_final(r, 'train_acc') for r in rs])} | "
            f"{_mean_std([r.test_acc for r in rs])} | "
            f"{statistics.mean(r.seconds_per_step for r in rs) * 1000:.1f} ms | "
            f"{statistics.mean(r.products_per_step for r in rs):.1f} | "
            f"{sum(r.diverged for r in rs)}/{len(rs)} |{cell}"
        )
    return lines


def _plot(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    names = list(dict.fromkeys(r.optimizer for r in runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        c = colors[k % len(colors)]
        for j, r in enumerate(x for x in runs if x.optimizer == name):
            label = name if j == 0 else None
            axes[0].plot(r.steps, r.train_loss, color=c, alpha=0.8, label=label)
            axes[1].plot(r.seconds[1:], r.train_loss[1:], color=c, alpha=0.8, label=label)
            axes[2].plot(r.steps, r.train_acc, color=c, alpha=0.8, label=label)
    axes[0].set(xlabel="iteration", ylabel="training loss (full set)", yscale="log")
    axes[1].set(
        xlabel="optimiser wall-clock seconds", ylabel="training loss", xscale="log", yscale="log"
    )
    axes[2].set(xlabel="iteration", ylabel="training accuracy")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _replot(out: Path) -> None:
    runs = [Run(**r) for r in json.loads((out / "optimizers.json").read_text())]
    main_runs = [r for r in runs if r.optimizer in OPTIMIZERS]
    for prob in PROBLEMS:
        sel = [r for r in main_runs if r.problem == prob]
        if sel:
            _plot(sel, out / f"optimizers_{prob}.png", prob)
    fig1 = [r for r in runs if "krylov_start=" in r.optimizer]
    if fig1:
        _plot(fig1, out / "figure1_digits-cnn.png", "damping = 10 lr (digits-cnn)")
    study = [r for r in runs if r.optimizer not in OPTIMIZERS and r not in fig1]
    if study:
        _plot(study, out / "study_digits-cnn.png", "defaults study (digits-cnn)")


# ----------------------------------------------------------------------------- the sections
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--sections", default="main,study,figure1", help="comma list of main,study,figure1"
    )
    parser.add_argument(
        "--replot", action="store_true", help="redraw the plots from --out/optimizers.json"
    )
    args = parser.parse_args(argv)
    if args.replot:
        _replot(args.out)
        return 0
    torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    seeds = [0] if args.quick else list(range(args.seeds))
    scale = 0.05 if args.quick else 1.0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    md = [
        "# Optimiser benchmark",
        "",
        f"`benchmarks/optimizers.py{' --quick' if args.quick else ''}`, torch "
        f"{torch.__version__}, CPU, {args.threads} thread(s). Training loss/accuracy on the full "
        "training set (evaluation excluded from the clock); cross-entropy; the same batches for "
        "every optimiser of a seed. Defaults: LanczosNewton(lr=1, damping=1, GGN, Krylov space "
        "from the gradient) and LanczosSaddleFreeNewton(lr=0.1, damping=1, Hessian, random "
        "start), both with 20 Lanczos steps and max_step_norm=1.",
        "",
    ]
    all_runs: list[dict] = []

    def steps_of(name: str) -> int:
        return max(4, int(PROBLEMS[name].steps * scale))

    if "main" in sections:
        md += [
            "## Comparison at the defaults",
            "",
            "Three seeds on digits (1437 training, 360 test images, batches of 64, 200 steps), "
            "two on the Fashion-MNIST subset (6000 training, 2000 test images, batches of 128, "
            "150 steps; fashion-mlp is the 784-128-10 MLP of the issue's measurement). "
            "'loss at SGD's time' is the training loss each optimiser had reached when SGD "
            "finished its steps (the last evaluation within that many seconds). s/step is the "
            "optimiser's own time per step, products/step the curvature-vector products (each "
            "about two to three backward passes).",
            "",
        ]
        runs = []
        for prob in PROBLEMS:
            for name, factory in OPTIMIZERS.items():
                for seed in seeds[:2] if prob.startswith("fashion") else seeds:
                    r = run(prob, name, factory, seed, steps_of(prob))
                    runs.append(r)
                    print(
                        f"[main] {prob:12s} {name:28s} seed {seed}: loss "
                        f"{r.train_loss[-1]:.4f} test acc {r.test_acc:.3f} "
                        f"({r.seconds_per_step * 1000:.1f} ms/step)",
                        flush=True,
                    )
            _plot([r for r in runs if r.problem == prob], out / f"optimizers_{prob}.png", prob)
        md += _table(runs, budget=True)
        md += [""] + [f"![{p}](optimizers_{p}.png)" for p in PROBLEMS] + [""]
        all_runs += [r.__dict__ for r in runs]

    if "study" in sections:
        md += [
            "## How the defaults were chosen (digits CNN, seeds 0 and 1)",
            "",
            "LanczosNewton (GGN): damping, the trust-region bound `max_step_norm`, the Krylov "
            "size and `update_every=5` (one eigenbasis for five steps). LanczosSaddleFreeNewton "
            "(Hessian): the learning rate at damping 1 and the Krylov start. Everything else at "
            "its default. Not in the table (see the optimisers' docstrings): on the "
            "Fashion-MNIST CNN the saddle-free variant also diverged at lr 0.5, 0.3 and 0.2.",
            "",
        ]
        study: dict[str, OptFactory] = {
            "LanczosNewton(damping=1, max_step_norm=None)": lambda ps: LanczosNewton(
                ps, max_step_norm=None
            ),
            "LanczosNewton() [damping=1, max_step_norm=1]": lambda ps: LanczosNewton(ps),
            "LanczosNewton(damping=0.3, max_step_norm=None)": lambda ps: LanczosNewton(
                ps, damping=0.3, max_step_norm=None
            ),
            "LanczosNewton(damping=0.3)": lambda ps: LanczosNewton(ps, damping=0.3),
            "LanczosNewton(damping=3)": lambda ps: LanczosNewton(ps, damping=3.0),
            "LanczosNewton(lanczos_steps=5)": lambda ps: LanczosNewton(ps, lanczos_steps=5),
            "LanczosNewton(lanczos_steps=10)": lambda ps: LanczosNewton(ps, lanczos_steps=10),
            "LanczosNewton(update_every=5)": lambda ps: LanczosNewton(ps, update_every=5),
            "LanczosSaddleFreeNewton(lr=1)": lambda ps: LanczosSaddleFreeNewton(ps, lr=1.0),
            "LanczosSaddleFreeNewton(lr=0.3)": lambda ps: LanczosSaddleFreeNewton(ps, lr=0.3),
            "LanczosSaddleFreeNewton(krylov_start=gradient)": lambda ps: LanczosSaddleFreeNewton(
                ps, krylov_start="gradient"
            ),
            "LanczosSaddleFreeNewton() [lr=0.1, random start]": lambda ps: LanczosSaddleFreeNewton(
                ps
            ),
        }
        runs = []
        prob = "digits-cnn"
        for label, factory in study.items():
            for seed in seeds[:2]:
                r = run(prob, label, factory, seed, steps_of(prob))
                runs.append(r)
                print(
                    f"[study] {label:48s} seed {seed}: loss {r.train_loss[-1]:.4f} "
                    f"diverged {r.diverged}",
                    flush=True,
                )
        _plot(runs, out / "study_digits-cnn.png", "defaults study (digits-cnn)")
        md += _table(runs, "setting")
        md += ["", "![study](study_digits-cnn.png)", ""]
        all_runs += [r.__dict__ for r in runs]

    if "figure1" in sections:
        md += [
            "## The paper's Figure 1 protocol (damping = 10 lr, digits CNN, seed 0)",
            "",
            "Granziol et al. (2019) keep damping = 10 * lr for lr in {1, ..., 1e-4} and report "
            "almost identical training curves (VGG-16, CIFAR-100). Their optimiser starts "
            "Lanczos from a random vector, so most of the gradient lies outside the Krylov "
            "space and gets the step lr/damping = 0.1 whatever lr is: an SGD step of 0.1. "
            "Starting from the gradient puts all of it in the Krylov space, where small lr "
            "means small steps.",
            "",
        ]
        runs = []
        prob = "digits-cnn"
        variants = [(LanczosSaddleFreeNewton, "random"), (LanczosSaddleFreeNewton, "gradient")]
        for cls, start in variants:
            for lr in (1.0, 0.1, 0.01, 0.001, 0.0001):
                label = f"{cls.__name__}(lr={lr:g}, damping={10 * lr:g}, krylov_start={start})"
                r = run(
                    prob,
                    label,
                    lambda ps, cls=cls, lr=lr, start=start: cls(
                        ps, lr=lr, damping=10 * lr, krylov_start=start, seed=0
                    ),
                    0,
                    steps_of(prob),
                )
                runs.append(r)
                print(f"[fig1] {label:70s}: loss {r.train_loss[-1]:.4f}", flush=True)
        _plot(runs, out / "figure1_digits-cnn.png", "damping = 10 lr (digits-cnn)")
        md += _table(runs, "setting")
        md += ["", "![figure 1](figure1_digits-cnn.png)", ""]
        all_runs += [r.__dict__ for r in runs]

    elapsed = time.perf_counter() - started
    md += [f"Total benchmark time: {elapsed / 60:.1f} min.", ""]
    (out / "optimizers.md").write_text("\n".join(md))
    (out / "optimizers.json").write_text(json.dumps(all_runs))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

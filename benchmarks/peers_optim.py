"""Benchmark: our optimisers against the second-order optimisers people use (issue 17, item 4).

Optimisers: SGD (momentum 0.9) and Adam; LanczosNewton at its defaults and at the cheap setting
(5 Lanczos steps, basis reused for 5 steps) and LanczosSaddleFreeNewton at its defaults, all three
untuned, and LanczosNewton tuned on lr x damping; AdaHessian, SophiaH, Shampoo, SOAP and
PSGD-Kron from pytorch-optimizer, SOAP and PSGD-Kron from heavyball (eager: its torch.compile
takes about 30 s per optimiser on the CPU; pass ``--heavyball-compile`` for it), and K-FAC on
curvlinops (classification only).

Problems: a 64-64-10 tanh MLP on scikit-learn's digits (batch 64, 500 steps); on a
Fashion-MNIST subset (Debian's ``dataset-fashion-mnist``; 12 000 training images, 2 000 test) a
784-128-10 tanh MLP (batch 128, 500 steps) and a small strided CNN (batch 128, 300 steps); and the
deep autoencoder of Hinton & Salakhutdinov (2006) (logistic hidden units, linear 30-unit code, the
mirrored decoder; Bernoulli cross-entropy summed over pixels; batch 128, 300 steps), sized for the
CPU: Fashion-MNIST average-pooled to 14 x 14 and the layer widths a quarter of the paper's
784-1000-500-250-30, i.e. 196-256-128-64-30 (6 000 training images).

Protocol: every optimiser with a learning-rate grid is tuned on a validation split carved from
the training data (seed 0, the last validation loss after the step budget; a diverged run loses),
then its best setting runs ``--seeds`` seeds on the rest of the training data. Every optimiser of
a seed starts from the same weights and sees the same batches. Reported: held-out test loss and
accuracy, the training loss (whole training split) after the same number of steps, the
optimiser's step time (forward, backward and update; evaluation excluded) and the time and steps
to SGD's (and Adam's) final training loss, time ratios to SGD (Adam) of the same seed; the
optimiser's persistent state in MiB (``state_dict`` tensors). Losses do not depend on the
machine's load; the step times do, so ``--retime STEPS`` re-measures every step time in one
quiet pass at the end, and the times to a target become steps to it times that step time.

Writes ``peers_optim.md`` (the Markdown table and the winners per problem, also printed) and
``peers_optim.json`` (every run, tuning included) under ``--out`` (default
``benchmarks/results``). ``--optimizers "SGD;Adam"`` runs some optimisers only (labels separated
by ``;``); ``--merge`` keeps the other runs of the JSON, so a run can be done in parts.

    python benchmarks/peers_optim.py --retime 20   # full run (about 2 h of one CPU thread)
    python benchmarks/peers_optim.py --quick       # tiny sizes, 1 seed, 2-point grids (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _peers_table import summarize, table, winners  # noqa: E402
from _report import write_atomic, write_report  # noqa: E402  (benchmarks/_report.py)

from diagnostics.training.optimizers import build_optimizer, train_step  # noqa: E402

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_LABEL = "LanczosNewton()"  # the untuned default the goals are about
LossFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- problems
def _tanh_mlp(sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _cnn(width: int, side: int = 28) -> nn.Module:
    out = ((side - 5) // 2 + 1 - 3) // 2 + 1  # the side after the two strided convolutions
    return nn.Sequential(
        nn.Conv2d(1, width, 5, stride=2), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2),
        nn.ReLU(), nn.Flatten(), nn.Linear(2 * width * out * out, 10),
    )  # fmt: skip


def _autoencoder(sizes: list[int]) -> nn.Module:
    """Logistic layers down to a linear code and back up; the output is the pixels' logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    layers.pop()  # the code layer is linear
    up = sizes[::-1]
    for i, (a, b) in enumerate(pairwise(up)):
        layers.append(nn.Linear(a, b))
        if i < len(up) - 2:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def _ce(outputs: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(outputs, targets)


def _reconstruction(outputs: Tensor, targets: Tensor) -> Tensor:
    """Bernoulli cross-entropy summed over the pixels, averaged over the batch."""
    flat = targets.flatten(1)
    return nn.functional.binary_cross_entropy_with_logits(outputs, flat, reduction="sum") / len(
        flat
    )


@dataclass
class Problem:
    dataset: str
    model: Callable[[], nn.Module]
    autoencoder: bool
    batch: int
    steps: int
    train_subset: int | None
    test_subset: int | None
    pool: int = 1  # average-pool the images by this factor (quick mode: 28 x 28 -> 14 x 14)


def problems(quick: bool) -> dict[str, Problem]:
    if quick:  # Fashion-MNIST pooled to 14 x 14: Shampoo's 784 x 784 roots dominate otherwise
        small = {"batch": 32, "steps": 6, "train_subset": 256, "test_subset": 128}
        return {
            "digits-mlp": Problem("digits", lambda: _tanh_mlp([64, 16, 10]), False, **small),
            "fashion-mlp": Problem(
                "fashion-mnist", lambda: _tanh_mlp([196, 16, 10]), False, **small, pool=2
            ),
            "fashion-cnn": Problem("fashion-mnist", lambda: _cnn(4, 14), False, **small, pool=2),
            "autoencoder": Problem(
                "fashion-mnist", lambda: _autoencoder([196, 32, 16, 8, 4]), True, **small, pool=2
            ),
        }
    return {
        "digits-mlp": Problem(
            "digits", lambda: _tanh_mlp([64, 64, 10]), False, 64, 500, None, None
        ),
        "fashion-mlp": Problem(
            "fashion-mnist", lambda: _tanh_mlp([784, 128, 10]), False, 128, 500, 12000, 2000
        ),
        "fashion-cnn": Problem("fashion-mnist", lambda: _cnn(8), False, 128, 300, 12000, 2000),
        "autoencoder": Problem(  # sized for the CPU: 14 x 14 images, widths 1/4 of the paper's
            "fashion-mnist",
            lambda: _autoencoder([196, 256, 128, 64, 30]),
            True,
            128,
            300,
            6000,
            1000,
            pool=2,
        ),
    }


def loss_of(prob: Problem) -> LossFn:
    """The problem's loss: the reconstruction loss of the autoencoder, else cross-entropy."""
    return _reconstruction if prob.autoencoder else _ce


#: Seed offsets of the training batches' generator and of a second, independent stream.
TRAIN_STREAM, SECOND_STREAM = 1000, 2000


class Batches:
    """Mini-batch indices of one shuffled pass after another (a new permutation per epoch).

    ``Batches(n, batch, TRAIN_STREAM + seed)`` is the training stream of :func:`train_run`.
    """

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.gen = n, batch, torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> Tensor:
        if self.pos + self.batch > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


@dataclass
class Data:
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


def load_data(prob: Problem) -> Data:
    """Training subset split 80/20 into training and validation (fixed order), and the test set."""
    from diagnostics.training.datasets import load_dataset

    x, y = load_dataset(prob.dataset, subset=prob.train_subset, seed=0).tensors
    xt, yt = load_dataset(prob.dataset, train=False, subset=prob.test_subset, seed=0).tensors
    if prob.pool > 1:
        x, xt = (nn.functional.avg_pool2d(t, prob.pool) for t in (x, xt))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    train, val = order[:cut], order[cut:]
    if prob.autoencoder:  # the pixels are the targets
        return Data((x[train], x[train]), (x[val], x[val]), (xt, xt))
    return Data((x[train], y[train]), (x[val], y[val]), (xt, yt))


# ----------------------------------------------------------------------------- optimisers
Make = Callable[..., torch.optim.Optimizer]


@dataclass
class Spec:
    label: str
    make: Make  # make(params, model, **grid_point)
    grid: list[dict[str, float]]
    classification_only: bool = False


def _named(name: str) -> Make:
    return lambda params, model, **kw: build_optimizer(name, params, model=model, **kw)


def _heavyball(attr: str) -> Make:
    def make(params: list[nn.Parameter], model: nn.Module, **kw: float) -> torch.optim.Optimizer:
        import heavyball

        return getattr(heavyball, attr)(params, **kw)

    return make


def _lrs(*values: float) -> list[dict[str, float]]:
    return [{"lr": v} for v in values]


def specs() -> list[Spec]:
    fine = _lrs(1e-3, 3e-3, 1e-2, 3e-2, 0.1)
    return [
        Spec("SGD", _named("sgd"), _lrs(0.01, 0.03, 0.1, 0.3)),
        Spec("Adam", _named("adam"), _lrs(3e-4, 1e-3, 3e-3, 1e-2)),
        Spec("LanczosNewton()", _named("lanczos_newton"), [{}]),
        Spec("LanczosNewton(lanczos_steps=20)", _named("lanczos_newton"), [{"lanczos_steps": 20}]),
        Spec(
            "LanczosNewton(adaptive_damping=True)",
            _named("lanczos_newton"),
            [{"adaptive_damping": True}],
        ),
        Spec(
            "LanczosNewton(lanczos_steps=5, update_every=5)",
            _named("lanczos_newton"),
            [{"lanczos_steps": 5, "update_every": 5}],
        ),
        Spec("LanczosSaddleFreeNewton()", _named("lanczos_saddle_free"), [{}]),
        Spec(  # the tuned setting that the defaults are measured against (issue 17, item 1)
            "LanczosNewton (tuned)",
            _named("lanczos_newton"),
            [{"lr": 1.0, "damping": d} for d in (0.1, 0.3, 1.0, 3.0)],
        ),
        Spec("AdaHessian", _named("adahessian"), _lrs(0.01, 0.03, 0.1, 0.3)),
        Spec("SophiaH", _named("sophiah"), _lrs(0.03, 0.1, 0.3, 1.0)),
        Spec("Shampoo", _named("shampoo"), _lrs(0.03, 0.1, 0.3, 1.0)),
        Spec("SOAP", _named("soap"), fine),
        Spec("PSGD-Kron", _named("kron"), fine),
        Spec("SOAP (heavyball)", _heavyball("SOAP"), fine),
        Spec("PSGD-Kron (heavyball)", _heavyball("PSGDKron"), fine),
        Spec("K-FAC (curvlinops)", _named("kfac"), _lrs(0.01, 0.03, 0.1, 0.3), True),
    ]


def _quick_grid(grid: list[dict[str, float]]) -> list[dict[str, float]]:
    """Two neighbouring points from the middle of a grid (the single point of an untuned one)."""
    if len(grid) <= 2:
        return grid
    mid = len(grid) // 2
    return grid[mid - 1 : mid + 1]


# ----------------------------------------------------------------------------- one run
@dataclass
class Run:
    problem: str
    optimizer: str
    setting: dict[str, float]
    seed: int
    phase: str  # "tune" or "seed"
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_loss: float = math.nan  # validation (tune) or test (seed)
    eval_acc: float = math.nan
    step_seconds: float = math.nan
    state_mib: float = math.nan
    diverged: bool = False
    error: str = ""


def _evaluate(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, ae: bool
) -> tuple[float, float]:
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            out = model(x[i : i + 1000])
            total += float(loss_fn(out, y[i : i + 1000])) * len(out)
            if not ae:
                correct += int((out.argmax(1) == y[i : i + 1000]).sum())
    return total / len(y), (math.nan if ae else correct / len(y))


def _tensor_bytes(value: object) -> int:
    """Bytes of the tensors in ``value``, looking into dicts, lists and tuples (heavyball nests)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _state_mib(opt: torch.optim.Optimizer) -> float:
    return _tensor_bytes(list(opt.state.values())) / 2**20


def train_run(prob: Problem, data: Data, spec: Spec, run: Run, eval_every: int | None) -> Run:
    """Train from seed ``run.seed``'s weights on its batches; fills ``run`` in place."""
    loss_fn = loss_of(prob)
    torch.manual_seed(run.seed)
    model = prob.model()
    xtr, ytr = data.train
    ev = data.val if run.phase == "tune" else data.test
    try:
        opt = spec.make(list(model.parameters()), model, **run.setting)
    except Exception as err:  # an optimiser that does not run here: recorded, not fatal
        run.error = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        return run
    batches = Batches(len(ytr), prob.batch, TRAIN_STREAM + run.seed)
    loss0 = _evaluate(model, loss_fn, xtr, ytr, prob.autoencoder)[0]
    run.steps, run.seconds, run.train_loss = [0], [0.0], [loss0]
    clock = 0.0
    model.train()
    for it in range(1, prob.steps + 1):
        idx = batches.next()
        t0 = time.perf_counter()
        try:
            loss, _ = train_step(model, opt, loss_fn, xtr[idx], ytr[idx])
        except Exception as err:
            run.error = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            run.diverged = True
            break
        clock += time.perf_counter() - t0
        if not math.isfinite(float(loss)) or float(loss) > 20 * max(loss0, 1.0):
            run.diverged = True
            break
        if (eval_every and it % eval_every == 0) or it == prob.steps:
            run.steps.append(it)
            run.seconds.append(clock)
            run.train_loss.append(_evaluate(model, loss_fn, xtr, ytr, prob.autoencoder)[0])
    run.step_seconds = clock / max(1, run.steps[-1])
    run.state_mib = _state_mib(opt)
    if not run.diverged:
        run.eval_loss, run.eval_acc = _evaluate(model, loss_fn, *ev, prob.autoencoder)
    return run


# ----------------------------------------------------------------------------- tuning and seeds
def _val_score(r: Run) -> float:
    return r.eval_loss if math.isfinite(r.eval_loss) and not r.diverged else math.inf


def run_problem(
    name: str, prob: Problem, todo: list[Spec], seeds: list[int], quick: bool, log: Callable
) -> list[Run]:
    """Tune each optimiser on the validation split (a one-point grid is not run), then seeds."""
    data = load_data(prob)
    runs: list[Run] = []
    eval_every = max(1, prob.steps // 20)
    for spec in todo:
        if spec.classification_only and prob.autoencoder:
            continue
        grid = _quick_grid(spec.grid) if quick else spec.grid
        setting = grid[0]
        if len(grid) > 1:
            tuned = [
                train_run(prob, data, spec, Run(name, spec.label, g, 0, "tune"), None) for g in grid
            ]
            runs += tuned
            setting = min(tuned, key=_val_score).setting
        for seed in seeds:
            r = train_run(
                prob, data, spec, Run(name, spec.label, setting, seed, "seed"), eval_every
            )
            runs.append(r)
            log(
                f"{name:12s} {spec.label:48s} {json.dumps(setting):16s} seed {seed}: "
                f"train {r.train_loss[-1]:.4g} test {r.eval_loss:.4g} "
                f"({r.step_seconds * 1000:.1f} ms/step){' ' + r.error if r.error else ''}"
            )
    return runs


# ----------------------------------------------------------------------------- quiet timing
def _time_steps(prob: Problem, data: Data, spec: Spec, setting: dict, steps: int) -> float:
    """Seconds per step of ``spec`` at ``setting`` over ``steps`` steps after 3 warm-up steps."""
    loss_fn = loss_of(prob)
    torch.manual_seed(0)
    model = prob.model()
    opt = spec.make(list(model.parameters()), model, **setting)
    xtr, ytr = data.train
    clock = 0.0
    for it in range(3 + steps):
        idx = torch.arange(it * prob.batch, (it + 1) * prob.batch) % len(ytr)
        t0 = time.perf_counter()
        train_step(model, opt, loss_fn, xtr[idx], ytr[idx])
        if it >= 3:
            clock += time.perf_counter() - t0
    return clock / steps


def retime(runs: list[dict], all_problems: dict[str, Problem], steps: int, log: Callable) -> None:
    """Replace the step times of the seed runs by one quiet measurement per (problem, optimiser).

    The optimisers of a problem are timed one after the other in this process, twice in
    alternating order (the faster of the two counts); each run's clock becomes its steps times
    that step time, so the times to a target loss are steps to the target times the step time.
    """
    by_label = {s.label: s for s in specs()}
    for name in dict.fromkeys(r["problem"] for r in runs):
        prob, pairs = all_problems[name], {}
        for r in runs:
            if r["problem"] == name and r["phase"] == "seed" and not r["error"]:
                pairs.setdefault(r["optimizer"], r["setting"])
        data = load_data(prob)
        best: dict[str, float] = {}
        for order in (list(pairs), list(pairs)[::-1]):
            for label in order:
                t = _time_steps(prob, data, by_label[label], pairs[label], steps)
                best[label] = min(best.get(label, math.inf), t)
        for r in runs:
            if r["problem"] == name and r["optimizer"] in best:
                r["step_seconds"] = best[r["optimizer"]]
                r["seconds"] = [s * r["step_seconds"] for s in r["steps"]]
        log(f"{name}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in best.items()))


# ----------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed, 2-point grids")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings)")
    parser.add_argument("--problems", default=None, help="comma list (default: all four)")
    parser.add_argument("--optimizers", default=None, help="labels separated by ; (default: all)")
    parser.add_argument("--heavyball-compile", action="store_true", help="let heavyball compile")
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the runs of --out's peers_optim.json that this invocation does not redo",
    )  # fmt: skip
    parser.add_argument(
        "--retime", type=int, default=0, metavar="STEPS",
        help="re-measure every step time in one quiet pass of STEPS steps (0: keep the clocks)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def _merged(path: Path, runs: list[dict], merge: bool) -> list[dict]:
    if not merge or not path.exists():
        return runs
    redone = {(r["problem"], r["optimizer"]) for r in runs}
    old = json.loads(path.read_text())["runs"]
    return [r for r in old if (r["problem"], r["optimizer"]) not in redone] + runs


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.heavyball_compile:
        try:
            import heavyball.utils

            heavyball.utils.compile_mode = None
        except ImportError:
            pass
    all_problems = problems(args.quick)
    names = args.problems.split(",") if args.problems else list(all_problems)
    unknown = [n for n in names if n not in all_problems]
    if unknown:
        parser.error(f"unknown problem(s) {unknown}; allowed: {', '.join(all_problems)}")
    todo = specs()
    if args.optimizers is not None:
        wanted = set(args.optimizers.split(";")) - {""}
        todo = [s for s in todo if s.label in wanted]
    seeds = [0] if args.quick else list(range(args.seeds))
    started = time.perf_counter()
    new: list[Run] = []
    for name in names:
        new += run_problem(name, all_problems[name], todo, seeds, args.quick,
                           lambda msg: print(msg, flush=True))  # fmt: skip
    runs = _merged(args.out / "peers_optim.json", [asdict(r) for r in new], args.merge)
    if args.retime:
        retime(runs, all_problems, args.retime, lambda msg: print(msg, flush=True))
    rows = summarize(runs)
    clocks = (
        f"step times re-measured in one quiet pass of {args.retime} steps per optimiser"
        if args.retime
        else "step times measured during training"
    )
    md = [
        "# Second-order peers benchmark",
        "",
        f"`benchmarks/peers_optim.py{' --quick' if args.quick else ''}`, torch "
        f"{torch.__version__}, CPU, {args.threads} thread(s), {len(seeds)} seed(s), {clocks}. "
        "Ratios to SGD (or Adam) of the same seed; 'SGD's loss' is SGD's final training loss; "
        "'never': not reached within the budget. This invocation took "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
        "",
        *table(rows),
        "",
        "## Who wins",
        "",
        *winners(rows, DEFAULT_LABEL),
    ]
    write_atomic(
        json.dumps({"rows": rows, "runs": runs}, default=str), args.out / "peers_optim.json"
    )
    write_report(md, args.out / "peers_optim.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of one optimiser step, as a multiple of an SGD step measured in the same run.

ResNet-18 (torchvision, 10 classes, BatchNorm in train mode) on one CIFAR-shaped batch
(128 x 3 x 32 x 32, seeded random data), the setting of issue 10. Prints (and writes to
benchmarks/results/step_cost.md):

* one step of SGD (momentum 0.9), Adam, LanczosNewton and LanczosSaddleFreeNewton with several
  numbers of Krylov dimensions and basis reuse (``update_every``, amortised over its cycle), as
  a multiple of the SGD step;
* the cost of one curvature product through the closure's graph, as a multiple of a gradient
  pass (from the optimisers' own ``last_info`` timings);
* curvature operators on the same batch: a product with the graph rebuilt, kept with the
  default ``cache_check="fast"``, and kept with ``"full"`` (checksums of every parameter);
* the ``precision`` policies of the operators: time per product, product error and the error
  of the Ritz values a user reads (top 5 and the smallest) against ``"highest"``.

Run: ``python benchmarks/step_cost.py [--device cuda] [--batch-size 128] [--repeats 3]``.
Timings are medians of interleaved repeats (CUDA synchronised); only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from _report import write_report  # benchmarks/_report.py (this script's folder)
from torch import nn

from lanczos_optim import GGNOperator, HessianOperator, LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim import lanczos as run_lanczos

Batch = tuple[torch.Tensor, torch.Tensor]


def build(device: torch.device, batch_size: int) -> tuple[nn.Module, Batch]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    return model, (x.to(device), y.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def optimiser_rows(model: nn.Module, batch: Batch, device: torch.device, repeats: int):
    """Median seconds per step for each optimiser configuration, and product costs."""
    x, y = batch
    loss_fn = nn.CrossEntropyLoss()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def first_order(make: Callable[[list[nn.Parameter]], torch.optim.Optimizer]):
        opt = make(list(model.parameters()))

        def step() -> None:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

        return step, 1

    def lanczos_opt(name: str, cls: type, **kw: object):
        opt = cls(model.parameters(), **kw)

        def closure():
            out = model(x)
            return loss_fn(out, y), out

        every = int(kw.get("update_every", 1))

        def step() -> None:
            for _ in range(every):  # one whole reuse cycle: a fresh basis, then reused ones
                opt.step(closure)
                info = opt.last_info
                if info is not None and info.num_products:
                    products.setdefault(name, []).append(info.product_seconds / info.num_products)

        return step, every

    configs: dict[str, tuple[Callable[[], None], int]] = {}
    products: dict[str, list[float]] = {}

    def gradient_pass() -> None:
        model.zero_grad()
        loss_fn(model(x), y).backward()

    configs["gradient pass"] = (gradient_pass, 1)
    configs["SGD(lr=0.05, momentum=0.9)"] = first_order(
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)
    )
    configs["Adam(lr=1e-3)"] = first_order(lambda ps: torch.optim.Adam(ps, lr=1e-3))
    for name, cls, kw in [
        ("LanczosNewton() [20 dims, GGN]", LanczosNewton, {}),
        ("LanczosNewton(lanczos_steps=10)", LanczosNewton, {"lanczos_steps": 10}),
        ("LanczosNewton(lanczos_steps=5)", LanczosNewton, {"lanczos_steps": 5}),
        ("LanczosNewton(update_every=5)", LanczosNewton, {"update_every": 5}),
        (
            "LanczosNewton(lanczos_steps=5, update_every=5)",
            LanczosNewton,
            {"lanczos_steps": 5, "update_every": 5},
        ),
        ("LanczosNewton(block_size=4)", LanczosNewton, {"block_size": 4}),
        ("LanczosNewton(block_size=10)", LanczosNewton, {"block_size": 10}),
        ("LanczosSaddleFreeNewton() [20 dims, Hessian]", LanczosSaddleFreeNewton, {}),
        ("LanczosSaddleFreeNewton(block_size=4)", LanczosSaddleFreeNewton, {"block_size": 4}),
    ]:
        configs[name] = lanczos_opt(name, cls, **kw)
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for name, (fn, every) in configs.items():
            model.load_state_dict(state)
            times[name].append(timed(fn, device) / every)
    model.load_state_dict(state)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    prod = {k: statistics.median(v) for k, v in products.items()}
    return med, prod


def operator_rows(
    model: nn.Module, batch: Batch, grad_s: float, device: torch.device, repeats: int
):
    """Seconds per product for rebuilt and kept graphs (both cache checks), per curvature."""
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for cls in (HessianOperator, GGNOperator):
        ops = {
            "graph rebuilt": cls(model, loss_fn, [batch], cache_graphs=False),
            "kept, cache_check='fast'": cls(model, loss_fn, batch, cache_check="fast"),
            "kept, cache_check='full'": cls(model, loss_fn, batch, cache_check="full"),
        }
        v = torch.randn(ops["graph rebuilt"].shape[0], device=device)
        for op in ops.values():
            op @ v  # builds the kept graph; warms up
        times: dict[str, list[float]] = {k: [] for k in ops}
        for _ in range(repeats):
            for k, op in ops.items():
                times[k].append(timed(lambda op=op, v=v: op @ v, device))
        for k in ops:
            s = statistics.median(times[k])
            rows.append(f"| {cls.__name__} | {k} | {s:.3f} | {s / grad_s:.2f} |")
        for op in ops.values():
            op.clear_cache()
    return rows


def precision_rows(model: nn.Module, batch: Batch, grad_s: float, device: torch.device):
    """Per curvature and precision: time per product, product error, Ritz value errors."""
    loss_fn = nn.CrossEntropyLoss()
    precisions = ["highest", "tf32", "bf16"] if device.type == "cuda" else ["highest", "bf16"]
    rows = []
    for cls in (HessianOperator, GGNOperator):
        ref_prod = ref_ritz = None
        for precision in precisions:
            op = cls(model, loss_fn, batch, precision=precision)
            v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(5)).to(device)
            op @ v  # builds the kept graph
            t = statistics.median(timed(lambda op=op, v=v: op @ v, device) for _ in range(5))
            prod = op @ v
            gen = torch.Generator(device="cpu").manual_seed(0)
            ritz = run_lanczos(op, 30, generator=gen).ritz_values
            read = torch.cat([ritz[-5:], ritz[:1]])
            if ref_prod is None:
                ref_prod, ref_ritz = prod, read
            perr = float((prod - ref_prod).norm() / ref_prod.norm())
            top_err = float(((read[:5] - ref_ritz[:5]).abs() / ref_ritz[:5].abs()).max())
            scale = float(ref_ritz.abs().max())  # lambda_min may be ~0: relative to |lambda|max
            min_err = float((read[5] - ref_ritz[5]).abs()) / scale
            rows.append(
                f"| {cls.__name__} | {precision} | {t / grad_s:.2f} | {perr:.1e} | "
                f"{top_err:.1e} | {min_err:.1e} | {float(ref_ritz[4]):.4g} | "
                f"{float(ref_ritz[5]):.3g} |"
            )
            op.clear_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/step_cost.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, batch = build(device, args.batch_size)
    started = time.perf_counter()
    steps, products = optimiser_rows(model, batch, device, args.repeats)
    grad_s, sgd_s = steps["gradient pass"], steps["SGD(lr=0.05, momentum=0.9)"]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"ResNet-18 (torchvision, {sum(p.numel() for p in model.parameters()):,} parameters), "
        f"one batch of {args.batch_size}x3x32x32, {card}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved repeats.",
        "",
        "| step | seconds | x SGD step | product through the closure's graph (x gradient pass) |",
        "|---|---|---|---|",
    ]
    for name, s in steps.items():
        p = products.get(name)
        cell = f"{p / grad_s:.2f}" if p is not None else "-"
        lines.append(f"| {name} | {s:.3f} | {s / sgd_s:.1f} | {cell} |")
    lines += [
        "",
        "update_every rows are the mean over one cycle (one fresh basis, then reused ones).",
        "",
        "| operator on the same batch | graph | seconds per product | x gradient pass |",
        "|---|---|---|---|",
        *operator_rows(model, batch, grad_s, device, args.repeats),
        "",
        "| operator | precision | product x gradient pass | product error | top-5 Ritz rel. "
        "error (max) | lambda_min error / max abs lambda | lambda_max | lambda_min |",
        "|---|---|---|---|---|---|---|---|",
        *precision_rows(model, batch, grad_s, device),
        "",
        f"Total benchmark time: {(time.perf_counter() - started) / 60:.1f} min.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()

"""Cost of the curvature engine, as multiples of one full-data gradient pass.

Seeded CNN (two conv, two linear layers, ~137k parameters), 1,024 samples of 3x32x32 in batches of
256. Prints (and writes to benchmarks/results/engine.md):

* one full-data Hessian-vector and GGN-vector product / one full-data gradient pass, for the
  library's paths (graphs rebuilt per product; graphs kept with ``cache_graphs=True``) and the
  alternatives they were chosen against;
* a 20-step Lanczos run / its 20 products (bookkeeping overhead), and per product / one
  gradient pass, with the graphs rebuilt per product and kept (building them included).

Run: ``python benchmarks/engine.py [--repeats 7] [--threads 1]``. Timings are medians of
interleaved repeats; only the ratios are meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import write_report  # benchmarks/_report.py (this script's folder)
from torch import nn
from torch.func import functional_call, jvp

from lanczos_optim import GGNOperator, HessianOperator, lanczos
from lanczos_optim.flatten import flatten_tensors, unflatten_vector


def build() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 152),
        nn.ReLU(),
        nn.Linear(152, 10),
    )
    x = torch.randn(1024, 3, 32, 32)
    y = torch.randint(0, 10, (1024,))
    return model, [(x[i : i + 256], y[i : i + 256]) for i in range(0, 1024, 256)]


def kept_graph_mib(op: HessianOperator | GGNOperator, v: torch.Tensor) -> float:
    """MiB of the tensors that ``op``'s kept graphs save for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in op.params}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    op.clear_cache()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        op.matvec(v)
    return sum(sizes.values()) / 2**20


def batched_backward_ratio(model: nn.Module, data, loss_fn, k: int = 8, repeats: int = 3) -> float:
    """Per-column time of a vmapped backward (``is_grads_batched``) over a loop of backwards.

    Both multiply ``k`` columns by one batch's Hessian on the same kept ``create_graph`` graph.
    """
    params = list(model.parameters())
    x, y = data[0]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    cols = [unflatten_vector(c, params) for c in torch.randn(k, sum(p.numel() for p in params))]
    stacked = [torch.stack([c[i] for c in cols]) for i in range(len(params))]

    def loop() -> None:
        for c in cols:
            torch.autograd.grad(grads, params, grad_outputs=c, retain_graph=True)

    def vmapped() -> None:
        torch.autograd.grad(
            grads, params, grad_outputs=stacked, retain_graph=True, is_grads_batched=True
        )

    times: dict[str, list[float]] = {"loop": [], "vmapped": []}
    for fn in (loop, vmapped):  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in (("loop", loop), ("vmapped", vmapped)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["vmapped"]) / statistics.median(times["loop"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/engine.md")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # one thread: steadier ratios on a shared machine

    model, data = build()
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    num_params = sum(p.numel() for p in params)
    hess, ggn = HessianOperator(model, loss_fn, data), GGNOperator(model, loss_fn, data)
    hess_kept = HessianOperator(model, loss_fn, data, cache_graphs=True)
    ggn_kept = GGNOperator(model, loss_fn, data, cache_graphs=True)
    v = torch.randn(num_params)
    n_total = sum(len(x) for x, _ in data)

    def gradient_pass() -> None:
        for x, y in data:
            torch.autograd.grad(loss_fn(model(x), y), params)

    def hvp_torch_func() -> None:  # the alternative: forward-over-reverse
        vs = tuple(unflatten_vector(v, params))
        for x, y in data:

            def loss_of(*ps, x=x, y=y):
                return loss_fn(functional_call(model, dict(zip(names, ps, strict=True)), (x,)), y)

            grad_fn = torch.func.grad(loss_of, argnums=tuple(range(len(params))))
            jvp(grad_fn, tuple(params), vs)

    def ggn_reverse_over_reverse() -> None:  # the alternative: Jv by the double-backward trick
        vs = unflatten_vector(v, params)
        for x, _ in data:
            out = model(x)
            u = torch.zeros_like(out, requires_grad=True)
            jt_u = torch.autograd.grad(out, params, grad_outputs=u, create_graph=True)
            (jv,) = torch.autograd.grad(jt_u, u, grad_outputs=vs)
            p = torch.softmax(out.detach(), 1)
            hjv = (p * jv - p * (p * jv).sum(1, keepdim=True)) / len(x)
            flatten_tensors(torch.autograd.grad(out, params, grad_outputs=hjv))

    def timed_gradient_pass() -> float:
        t0 = time.perf_counter()
        gradient_pass()
        return time.perf_counter() - t0

    def lanczos_run(op) -> tuple[float, float]:
        """(total / time in products, total / 20 gradient passes timed around the run)."""
        op.clear_cache()  # a kept graph is built inside the run, as a user's run would
        before = timed_gradient_pass()
        calls = {"t": 0.0}

        def timed(vec: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            out = op.matvec(vec)
            calls["t"] += time.perf_counter() - t0
            return out

        t0 = time.perf_counter()
        lanczos(
            timed, 20, dim=num_params, dtype=v.dtype, generator=torch.Generator().manual_seed(0)
        )
        total = time.perf_counter() - t0
        grad_pass = 0.5 * (before + timed_gradient_pass())
        return total / calls["t"], total / (20 * grad_pass)

    cases = {
        "gradient pass": gradient_pass,
        "HVP, graphs rebuilt (forward + double backward, used)": lambda: hess.matvec(v),
        "HVP, graphs kept (one double backward, `cache_graphs=True`)": lambda: hess_kept.matvec(v),
        "HVP, torch.func fwd-over-rev (alternative)": hvp_torch_func,
        "GGN-vp, graphs rebuilt (jvp + backward, used)": lambda: ggn.matvec(v),
        "GGN-vp, graphs kept (rev-over-rev on the kept graph, `cache_graphs=True`)": (
            lambda: ggn_kept.matvec(v)
        ),
        "GGN-vp, rev-over-rev rebuilt (alternative)": ggn_reverse_over_reverse,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(t) for k, t in times.items()}
    runs = {
        "Hessian, graphs rebuilt": hess,
        "Hessian, graphs kept": hess_kept,
        "GGN, graphs rebuilt": ggn,
        "GGN, graphs kept": ggn_kept,
    }
    overhead = {}
    for name, op in runs.items():
        ratios, totals = zip(*(lanczos_run(op) for _ in range(3)), strict=True)
        overhead[name] = (statistics.median(ratios), statistics.median(totals))

    lines = [
        f"CNN with {num_params:,} parameters, {n_total} samples in batches of 256, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats} interleaved repeats.",
        "",
        "| full-data operation | seconds | x gradient pass |",
        "|---|---|---|",
    ]
    base = med["gradient pass"]
    for name, t in med.items():
        lines.append(f"| {name} | {t:.3f} | {t / base:.2f} |")
    lines += [
        "",
        "| 20-step Lanczos (full reorthogonalisation) | total / time in its 20 products "
        "| total / 20 gradient passes (timed before and after the run) |",
        "|---|---|---|",
    ]
    for name, (ratio, total) in overhead.items():
        lines.append(
            f"| {name} | {ratio:.3f} (bookkeeping {100 * (ratio - 1):.1f} %) | {total:.2f} |"
        )
    lines += [
        "",
        "Memory held by the kept graphs (tensors saved for backward, parameters excluded): "
        + ", ".join(
            f"{name} {kept_graph_mib(op, v):.0f} MiB"
            for name, op in (("Hessian", hess_kept), ("GGN", ggn_kept))
        )
        + f" for these {n_total} samples.",
        "",
        "Batched columns: 8 Hessian columns on one kept graph by a vmapped backward "
        "(`is_grads_batched=True`) take "
        f"{batched_backward_ratio(model, data, loss_fn):.2f}x the time of a loop of backwards.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()

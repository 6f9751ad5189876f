"""Side-by-side benchmark against peer libraries (issue 6, sections 1 and 2).

On the same models and data, in one run, compares lanczos-optim with curvlinops-for-pytorch,
hessian-eigenthings and PyHessian (where each still runs on the installed torch; a failure is
caught and its reason printed in the table):

* Hessian- and GGN-vector products: cost as multiples of one full-data gradient pass, and
  relative error against float64 truth;
* the top Hessian eigenvalue: number of products, cost, relative error;
* a 20-step spectral density: products, cost, Wasserstein-1 distance to the exact spectrum
  (MLP) relative to the spectrum's span, and the Lanczos bookkeeping;
* batched probes: throughput per probe of ``spectral_density(..., batch_probes=True)`` against
  ``batch_probes=False`` for K in {1, 4, 8}.

Models: the seeded CNN of ``benchmarks/engine.py`` (137,330 parameters, 1,024 samples in
batches of 256; its top eigenvalue's truth is our own long float64 Lanczos run, certified by its
residual bound), and a 64-32-10 tanh MLP on scikit-learn's digits (2,410 parameters, 1,797
samples in batches of 256, the last one of 5 samples), small enough for a dense float64 Hessian
and GGN by ``torch.func``.

Costs are wall time divided by the time of one full-data gradient pass measured right before
and after (product costs: medians of interleaved repeats). Only ratios are meaningful on a
shared machine. Runs on a GPU unchanged (model and data move to ``cuda`` when available).

Run: ``python benchmarks/peers.py [--quick]``. Needs the ``bench`` extra. Writes
``benchmarks/results/peers.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from engine import build as build_cnn  # benchmarks/engine.py (this script's folder is on sys.path)
from torch import Tensor, nn
from torch.func import functional_call

from lanczos_optim import GGNOperator, HessianOperator, lanczos, spectral_density

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
warnings.filterwarnings("ignore", message=".*create_graph=True.*")  # PyHessian's backward

Batches = list[tuple[Tensor, Tensor]]
TARGET_REL = 1e-4

# --------------------------------------------------------------------------------------------
# timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Counts and times the operator products a method asks for."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.products = 0
        self.seconds = 0.0

    def wrap(self, fn: Callable, columns: Callable[..., int] = lambda *a: 1) -> Callable:
        def wrapped(*args, **kwargs):
            _sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.seconds += time.perf_counter() - t0
            self.products += columns(*args)
            return out

        return wrapped


class Timed:
    """One of our operators seen through a :class:`Meter` (keeps ``matvec`` and ``matmat``)."""

    def __init__(self, op: HessianOperator | GGNOperator, meter: Meter) -> None:
        self.shape, self.dtype, self.device = op.shape, op.dtype, op.device
        self.matvec = meter.wrap(op.matvec)
        self.matmat = meter.wrap(op.matmat, lambda m: m.shape[1])


class Case:
    """A model, its data, and the reference gradient pass used as the unit of cost."""

    def __init__(self, name: str, model: nn.Module, data: Batches, device: torch.device) -> None:
        self.name, self.model, self.data, self.device = name, model, data, device
        self.loss_fn = nn.CrossEntropyLoss()
        self.params = list(model.parameters())
        self.dim = sum(p.numel() for p in self.params)
        self.num_samples = sum(len(x) for x, _ in data)
        self.reps = 1  # repeats of the one-run rows (medians), more for a cheap model

    def gradient_pass(self) -> None:
        for x, y in self.data:
            torch.autograd.grad(self.loss_fn(self.model(x), y), self.params)

    def time_gradient_pass(self, min_seconds: float = 0.2) -> float:
        """Median time of one gradient pass (at least 3 passes and ``min_seconds`` in all)."""
        times: list[float] = []
        while len(times) < 3 or sum(times) < min_seconds:
            _sync(self.device)
            t0 = time.perf_counter()
            self.gradient_pass()
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def measure(self, fn: Callable[[], object]) -> tuple[object, float, float]:
        """Run ``fn`` once; return its result, seconds, and seconds / local gradient pass."""
        before = self.time_gradient_pass()
        _sync(self.device)
        t0 = time.perf_counter()
        out = fn()
        _sync(self.device)
        seconds = time.perf_counter() - t0
        after = self.time_gradient_pass()
        return out, seconds, seconds / (0.5 * (before + after))


@dataclass
class Row:
    method: str
    call: str
    products: int | None = None
    cost: float | None = None  # x gradient pass
    error: float | None = None  # relative error against truth
    extra: str = ""  # method-specific column (bookkeeping, W1, ...)
    note: str = ""
    short: str = ""  # name in the targets summary


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _failure(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"fails: {type(exc).__name__}: {text[:90]}{'…' if len(text) > 90 else ''}"


def _flat(ts) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _split(v: Tensor, params: list[Tensor]) -> list[Tensor]:
    return [c.view_as(p) for c, p in zip(v.split([p.numel() for p in params]), params, strict=True)]


# --------------------------------------------------------------------------------------------
# models


def digits_mlp(device: torch.device) -> tuple[nn.Module, Batches]:
    """64-32-10 tanh MLP on scikit-learn's digits, briefly trained (seeded)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # full-batch: moves the point away from initialisation
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model, x, y = model.to(device), x.to(device), y.to(device)
    return model, [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]


def as_float64(case: Case) -> tuple[nn.Module, Batches]:
    model = copy.deepcopy(case.model).double()
    return model, [(x.double(), y) for x, y in case.data]


# --------------------------------------------------------------------------------------------
# truth


def _loss_of_flat(model: nn.Module, loss_fn) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [math.prod(s) for s in shapes]

    def out_of(w: Tensor, x: Tensor) -> Tensor:
        ps = {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes, strict=True)}
        return functional_call(model, ps, (x,))

    return out_of


def dense_hessian_and_ggn(case: Case) -> tuple[Tensor, Tensor]:
    """Exact float64 Hessian and GGN of the data-set loss by ``torch.func`` (batch-weighted)."""
    model, data = as_float64(case)
    out_of = _loss_of_flat(model, case.loss_fn)
    w = _flat(p.detach() for p in model.parameters())
    n_total = case.num_samples
    hess = torch.zeros(w.numel(), w.numel(), dtype=torch.float64, device=w.device)
    ggn = torch.zeros_like(hess)
    for x, y in data:
        n = len(x)

        def loss(w_: Tensor, x=x, y=y) -> Tensor:
            return case.loss_fn(out_of(w_, x), y)

        hess += torch.func.hessian(loss)(w) * (n / n_total)
        jac = torch.func.jacrev(lambda w_, x=x: out_of(w_, x))(w)  # [n, C, P]
        p = torch.softmax(out_of(w, x), dim=1)
        h_out = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / n  # mean reduction
        hj = torch.einsum("ncd,ndq->ncq", h_out, jac)
        ggn += (jac.reshape(-1, w.numel()).T @ hj.reshape(-1, w.numel())) * (n / n_total)
    return 0.5 * (hess + hess.T), 0.5 * (ggn + ggn.T)


def float64_products(case: Case, v: Tensor) -> tuple[Tensor, Tensor]:
    """H v and G v in float64 with plain autograd (no library code), for the CNN."""
    model, data = as_float64(case)
    params = list(model.parameters())
    out_of = _loss_of_flat(model, case.loss_fn)
    w = _flat(p.detach() for p in params)
    v64 = v.double()
    hv = torch.zeros_like(w)
    gv = torch.zeros_like(w)
    for x, y in data:
        scale = len(x) / case.num_samples
        loss = case.loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv += _flat(torch.autograd.grad(grads, params, grad_outputs=_split(v64, params))) * scale
        out, jv = torch.func.jvp(lambda w_, x=x: out_of(w_, x), (w,), (v64,))
        p = torch.softmax(out, 1)
        hjv = (p * jv - p * (p * jv).sum(1, keepdim=True)) / len(x)
        _, vjp = torch.func.vjp(lambda w_, x=x: out_of(w_, x), w)
        gv += vjp(hjv)[0] * scale
    return hv, gv


# --------------------------------------------------------------------------------------------
# peers


def _peer_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("curvlinops-for-pytorch", "hessian-eigenthings", "PyHessian"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def curvlinops_op(case: Case, kind: str, meter: Meter | None = None):
    import curvlinops

    cls = curvlinops.HessianLinearOperator if kind == "H" else curvlinops.GGNLinearOperator
    op = cls(
        case.model,
        case.loss_fn,
        case.params,
        case.data,
        check_deterministic=False,
        num_data=case.num_samples,
    )
    if meter is not None:
        op._matmat = meter.wrap(op._matmat, lambda m: m[0].shape[-1])
    return op


def eigenthings_op(case: Case, kind: str, meter: Meter | None = None):
    import hessian_eigenthings as he

    if kind == "H":
        op = he.HessianOperator(case.model, case.data, he.supervised_loss(case.loss_fn))
    else:
        op = he.GGNOperator(
            case.model, case.data, he.supervised_forward, he.supervised_loss_of_output(case.loss_fn)
        )
    if meter is not None:
        op.matvec = meter.wrap(op.matvec)
    return op


def pyhessian_obj(case: Case, meter: Meter | None = None):
    from pyhessian import hessian

    obj = hessian(case.model, case.loss_fn, dataloader=case.data, cuda=case.device.type == "cuda")
    if meter is not None:
        obj.dataloader_hv_product = meter.wrap(obj.dataloader_hv_product)
    return obj


def _pyhessian_cleanup(case: Case) -> None:
    case.model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients behind


# --------------------------------------------------------------------------------------------
# section 1a: products


def products_table(case: Case, truth: Callable[[Tensor], tuple[Tensor, Tensor]], repeats: int):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(case.dim, generator=g).to(case.device)
    hv_true, gv_true = truth(v)
    ours_h = HessianOperator(case.model, case.loss_fn, case.data)
    ours_g = GGNOperator(case.model, case.loss_fn, case.data)
    kept_h = HessianOperator(case.model, case.loss_fn, case.data, cache_graphs=True)
    kept_g = GGNOperator(case.model, case.loss_fn, case.data, cache_graphs=True)
    fns: dict[str, tuple[str, str, Callable[[], Tensor]]] = {
        "gradient pass": ("", "loop of `torch.autograd.grad(loss, params)`", case.gradient_pass),
        "lanczos-optim H": ("H", "`HessianOperator(model, loss_fn, data).matvec(v)`",
                            lambda: ours_h.matvec(v)),
        "lanczos-optim G": ("G", "`GGNOperator(model, loss_fn, data).matvec(v)`",
                            lambda: ours_g.matvec(v)),
        "lanczos-optim H, graphs kept": (
            "H", "`HessianOperator(model, loss_fn, data, cache_graphs=True).matvec(v)`",
            lambda: kept_h.matvec(v)),
        "lanczos-optim G, graphs kept": (
            "G", "`GGNOperator(model, loss_fn, data, cache_graphs=True).matvec(v)`",
            lambda: kept_g.matvec(v)),
    }  # fmt: skip
    try:
        cl_h, cl_g = curvlinops_op(case, "H"), curvlinops_op(case, "G")
        fns["curvlinops H"] = ("H", "`HessianLinearOperator(model, loss_fn, params, data) @ v`",
                               lambda: cl_h @ v)  # fmt: skip
        fns["curvlinops G"] = ("G", "`GGNLinearOperator(model, loss_fn, params, data) @ v`",
                               lambda: cl_g @ v)  # fmt: skip
    except Exception as exc:  # report any peer failure
        fns["curvlinops"] = ("", _failure(exc), None)
    try:
        he_h, he_g = eigenthings_op(case, "H"), eigenthings_op(case, "G")
        fns["hessian-eigenthings H"] = (
            "H", "`HessianOperator(model, data, supervised_loss(loss_fn)).matvec(v)`",
            lambda: he_h.matvec(v))  # fmt: skip
        fns["hessian-eigenthings G"] = (
            "G", "`GGNOperator(model, data, supervised_forward, "
            "supervised_loss_of_output(loss_fn)).matvec(v)`", lambda: he_g.matvec(v))  # fmt: skip
    except Exception as exc:
        fns["hessian-eigenthings"] = ("", _failure(exc), None)
    try:
        ph = pyhessian_obj(case)
        vl = _split(v, case.params)

        def ph_hv() -> Tensor:
            out = _flat(ph.dataloader_hv_product(vl)[1])
            _pyhessian_cleanup(case)
            return out

        fns["PyHessian H"] = ("H", "`hessian(model, loss_fn, dataloader=data)"
                              ".dataloader_hv_product(v)`", ph_hv)  # fmt: skip
    except Exception as exc:
        fns["PyHessian"] = ("", _failure(exc), None)

    errors: dict[str, float | str] = {}
    runnable = {}
    for name, (kind, _, fn) in fns.items():
        if fn is None:
            continue
        try:
            out = fn()  # warm-up and accuracy
        except Exception as exc:
            errors[name] = _failure(exc)
            continue
        runnable[name] = fn
        if kind:
            ref = hv_true if kind == "H" else gv_true
            errors[name] = float((out.detach().double() - ref).norm() / ref.norm())
    times: dict[str, list[float]] = {k: [] for k in runnable}
    for r in range(repeats):
        order = list(runnable) if r % 2 == 0 else list(reversed(runnable))
        for name in order:
            _sync(case.device)
            t0 = time.perf_counter()
            runnable[name]()
            _sync(case.device)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["gradient pass"])
    rows = []
    for name, (kind, call, _) in fns.items():
        row = Row(name, call)
        err = errors.get(name)
        if isinstance(err, str):
            row.note = err
        elif name in times:
            row.cost = statistics.median(times[name]) / base
            row.error = err
            row.products = 1 if kind else None
        else:
            row.note = call
            row.call = ""
        rows.append(row)
    return rows, base


# --------------------------------------------------------------------------------------------
# section 1b: top eigenvalue


def cnn_truth(case: Case, quick: bool) -> tuple[float, float, int, int]:
    """Top Hessian eigenvalue of the float64 model, certified by a float64 Lanczos residual bound.

    Float64 convolutions are ~8x slower than float32 on the CPU, so a float32 run (random
    start) finds the top Ritz vector first and the float64 run starts from it. The bound
    |beta_m s_m| of the float64 run holds whatever its start vector: an eigenvalue of the float64
    Hessian lies within it of the returned Ritz value. Returns (theta, bound, steps32, steps64).
    """
    gen = torch.Generator().manual_seed(12345)
    op32 = HessianOperator(case.model, case.loss_fn, case.data, cache_graphs=True)
    warm = lanczos(op32, 150, tol=1e-6, stop_on="largest", generator=gen, compute_vectors=True)
    model, data = as_float64(case)
    op64 = HessianOperator(model, case.loss_fn, data, cache_graphs=True)
    v0 = warm.ritz_vectors[:, -1].double()
    res = lanczos(op64, 100, v0=v0, tol=1e-8 if quick else 1e-9, stop_on="largest")
    return float(res.ritz_values[-1]), float(res.residuals[-1]), warm.num_steps, res.num_steps


def top_eigen_rows(case: Case, truth: float, max_iter: int, quick: bool) -> list[Row]:
    """Each library's way to the top Hessian eigenvalue; ``fn(meter)`` returns (value, note)."""
    rows: list[Row] = []

    def run(method: str, short: str, call: str, fn: Callable[[Meter], tuple[float, str]]) -> None:
        row = Row(method, call, short=short)
        costs, books = [], []
        for _ in range(case.reps):  # same seeds: the same products and result each time
            meter = Meter(case.device)
            try:
                (value, row.note), seconds, cost = case.measure(lambda m=meter: fn(m))
            except Exception as exc:  # report any peer failure
                row.note = _failure(exc) + f" (after {meter.products} products)"
                break
            costs.append(cost)
            books.append(100 * (seconds / meter.seconds - 1))
            row.error = abs(value - truth) / abs(truth)
        if costs:
            row.cost, row.extra = statistics.median(costs), f"{statistics.median(books):.1f}"
        row.products = meter.products
        rows.append(row)

    def ours(meter: Meter, kept: bool = False) -> tuple[float, str]:
        op = HessianOperator(case.model, case.loss_fn, case.data, cache_graphs=kept)
        gen = torch.Generator().manual_seed(0)
        res = lanczos(Timed(op, meter), max_iter, tol=TARGET_REL, stop_on="largest", generator=gen)
        bound = float(res.residuals[-1] / res.ritz_values.abs().max())
        note = f"stopped by its residual bound ({bound:.1e} of |θ|max)"
        return float(res.ritz_values[-1]), note + ("; graphs built once" if kept else "")

    call = f'`lanczos(H, {max_iter}, tol=1e-4, stop_on="largest")`'
    run("lanczos-optim", "ours", call, ours)
    run("lanczos-optim, graphs kept", "ours (graphs kept)", call, partial(ours, kept=True))

    def cl_eigsh(meter: Meter) -> tuple[float, str]:
        from scipy.sparse.linalg import eigsh

        op = curvlinops_op(case, "H", meter)
        v0 = np.random.default_rng(0).standard_normal(case.dim)
        (val,) = eigsh(op.to_scipy(), k=1, which="LA", tol=TARGET_REL, v0=v0,
                       return_eigenvectors=False)  # fmt: skip
        return float(val), "ARPACK implicitly restarted Lanczos (ncv=20); curvlinops has no own"

    run(
        "curvlinops",
        "curvlinops+eigsh",
        '`scipy.sparse.linalg.eigsh(HessianLinearOperator(...).to_scipy(), k=1, which="LA", '
        "tol=1e-4)`",
        cl_eigsh,
    )

    def he_lanczos(meter: Meter) -> tuple[float, str]:
        import hessian_eigenthings as he

        res = he.lanczos(eigenthings_op(case, "H", meter), k=1, max_iter=20, which="LA",
                         tol=TARGET_REL, seed=0)  # fmt: skip
        conv = bool(res.converged[0])
        return float(res.eigenvalues[0]), f"always max_iter steps; reports converged={conv}"

    run(
        "hessian-eigenthings",
        "eigenthings lanczos",
        '`lanczos(HessianOperator(...), k=1, max_iter=20, which="LA", tol=1e-4)`',
        he_lanczos,
    )

    def he_power(meter: Meter) -> tuple[float, str]:
        import hessian_eigenthings as he

        lam, _, _, _, conv = he.power_iteration_one(
            eigenthings_op(case, "H", meter), max_iter=max_iter, tol=TARGET_REL, seed=0
        )
        return float(lam), f"reports converged={conv}"

    run(
        "hessian-eigenthings",
        "eigenthings power",
        f"`power_iteration_one(HessianOperator(...), max_iter={max_iter}, tol=1e-4)`",
        he_power,
    )

    for tol in (1e-4,) if quick else (1e-3, 1e-4):

        def ph_power(meter: Meter, tol=tol) -> tuple[float, str]:
            torch.manual_seed(0)
            try:
                obj = pyhessian_obj(case, meter)
                vals, _ = obj.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
            finally:
                _pyhessian_cleanup(case)
            note = "power iteration; stops on the relative change of the estimate"
            return float(vals[0]), note + (" (default tol)" if tol == 1e-3 else "")

        run(
            "PyHessian",
            f"PyHessian power tol={tol:g}",
            f"`hessian(model, loss_fn, dataloader=data).eigenvalues(maxIter={max_iter}, "
            f"tol={tol:g})`",
            ph_power,
        )
    return rows


# --------------------------------------------------------------------------------------------
# section 1c: 20-step spectral density


def _w1(nodes, weights, exact: np.ndarray | None) -> float | None:
    if exact is None:
        return None
    from scipy.stats import wasserstein_distance

    nodes = np.asarray(nodes, dtype=np.float64).ravel()
    weights = np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0.0, None)
    keep = np.isfinite(nodes)
    span = float(exact.max() - exact.min())
    return wasserstein_distance(nodes[keep], exact, u_weights=weights[keep]) / span


def density_rows(
    case: Case, truth_top: float, exact: np.ndarray | None, steps: int, seeds: int
) -> list[Row]:
    """Each method's 20-step, one-probe density, repeated over ``seeds`` probes (medians)."""
    methods: list[tuple[str, str, Callable[[Meter, int], tuple]]] = []

    def ours(meter: Meter, seed: int, kept: bool = False):
        op = HessianOperator(case.model, case.loss_fn, case.data, cache_graphs=kept)
        gen = torch.Generator().manual_seed(seed)
        sd = spectral_density(Timed(op, meter), steps, 1, generator=gen)
        return sd.nodes.cpu(), sd.weights.cpu()

    call = f"`spectral_density(H, {steps}, num_probes=1)`"
    methods.append(("lanczos-optim", call, ours))
    methods.append(("lanczos-optim, graphs kept", call, partial(ours, kept=True)))

    def cl_spectrum(meter: Meter, seed: int):
        from curvlinops import lanczos_approximate_spectrum

        torch.manual_seed(seed)
        grid, density = lanczos_approximate_spectrum(curvlinops_op(case, "H", meter), steps)
        return grid.cpu(), density.cpu()

    methods.append(
        (
            "curvlinops",
            f"`lanczos_approximate_spectrum(HessianLinearOperator(...), ncv={steps})`",
            cl_spectrum,
        )
    )

    def cl_fast(meter: Meter, seed: int):
        from curvlinops.papyan2020traces.spectrum import fast_lanczos

        torch.manual_seed(seed)
        evals, evecs = fast_lanczos(curvlinops_op(case, "H", meter), steps)
        return evals.cpu(), (evecs[0] ** 2).cpu()

    methods.append(
        (
            "curvlinops",
            f"`papyan2020traces.spectrum.fast_lanczos(HessianLinearOperator(...), {steps})`",
            cl_fast,
        )
    )

    def he_sd(meter: Meter, seed: int):
        import hessian_eigenthings as he

        res = he.spectral_density(eigenthings_op(case, "H", meter), num_runs=1,
                                  lanczos_steps=steps, seed=seed)  # fmt: skip
        return res.raw_eigenvalues.cpu(), res.raw_weights.cpu()

    methods.append(
        (
            "hessian-eigenthings",
            f"`spectral_density(HessianOperator(...), num_runs=1, lanczos_steps={steps})`",
            he_sd,
        )
    )

    def ph_density(meter: Meter, seed: int):
        torch.manual_seed(seed)
        try:
            nodes, weights = pyhessian_obj(case, meter).density(iter=steps, n_v=1)
        finally:
            _pyhessian_cleanup(case)
        return torch.tensor(nodes), torch.tensor(weights)

    methods.append(
        (
            "PyHessian",
            f"`hessian(model, loss_fn, dataloader=data).density(iter={steps}, n_v=1)`",
            ph_density,
        )
    )

    rows = []
    for method, call, fn in methods:
        row = Row(method, call)
        costs, w1s, tops, books, products = [], [], [], [], []
        for seed in range(seeds):
            meter = Meter(case.device)
            try:
                (nodes, weights), seconds, cost = case.measure(
                    lambda fn=fn, m=meter, s=seed: fn(m, s)
                )
            except Exception as exc:
                row.note = _failure(exc) + f" (after {meter.products} products)"
                row.products = meter.products
                break
            costs.append(cost)
            products.append(meter.products)
            books.append(100 * (seconds / meter.seconds - 1))
            w1 = _w1(nodes, weights, exact)
            if w1 is not None:
                w1s.append(w1)
            if fn is not cl_spectrum:  # a smoothed grid has no top node
                tops.append(abs(float(nodes[torch.isfinite(nodes)].max()) - truth_top))
        if costs:
            row.products = int(statistics.median(products))
            row.cost = statistics.median(costs)
            row.error = statistics.median(tops) / abs(truth_top) if tops else None
            row.extra = (
                f"{_fmt(statistics.median(w1s) if w1s else None, '.4f')} | "
                f"{statistics.median(books):.1f}"
            )
            if fn is cl_spectrum:
                row.note = "smoothed density on a 1024-point grid; includes eigsh boundary estimate"
            elif fn is cl_fast:
                row.note = "no reorthogonalisation"
        else:
            row.extra = "— | —"
        rows.append(row)
    return rows


def bookkeeping_rows(case: Case, steps: int) -> list[Row]:
    """Our fixed-step Lanczos: total time / time in its products, for H and G."""
    rows = []
    for kind, cls in (("Hessian", HessianOperator), ("GGN", GGNOperator)):
        costs, books = [], []
        for _ in range(case.reps):
            meter = Meter(case.device)
            op = Timed(cls(case.model, case.loss_fn, case.data), meter)
            gen = torch.Generator().manual_seed(0)
            _, seconds, cost = case.measure(lambda op=op, g=gen: lanczos(op, steps, generator=g))
            costs.append(cost)
            books.append(100 * (seconds / meter.seconds - 1))
        rows.append(
            Row(
                f"lanczos-optim ({kind})",
                f"`lanczos({'H' if kind == 'Hessian' else 'G'}, {steps})`",
                products=meter.products,
                cost=statistics.median(costs),
                extra=f"{statistics.median(books):.1f}",
                short=f"20-step {kind}",
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# section 2: batched probes


def batched_rows(case: Case, steps: int, ks: tuple[int, ...], repeats: int) -> list[str]:
    lines = []
    for kind, cls in (("H", HessianOperator), ("G", GGNOperator)):
        op = cls(case.model, case.loss_fn, case.data)
        for k in ks:
            per_mode: dict[bool, list[float]] = {False: [], True: []}
            nodes: dict[bool, Tensor] = {}
            for r in range(repeats):
                for batched in (False, True) if r % 2 == 0 else (True, False):
                    gen = torch.Generator().manual_seed(7)

                    def run(batched=batched, gen=gen, op=op, k=k):
                        return spectral_density(op, steps, k, batch_probes=batched, generator=gen)

                    sd, _, cost = case.measure(run)
                    per_mode[batched].append(cost / k)
                    nodes[batched] = sd.nodes
            one, many = (statistics.median(per_mode[b]) for b in (False, True))
            diff = float((nodes[True] - nodes[False]).abs().max() / nodes[False].abs().max())
            lines.append(
                f"| {kind} | {k} | {one:.2f} | {many:.2f} | {one / many:.2f} | "
                f"{one / steps:.2f} | {many / steps:.2f} | {diff:.0e} |"
            )
    return lines


# --------------------------------------------------------------------------------------------
# report


def table(rows: list[Row], header: str, extra_cols: int = 0) -> list[str]:
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        cells = [
            r.method,
            r.call,
            _fmt(r.products, "d"),
            _fmt(r.cost, ".2f"),
            _fmt(r.error, ".1e"),
        ]
        if extra_cols:
            cells.append(r.extra or " | ".join(["—"] * extra_cols))
        cells.append(r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


NOTES = (
    "Notes (from the peers' installed source):",
    "",
    "* curvlinops has no eigensolver of its own: its operators export to SciPy "
    "(`to_scipy()`), and its own spectral routines estimate the spectrum's boundaries with "
    "`eigsh` before a Lanczos run without reorthogonalisation (`fast_lanczos`).",
    "* hessian-eigenthings averages the per-batch products with equal weights (its "
    "`_matvec_full` divides by the number of batches), so a short last batch (the MLP's 5 "
    "samples) is over-weighted: that is its MLP error, not rounding. Its `lanczos` always runs "
    "`max_iter` steps (default `2 k`) and only reports `converged` afterwards.",
    "* PyHessian's `eigenvalues` stops when the estimate changes by less than `tol` "
    "(default 1e-3) between power steps, which is not a bound on its error; its `density` runs "
    "all its products and then calls `torch.eig`, removed from torch.",
    '* Our `lanczos(..., tol, stop_on="largest")` stops when the residual bound '
    "|β_m s_m| of the largest Ritz value is below `tol * max|θ|`, which bounds its distance to "
    "an eigenvalue.",
)


def targets(summary: dict[str, dict[str, list[Row]]], bases: dict[str, float]) -> list[str]:
    """The issue's three targets, judged on this run's numbers."""
    lines = ["## Targets (this run)", "", "| target | model | result | met |", "|---|---|---|---|"]
    for model, rows in summary.items():
        ours = rows["eigen"][0]
        peers = [r for r in rows["eigen"] if not r.method.startswith("lanczos-optim")]
        ran = [r for r in peers if r.error is not None]
        ok = ours.error is not None and ours.error <= TARGET_REL
        fewer = all(ours.products < r.products for r in ran if r.error <= TARGET_REL)
        listing = "; ".join(
            f"{r.short} {r.products} ({r.error:.0e}{'' if r.error <= TARGET_REL else ', misses'})"
            for r in ran
        )
        lines.append(
            f"| top eigenvalue to {TARGET_REL:g} with fewer products than any peer that reaches "
            f"it | {model} | "
            f"ours {ours.products} products, error {_fmt(ours.error, '.0e')}; {listing} | "
            f"{'yes' if ok and fewer else 'no'} |"
        )
    for model, rows in summary.items():
        cost = {r.method: r.cost for r in rows["products"]}
        for how, suffix in (("graphs kept", ", graphs kept"), ("graphs rebuilt", "")):
            h = cost.get(f"lanczos-optim H{suffix}")
            g = cost.get(f"lanczos-optim G{suffix}")
            ok = h is not None and g is not None and max(h, g) <= 2.2
            lines.append(
                f"| products <= 2.2x a gradient pass ({how}) | {model} | HVP {_fmt(h, '.2f')}x, "
                f"GGN-vp {_fmt(g, '.2f')}x (gradient pass {1e3 * bases[model]:.1f} ms) | "
                f"{'yes' if ok else 'no'} |"
            )
    for model, rows in summary.items():
        runs = [(r.short, float(r.extra.split()[0])) for r in rows["bookkeeping"]]
        ok = all(b <= 5.0 for _, b in runs)
        text = ", ".join(f"{name} {b:.1f} %" for name, b in runs)
        lines.append(
            f"| Lanczos bookkeeping <= 5 % over its products | {model} | {text} | "
            f"{'yes' if ok else 'no'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes: smaller runs")
    parser.add_argument("--repeats", type=int, default=None, help="product-timing repeats")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", default="benchmarks/results/peers.md")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    max_iter = 100
    mlp_reps = 3 if quick else 5
    started = time.perf_counter()
    out: list[str] = []

    def emit(*lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            out.append(line)

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {what}", file=sys.stderr, flush=True)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    emit(
        "# Peer benchmark" + (" (quick mode)" if quick else ""),
        "",
        f"`python benchmarks/peers.py{' --quick' if quick else ''}`: torch {torch.__version__} "
        f"on {dev_name}"
        + (f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else "")
        + f"; {_peer_versions()}. Costs are multiples of one full-data gradient pass of the same "
        f"model timed in the same run (products: medians of {repeats} interleaved repeats on the "
        f"CNN, {5 * repeats} on the MLP; other "
        "rows: a run divided by a gradient pass timed just before and after it, median of "
        f"{mlp_reps} runs on the MLP). Errors are "
        "relative to float64 truth.",
        "",
    )

    cnn_model, cnn_data = build_cnn()
    if quick:
        cnn_data = cnn_data[:1]
    cnn = Case("CNN", cnn_model.to(device), [(x.to(device), y.to(device)) for x, y in cnn_data],
               device)  # fmt: skip
    mlp_model, mlp_data = digits_mlp(device)
    mlp = Case("MLP", mlp_model, mlp_data, device)
    mlp.reps = mlp_reps
    emit(
        f"* **CNN**: `benchmarks/engine.py` (seeded, untrained), {cnn.dim:,} parameters, "
        f"{cnn.num_samples} samples in {len(cnn.data)} batch(es) of 256"
        + (" (quick mode: first batch only)" if quick else "")
        + ".",
        f"* **MLP**: 64-32-10 tanh on scikit-learn digits (100 full-batch Adam steps), "
        f"{mlp.dim:,} parameters, {mlp.num_samples} samples in batches of 256 (the last of "
        f"{len(mlp.data[-1][0])}).",
        "",
    )

    progress("truth")
    t0 = time.perf_counter()
    hess_dense, ggn_dense = dense_hessian_and_ggn(mlp)
    mlp_eigs = torch.linalg.eigvalsh(hess_dense).cpu().numpy()
    mlp_top = float(mlp_eigs[-1])
    cnn_top, cnn_bound, steps32, steps64 = cnn_truth(cnn, quick)
    emit(
        "Truth. **MLP**: dense float64 Hessian and GGN by `torch.func.hessian` / `jacrev`, "
        f"eigenvalues by `eigvalsh`: λmax = {mlp_top:.9g}, λmin = {mlp_eigs[0]:.6g}. **CNN**: "
        "no dense Hessian; products are checked against float64 autograd, and the top eigenvalue "
        f"is our own float64 Lanczos run ({steps64} steps, full reorthogonalisation, started from "
        f"the top Ritz vector of a {steps32}-step float32 run), stopped by its residual bound: "
        f"θ = {cnn_top:.10g} with |β_m s_m| = {cnn_bound:.1e} ({cnn_bound / abs(cnn_top):.1e} "
        "relative), so an eigenvalue of the float64 Hessian lies within that bound of θ "
        f"(truth computed in {time.perf_counter() - t0:.0f} s).",
        "",
    )

    def mlp_truth(v: Tensor) -> tuple[Tensor, Tensor]:
        return hess_dense @ v.double(), ggn_dense @ v.double()

    product_header = "| method | call | products | x gradient pass | rel. error | note |"
    eigen_header = (
        "| method | call | products | x gradient pass | rel. error | bookkeeping % | note |"
    )
    density_header = (
        "| method | call | products | x gradient pass | top node rel. error | W1 / span | "
        "bookkeeping % | note |"
    )
    summary: dict[str, dict[str, list[Row]]] = {}
    bases: dict[str, float] = {}
    for case, truth, top, exact in (
        (cnn, lambda v: float64_products(cnn, v), cnn_top, None),
        (mlp, mlp_truth, mlp_top, mlp_eigs),
    ):
        emit(f"## {case.name}", "")
        progress(f"{case.name}: products")
        products, base = products_table(case, truth, repeats * (1 if case is cnn else 5))
        bases[case.name] = base
        emit(
            f"### One full-data product (gradient pass: {base * 1e3:.1f} ms)",
            "",
            *table(products, product_header),
            "",
        )
        progress(f"{case.name}: top eigenvalue")
        eigen = top_eigen_rows(case, top, max_iter, quick)
        emit(
            f"### Top Hessian eigenvalue (truth {top:.9g}; target {TARGET_REL:g} relative)",
            "",
            *table(eigen, eigen_header, 1),
            "",
        )
        progress(f"{case.name}: spectral density")
        seeds = 1 if case is cnn else (2 if quick else 6)
        density = density_rows(case, top, exact, 20, seeds)
        emit(
            "### 20-step spectral density of the Hessian, one probe"
            + (f" (medians over {seeds} probes)" if seeds > 1 else ""),
            "",
            "W1 / span: Wasserstein-1 distance between the method's nodes and weights (or "
            "smoothed density) and the exact eigenvalues, divided by λmax − λmin (none for the "
            "CNN: no exact spectrum). Top node: the largest node against the true λmax.",
            "",
            *table(density, density_header, 2),
            "",
        )
        progress(f"{case.name}: bookkeeping")
        books = bookkeeping_rows(case, 20)
        emit(
            "Lanczos bookkeeping of a fixed 20-step run (total time / time in its products − 1):",
            "",
            "| run | call | products | x gradient pass | bookkeeping % |",
            "|---|---|---|---|---|",
            *(
                f"| {r.method} | {r.call} | {r.products} | {r.cost:.2f} | {r.extra} |"
                for r in books
            ),
            "",
        )
        summary[case.name] = {
            "products": products,
            "eigen": eigen,
            "bookkeeping": [
                Row("", "", extra=eigen[0].extra, short="top-eigenvalue run"),
                Row("", "", extra=eigen[1].extra, short="top-eigenvalue run (graphs kept)"),
                Row("", "", extra=density[0].extra.split("|")[-1], short="20-step density"),
                Row(
                    "",
                    "",
                    extra=density[1].extra.split("|")[-1],
                    short="20-step density (graphs kept)",
                ),
                *books,
            ],
        }

    batch_steps = {"CNN": 2 if quick else 3, "MLP": 5 if quick else 20}
    emit(
        "## Batched probes: `spectral_density(op, steps, num_probes=K, batch_probes=False/True)`",
        "",
        "Cost per probe in gradient passes, one by one (`False`) and in lock-step through "
        "`op.matmat` (`True`), the speed-up, the cost per probe and Lanczos step, and the largest "
        "node difference between the two modes relative to the largest node.",
        "",
    )
    for case in (cnn, mlp):
        progress(f"{case.name}: batched probes")
        emit(
            f"### {case.name}, {batch_steps[case.name]} steps, on {dev_name}",
            "",
            "| op | K | per probe, one by one | per probe, batched | speed-up | "
            "per probe-step, one by one | per probe-step, batched | max node diff |",
            "|---|---|---|---|---|---|---|---|",
            *batched_rows(
                case, batch_steps[case.name], (1, 4, 8), 1 if case is cnn else (2 if quick else 3)
            ),
            "",
        )

    emit(*targets(summary, bases), "", *NOTES, "")
    emit(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()

"""Lanczos spectral densities of random matrices: the paper's figures 2-6 (section 6).

Reproduces, with one Gaussian probe and m = 30 Lanczos steps unless stated otherwise:

* figure 2 -- Wigner matrices (N(0, 1) entries) for P = 225 and a larger P, Lanczos stems
  over the histogram of the exact eigenvalues and the semicircle law of radius 2 sqrt(P);
* figures 3 and 4 -- Marchenko-Pastur matrices X X^T / T with q = P / T = 2 (half the
  eigenvalues exactly zero) and q = 0.5, for P = 225 and the larger P, against the law;
* figure 5 -- two 500 x 500 matrices (Marchenko-Pastur and Wigner): exact eigenvalues,
  Lanczos and the matrix diagonal read as a spectrum;
* figure 6 -- the section 6.4 synthetic "network-like" spectrum (P = 1000: a spike at zero, a
  bulk on [0, 15], outliers up to 60 and down to -10) with m = 5, 15 and 30 stems from the
  same start vector, and its diagonal.

For every matrix it prints the Wasserstein-1 distance of the Lanczos measure and of the
diagonal to the exact spectrum (and of both to the limit law where there is one), and the
extremes of each, as ``name: key=value ...`` lines; the same numbers go to ``summary.json``.
The figures are PNGs in ``--out``.

Run::

    .venv/bin/python examples/random_matrices.py                 # P = 225 and 4000, ~2 min
    .venv/bin/python examples/random_matrices.py --large-p 10000 # the paper's size (slow:
                                                                 # ~20 min on 2 cores)
    .venv/bin/python examples/random_matrices.py --quick         # small P, a few seconds

The exact eigendecomposition of the larger matrices dominates the run time (O(P^3)); Lanczos
itself needs only 30 matrix-vector products.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from diagnostics import (
    compare_to_spectrum,
    marchenko_pastur,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_support,
    plot_density,
    plot_spectrum,
    semicircle_cdf,
    semicircle_density,
    synthetic_spectrum,
    wigner,
)
from lanczos_optim import lanczos

STEPS = 30
SYNTHETIC_STEPS = (5, 15, 30)

# The section 6.4 law for P = 1000: (mass, low, high) of each uniform part; the rest is an
# atom at zero.
_SYNTHETIC_PARTS = ((0.47, 0.0, 15.0), (0.02, 0.0, 60.0), (0.01, -10.0, 0.0))
_SYNTHETIC_ATOM = 0.5


def _lanczos_measure(matrix: torch.Tensor, steps: int, v0: torch.Tensor):
    return lanczos(matrix, steps, v0=v0)


def _w1_to_law(
    nodes: np.ndarray,
    weights: np.ndarray,
    cdf: Callable[[np.ndarray], np.ndarray],
    support: tuple[float, float],
) -> float:
    """Wasserstein-1 distance from a discrete measure to a law given by its CDF.

    ``W1 = int |F_measure - F_law| dx``, integrated on a fine grid over both supports.
    """
    lo = min(float(nodes.min()), support[0])
    hi = max(float(nodes.max()), support[1])
    grid = np.linspace(lo, hi, 200_001)
    order = np.argsort(nodes, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(weights[order] / weights.sum())])
    f_measure = cum[np.searchsorted(nodes[order], grid, side="right")]
    diff = np.abs(f_measure - cdf(grid))
    return float(np.sum(0.5 * (diff[1:] + diff[:-1]) * np.diff(grid)))


def _numbers(
    exact: np.ndarray,
    diagonal: np.ndarray,
    nodes: np.ndarray,
    weights: np.ndarray,
) -> dict[str, float]:
    uniform = np.full(exact.size, 1.0 / exact.size)
    to_lanczos = compare_to_spectrum(exact, (nodes, weights))
    to_diagonal = compare_to_spectrum(diagonal, (exact, uniform))
    return {
        "W1_lanczos": to_lanczos["wasserstein"],
        "W1_diagonal": to_diagonal["wasserstein"],
        "lambda_min": float(exact.min()),
        "lambda_max": float(exact.max()),
        "ritz_min": float(nodes.min()),
        "ritz_max": float(nodes.max()),
        "diag_min": float(diagonal.min()),
        "diag_max": float(diagonal.max()),
    }


def _report(name: str, numbers: dict[str, float], summary: dict[str, dict[str, float]]) -> None:
    summary[name] = numbers
    fields = " ".join(
        f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}" for k, v in numbers.items()
    )
    print(f"{name}: {fields}", flush=True)


def _overlay_law(
    fig,
    density: Callable[[np.ndarray], np.ndarray],
    support: tuple[float, float],
    label: str,
    atom: float = 0.0,
) -> None:
    """Draw a law on a ``plot_spectrum`` figure, scaled to its histogram's mass per bin."""
    ax = fig.axes[0]
    width = ax.patches[0].get_width()  # plot_spectrum's histograms share their bins
    x = np.linspace(support[0], support[1], 801)
    ax.plot(x, density(x) * width, color="black", lw=1.2, label=label)
    if atom > 0:
        ax.plot(
            [0.0],
            [atom],
            marker="D",
            color="black",
            ls="none",
            ms=5,
            label=f"atom at 0 (mass {atom:.3g})",
        )
    ax.legend(frameon=False, fontsize="small")


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)


def _wigner(P: int, gen: torch.Generator, out: Path, summary: dict, tag: str) -> None:
    M = wigner(P, generator=gen)
    v0 = torch.randn(P, generator=gen, dtype=torch.float64)
    res = _lanczos_measure(M, STEPS, v0)
    exact = torch.linalg.eigvalsh(M).numpy()
    diag = torch.diagonal(M).numpy()
    nodes, weights = res.ritz_values.numpy(), res.weights.numpy()
    radius = 2.0 * math.sqrt(P)
    numbers = _numbers(exact, diag, nodes, weights)
    law_cdf = lambda x: semicircle_cdf(torch.from_numpy(x), radius).numpy()  # noqa: E731
    numbers["W1_lanczos_to_law"] = _w1_to_law(nodes, weights, law_cdf, (-radius, radius))
    numbers["W1_exact_to_law"] = _w1_to_law(exact, np.ones_like(exact), law_cdf, (-radius, radius))
    numbers["law_edge"] = radius
    _report(f"{tag}_wigner_P{P}", numbers, summary)

    law = lambda x: semicircle_density(torch.from_numpy(x), radius).numpy()  # noqa: E731
    fig = plot_spectrum(
        res, exact=exact, title=f"Wigner, P={P}: Lanczos m={STEPS}, one probe (stems)"
    )
    _overlay_law(fig, law, (-radius, radius), rf"semicircle, radius $2\sqrt{{P}}$={radius:.3g}")
    _save(fig, out / f"{tag}_wigner_P{P}_lanczos.png")
    grid = np.linspace(-1.1 * radius, 1.1 * radius, 801)
    plot_density(
        grid,
        law(grid),
        exact=exact,
        label="semicircle law",
        title=f"Wigner, P={P}: exact eigenvalues",
        path=out / f"{tag}_wigner_P{P}_histogram.png",
    )


def _mp(P: int, q: float, gen: torch.Generator, out: Path, summary: dict, tag: str) -> None:
    T = max(1, round(P / q))
    q_eff = P / T
    Y = marchenko_pastur(P, T, generator=gen)
    v0 = torch.randn(P, generator=gen, dtype=torch.float64)
    res = _lanczos_measure(Y, STEPS, v0)
    exact = torch.linalg.eigvalsh(Y).numpy()
    diag = torch.diagonal(Y).numpy()
    nodes, weights = res.ritz_values.numpy(), res.weights.numpy()
    lo, hi = marchenko_pastur_support(q_eff)
    atom = marchenko_pastur_atom(q_eff)
    numbers = _numbers(exact, diag, nodes, weights)
    law_cdf = lambda x: marchenko_pastur_cdf(torch.from_numpy(x), q_eff).numpy()  # noqa: E731
    support = (0.0 if atom > 0 else lo, hi)
    numbers["W1_lanczos_to_law"] = _w1_to_law(nodes, weights, law_cdf, support)
    numbers["W1_exact_to_law"] = _w1_to_law(exact, np.ones_like(exact), law_cdf, support)
    numbers["law_edge"] = hi
    numbers["exact_mass_at_zero"] = float(np.mean(np.abs(exact) < 1e-8 * hi))
    numbers["lanczos_mass_near_zero"] = float(weights[np.abs(nodes) < 0.05 * hi].sum())
    numbers["law_atom"] = atom
    name = f"{tag}_marchenko_pastur_q{q:g}_P{P}"
    _report(name, numbers, summary)

    law = lambda x: marchenko_pastur_density(torch.from_numpy(x), q_eff).numpy()  # noqa: E731
    title = f"Marchenko-Pastur, q=P/T={q_eff:.3g}, P={P}: Lanczos m={STEPS}, one probe"
    fig = plot_spectrum(res, exact=exact, title=title)
    _overlay_law(fig, law, (lo, hi), "Marchenko-Pastur law", atom)
    _save(fig, out / f"{name}_lanczos.png")
    grid = np.linspace(0.0, 1.05 * hi, 801)
    fig = plot_density(
        grid,
        law(grid),
        exact=exact,
        label="Marchenko-Pastur law (continuous part)",
        title=f"Marchenko-Pastur, q={q_eff:.3g}, P={P}: exact eigenvalues",
    )
    if atom > 0:
        fig.axes[0].annotate(
            f"atom of mass {atom:.2g} at 0",
            xy=(0.0, max(patch.get_height() for patch in fig.axes[0].patches)),
            xytext=(0.25 * hi, 0.8 * fig.axes[0].get_ylim()[1]),
            arrowprops={"arrowstyle": "->"},
        )
    _save(fig, out / f"{name}_histogram.png")


def _diagonal_vs_lanczos(gen: torch.Generator, out: Path, summary: dict) -> None:
    """Figure 5: a 500 x 500 Marchenko-Pastur and Wigner matrix, diagonal against Lanczos."""
    P = 500
    for kind, matrix in (
        ("marchenko_pastur", marchenko_pastur(P, 2 * P, generator=gen)),
        ("wigner", wigner(P, generator=gen)),
    ):
        v0 = torch.randn(P, generator=gen, dtype=torch.float64)
        res = _lanczos_measure(matrix, STEPS, v0)
        exact = torch.linalg.eigvalsh(matrix).numpy()
        diag = torch.diagonal(matrix).numpy()
        numbers = _numbers(exact, diag, res.ritz_values.numpy(), res.weights.numpy())
        _report(f"fig5_{kind}_P{P}", numbers, summary)
        label = "Marchenko-Pastur q=0.5" if kind == "marchenko_pastur" else "Wigner"
        plot_spectrum(
            res,
            exact=exact,
            diagonal=diag,
            bins=60,
            title=f"{label}, P={P}: eigenvalues, diagonal, Lanczos m={STEPS}",
            path=out / f"fig5_{kind}_diagonal_vs_lanczos.png",
        )


def _synthetic_density(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for mass, lo, hi in _SYNTHETIC_PARTS:
        out += np.where((x >= lo) & (x <= hi), mass / (hi - lo), 0.0)
    return out


def _synthetic(gen: torch.Generator, out: Path, summary: dict) -> None:
    """Figure 6: the network-like synthetic spectrum, m = 5, 15, 30 from one start vector."""
    P = 1000
    H, exact_t = synthetic_spectrum(P, generator=gen)
    exact = exact_t.numpy()
    diag = torch.diagonal(H).numpy()
    v0 = torch.randn(P, generator=gen, dtype=torch.float64)
    grid = np.linspace(-12.0, 62.0, 1481)
    fig = plot_density(
        grid,
        _synthetic_density(grid),
        exact=exact,
        bins=74,
        label="law of the eigenvalues (without the atom)",
        title=f"Synthetic spectrum, P={P}: exact eigenvalues ({_SYNTHETIC_ATOM:.0%} at zero)",
    )
    fig.axes[0].set_yscale("log")  # the outliers next to the spike at zero
    fig.axes[0].set_ylim(1e-4, 1.0)
    _save(fig, out / "fig6a_synthetic_histogram.png")
    results = {m: _lanczos_measure(H, m, v0) for m in SYNTHETIC_STEPS}
    for m, res in results.items():
        nodes, weights = res.ritz_values.numpy(), res.weights.numpy()
        numbers = _numbers(exact, diag, nodes, weights)
        numbers["exact_mass_at_zero"] = float(np.mean(exact == 0.0))
        numbers["lanczos_mass_near_zero"] = float(weights[np.abs(nodes) < 0.5].sum())
        numbers["outliers_above_15"] = int((exact > 15).sum())
        numbers["ritz_above_15"] = int((nodes > 15).sum())
        numbers["negative_outliers"] = int((exact < 0).sum())
        numbers["ritz_negative"] = int((nodes < -0.5).sum())
        _report(f"fig6_synthetic_m{m}", numbers, summary)
        plot_spectrum(
            res,
            exact=exact,
            bins=74,
            log=True,
            title=f"Synthetic spectrum, P={P}: Lanczos m={m} (same start vector)",
            path=out / f"fig6_synthetic_m{m}.png",
        )
    plot_spectrum(
        results[SYNTHETIC_STEPS[-1]],
        exact=exact,
        diagonal=diag,
        bins=74,
        log=True,
        title=f"Synthetic, P={P}: diagonal (min {diag.min():.2f}, max {diag.max():.2f}) "
        f"vs Lanczos m={SYNTHETIC_STEPS[-1]}",
        path=out / "fig6c_synthetic_diagonal.png",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Lanczos spectral densities of random matrices (paper, figures 2-6).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default="results/examples/random_matrices",
        help="folder for the PNGs and summary.json",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small matrices only (the larger P becomes 400)"
    )
    parser.add_argument(
        "--large-p",
        type=int,
        default=4000,
        help="the larger dimension of figures 2-4 (paper: 10000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw")
    args = parser.parse_args(argv)
    large = 400 if args.quick else args.large_p
    if large < STEPS:
        parser.error(f"--large-p must be at least {STEPS}; got {large}.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:  # small dense problems: extra threads only add contention
        torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    summary: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    print(
        "W1_* = Wasserstein-1 distance to the exact spectrum (or to the limit law); "
        "lambda = exact, ritz = Lanczos, diag = the matrix diagonal.",
        flush=True,
    )
    for P in (225, large):
        _wigner(P, gen, out, summary, "fig2")
    for P in (225, large):
        _mp(P, 2.0, gen, out, summary, "fig3")
        _mp(P, 0.5, gen, out, summary, "fig4")
    _diagonal_vs_lanczos(gen, out, summary)
    _synthetic(gen, out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(
        f"wrote {len(pngs)} figures and summary.json to {out.resolve()} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

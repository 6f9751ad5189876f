"""The whole curvature workflow on real offline data: a small CNN on Fashion-MNIST.

Reproduces the paper's pipeline (sections 7-9, appendices C and D) end to end on a data set
that Debian ships (`apt-get install dataset-fashion-mnist`, IDX files under
/usr/share/datasets/fashion-mnist), so it runs with no network:

1. train a small CNN on a Fashion-MNIST subset with SGD (momentum 0.9) and with LanczosNewton
   (GGN curvature), same data, same initialisation, and compare the training curves;
2. compute the Hessian and the GGN spectra of the SGD network by stochastic Lanczos
   quadrature (one probe, as in the paper);
3. compare BackPACK's diagonal approximations (exact and Monte-Carlo GGN diagonal, Hessian
   diagonal) with those spectra: Wasserstein-1 distance and extremes, as in figure 7;
4. walk the loss landscape along the top and bottom Ritz vectors of the Hessian (section 9),
   train and test loss and accuracy next to the quadratic model.

Writes into ``--out``: ``training.png``, ``spectrum_hessian.png``/``.npz``,
``spectrum_ggn.png``/``.npz``, ``diagonal_ggn.png``, ``diagonal_hessian.png``,
``landscape.png``/``.npz``, ``summary.json`` and the training folders (``stats.jsonl``,
checkpoints). Prints the key numbers as ``name: key=value ...`` lines.

Run::

    .venv/bin/python examples/fashion_mnist.py            # 5000 images, 5 epochs (~20 min
                                                          # on 2 busy CPU cores)
    .venv/bin/python examples/fashion_mnist.py --quick    # 512 samples, well under a minute
    .venv/bin/python examples/fashion_mnist.py --data-path DIR   # IDX files elsewhere

Without the data it prints one line saying how to install it and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diagnostics import (
    build_loss_landscape,
    compare_to_spectrum,
    compute_eigenspectrum,
    diagonal_approximations,
    load_dataset,
    plot_landscape,
    plot_runs,
    plot_spectrum,
    select_directions,
    train_network,
)

INSTALL_HINT = "apt-get install dataset-fashion-mnist"

FULL = {
    "train_samples": 5000,
    "analysis_samples": 512,
    "epochs": 5,
    "batch_size": 128,
    "newton_lanczos_steps": 10,
    "spectrum_steps": 40,
    "landscape_points": 21,
    "channels": (16, 32),
}
QUICK = {
    "train_samples": 512,
    "analysis_samples": 128,
    "epochs": 2,
    "batch_size": 64,
    "newton_lanczos_steps": 8,
    "spectrum_steps": 16,
    "landscape_points": 7,
    "channels": (8, 16),
}


def _report(name: str, numbers: dict[str, float], summary: dict) -> None:
    summary[name] = numbers
    text = " ".join(f"{k}={v:.4g}" for k, v in numbers.items())
    print(f"{name}: {text}", flush=True)


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return list(DataLoader(TensorDataset(x, y), batch_size=size, shuffle=False))


def _load(root: str | None, cfg: dict, seed: int) -> tuple[TensorDataset, TensorDataset]:
    train = load_dataset("fashion-mnist", root=root, subset=cfg["train_samples"], seed=seed)
    test = load_dataset(
        "fashion-mnist", train=False, root=root, subset=cfg["analysis_samples"], seed=seed
    )
    return train, test


def _train(name: str, optimizer: str, kwargs: dict, train, test, cfg: dict, out: Path, seed: int):
    t0 = time.perf_counter()
    result = train_network(
        model="small_cnn",
        model_kwargs={"channels": cfg["channels"]},
        dataset=train,
        test_dataset=test,
        epochs=cfg["epochs"],
        optimizer=optimizer,
        optimizer_kwargs=kwargs,
        batch_size=cfg["batch_size"],
        schedule="linear" if optimizer == "sgd" else "constant",
        checkpoint_dir=out / f"train-{name}",
        checkpoint_every=0,
        overwrite=True,
        seed=seed,
        device="cpu",
        progress=False,
    )
    first, last = result.history[0], result.history[-1]
    numbers = {
        "first_epoch_train_loss": first["train_loss"],
        "train_loss": last["train_loss"],
        "test_loss": last["test_loss"],
        "test_acc": last["test_acc"],
        "seconds": time.perf_counter() - t0,
    }
    return result, numbers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train, spectra, BackPACK diagonals and landscape on Fashion-MNIST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="results/examples/fashion_mnist", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny budget (for tests)")
    parser.add_argument(
        "--data-path",
        default=None,
        help="folder with the four *-ubyte(.gz) IDX files (default: Debian's location)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data subsets and training")
    args = parser.parse_args(argv)
    # torch 2.14's forward-mode AD warns about torch.jit.script on every curvature product.
    warnings.filterwarnings("ignore", r".*torch\.jit\.script.* is deprecated", FutureWarning)
    cfg = dict(QUICK if args.quick else FULL)
    if args.quick:  # tiny models: extra threads only add contention
        torch.set_num_threads(1)

    try:
        train, test = _load(args.data_path, cfg, args.seed)
    except FileNotFoundError:
        where = args.data_path or "/usr/share/datasets/fashion-mnist"
        print(
            f"error: Fashion-MNIST IDX files not found in {where}; install them with "
            f"`{INSTALL_HINT}` (or pass --data-path DIR).",
            file=sys.stderr,
        )
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    print(
        f"Fashion-MNIST: {len(train)} training and {len(test)} test images; small CNN "
        f"(channels {cfg['channels']}), {cfg['epochs']} epochs",
        flush=True,
    )

    # 1. Training: SGD (the paper's linear schedule) and LanczosNewton on the GGN.
    sgd, numbers = _train(
        "sgd", "sgd", {"lr": 0.05, "momentum": 0.9}, train, test, cfg, out, args.seed
    )
    _report("train_sgd", numbers, summary)
    # A trust region on the step: without it, a mini-batch Newton step now and then jumps far
    # (the batch GGN has rank <= batch x classes), which undoes an epoch of progress.
    newton_kwargs = {
        "lr": 1.0,
        "damping": 1.0,
        "max_step_norm": 1.0,
        "lanczos_steps": cfg["newton_lanczos_steps"],
    }
    newton, numbers = _train(
        "lanczos_newton", "lanczos_newton", newton_kwargs, train, test, cfg, out, args.seed
    )
    _report("train_lanczos_newton", numbers, summary)
    plot_runs(
        {"SGD": sgd.history, "LanczosNewton (GGN)": newton.history}, path=out / "training.png"
    )

    # 2. Spectra of the SGD network on a training subset (float64 for the analysis).
    model = sgd.model.double().eval()
    loss_fn = nn.CrossEntropyLoss()
    x, y = train.tensors
    n = cfg["analysis_samples"]
    data = _batches(x[:n].double(), y[:n], 256)
    test_data = _batches(test.tensors[0].double(), test.tensors[1], 256)
    spectra = {}
    for curvature in ("hessian", "ggn"):
        t1 = time.perf_counter()
        spectrum = compute_eigenspectrum(
            model,
            loss_fn,
            data,
            curvature=curvature,
            lanczos_steps=cfg["spectrum_steps"],
            save_eigvec=curvature == "hessian",
            seed=args.seed,
        )
        spectrum.save(out / f"spectrum_{curvature}.npz")
        plot_spectrum(
            spectrum,
            log=True,
            title=f"{curvature.upper() if curvature == 'ggn' else 'Hessian'} of the SGD network, "
            f"Lanczos m={cfg['spectrum_steps']}, P={spectrum.num_params}",
            path=out / f"spectrum_{curvature}.png",
        )
        s = spectrum.summary()
        numbers = {
            "lambda_max": s["lambda_max"],
            "lambda_min": s["lambda_min"],
            "negative_mass": s["negative_mass"],
            "negative_mass_excl_zero": s["negative_mass_excl_zero"],
            "trace": s["trace"],
            "num_outliers": s["num_outliers"],
            "weights_sum": float(spectrum.weights.sum()),
            "seconds": time.perf_counter() - t1,
        }
        _report(f"spectrum_{curvature}", numbers, summary)
        spectra[curvature] = spectrum

    # 3. BackPACK diagonals against the Lanczos spectra (paper, section 7.1 and figure 7).
    t1 = time.perf_counter()
    diagonals = diagonal_approximations(model, loss_fn, data, seed=args.seed)
    for kind, diag in diagonals.items():
        target = "ggn" if "ggn" in kind else "hessian"
        c = compare_to_spectrum(diag, spectra[target])
        numbers = {
            "W1": c["wasserstein"],
            "W1_relative": c["wasserstein_relative"],
            "diag_min": c["diagonal_min"],
            "diag_max": c["diagonal_max"],
            "lambda_min": c["spectrum_min"],
            "lambda_max": c["spectrum_max"],
            "diag_mass_near_zero": c["diagonal_mass_near_zero"],
            "lanczos_mass_near_zero": c["spectrum_mass_near_zero"],
        }
        _report(f"{kind}_vs_{target}", numbers, summary)
    summary["diagonal_seconds"] = time.perf_counter() - t1
    for target, kind in (("ggn", "diag_ggn_exact"), ("hessian", "diag_hessian")):
        plot_spectrum(
            spectra[target],
            diagonal=diagonals[kind].numpy(),
            log=True,
            title=f"BackPACK {kind} (histogram) vs Lanczos {target} (stems)",
            path=out / f"diagonal_{target}.png",
        )

    # 4. Landscape along the top and bottom Ritz vectors of the Hessian (paper, section 9).
    t1 = time.perf_counter()
    hessian = spectra["hessian"]
    indices = select_directions(hessian, top=(0, 1), bottom=(0, 1))
    theta, _ = hessian.probe_values(0)
    order = sorted(range(theta.size), key=lambda c: theta[c])
    names = {c: f"top{theta.size - 1 - order.index(c)}" for c in order[len(order) // 2 :]}
    names.update({c: f"bottom{order.index(c)}" for c in order[: len(order) // 2]})
    tags = [names[c] for c in indices]
    landscape = build_loss_landscape(
        model,
        loss_fn,
        data,
        test_data,
        directions=hessian,
        indices=indices,
        dist=1.0,
        n_points=cfg["landscape_points"],
        labels=[f"{tag} (θ={theta[c]:.3g})" for tag, c in zip(tags, indices, strict=True)],
    )
    landscape.save(out / "landscape.npz")
    plot_landscape(landscape, path=out / "landscape.png")
    mid = landscape.t.size // 2
    for i, tag in enumerate(tags):
        numbers = {
            "ritz_value": float(landscape.ritz_value[i]),
            "loss_at_0": float(landscape.train_loss[i, mid]),
            "loss_at_plus_dist": float(landscape.train_loss[i, -1]),
            "loss_at_minus_dist": float(landscape.train_loss[i, 0]),
            "quadratic_at_plus_dist": float(landscape.quadratic[i, -1]),
            "test_acc_at_0": float(landscape.test_acc[i, mid]),
        }
        _report(f"landscape_{tag}", numbers, summary)
    summary["landscape_seconds"] = time.perf_counter() - t1
    summary["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results in {out.resolve()} ({summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

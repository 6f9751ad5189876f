"""The offline end-to-end demo (``make demo`` / ``lanczos-optim demo``).

On scikit-learn's digits, with no network: trains a small MLP with SGD and with LanczosNewton,
computes Hessian and GGN spectra of the SGD model, compares BackPACK's diagonal approximations
with the Lanczos spectrum, walks the loss landscape along the top and bottom Ritz vectors, and
writes PNG plots, result files, two offline W&B runs and ``summary.md`` into one folder.

W&B (one project, ``lanczos-optim``): the run ``demo-sgd`` holds the SGD baseline's training and
every analysis of its model (spectra, diagonals, landscape); ``demo-lanczos_newton`` holds the
LanczosNewton training with its per-step curvature. Both configs hold the full training
configuration (optimiser keyword arguments and learning rate used, schedule, epochs, data, ...)
and the demo's own settings; both log the epoch number under the one key ``epoch``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diagnostics.cli._setup import batches
from diagnostics.results import atomic_write
from diagnostics.training import load_dataset

__all__ = ["run_demo"]


def _train(
    name: str, optimizer: str, kwargs: dict[str, Any], cfg: dict[str, Any], out: Path, logger: Any
) -> Any:
    """Train the demo's MLP with ``optimizer``, logging to ``logger``."""
    from diagnostics.training import train_network

    return train_network(
        model="mlp",
        dataset="digits",
        epochs=cfg["epochs"],
        optimizer=optimizer,
        optimizer_kwargs=kwargs,
        lr=kwargs.pop("lr"),
        batch_size=64,
        schedule="constant",
        checkpoint_dir=out / f"train-{name}",
        checkpoint_every=cfg["epochs"],
        overwrite=True,
        seed=0,
        callbacks=[logger],
        progress=False,
    )


def run_demo(
    out_dir: str | os.PathLike[str] = "results/demo",
    *,
    quick: bool = False,
    wandb_mode: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the demo and return its key numbers (also written to ``summary.md``).

    Args:
        out_dir: Folder for every output (created; files in it are replaced atomically).
        quick: Fewer epochs and Lanczos steps (for tests).
        wandb_mode: ``"online"``, ``"offline"`` or ``"disabled"`` (default: offline without a key).
        quiet: No progress bar (it is shown only on a terminal anyway).

    Returns:
        The numbers of the summary.
    """
    from diagnostics.analysis import (
        build_loss_landscape,
        compare_to_spectrum,
        compute_eigenspectrum,
        diagonal_approximations,
        select_directions,
    )
    from diagnostics.plots import plot_landscape, plot_runs, plot_spectrum
    from diagnostics.wandb_logger import WandbLogger

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "epochs": 3 if quick else 10,
        "steps": 20 if quick else 60,
        "subset": 512 if quick else 1437,
    }
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"config": cfg}
    stages = tqdm(total=6, desc="demo", unit="stage", disable=True if quiet else None)
    runs: dict[str, WandbLogger] = {}
    run_dirs: list[str] = []

    def wandb_run(name: str, finish: bool) -> WandbLogger:
        runs[name] = WandbLogger(
            name=f"demo-{name}",
            config={"demo": cfg},
            mode=wandb_mode,
            directory=out,
            finish_on_train_end=finish,
        )
        if run_dir := getattr(runs[name].run, "dir", None):
            run_dirs.append(str(Path(run_dir).parent))
        return runs[name]

    try:
        stages.set_postfix_str("training SGD")
        logger = wandb_run("sgd", finish=False)  # the analyses below go to this run too
        sgd = _train("sgd", "sgd", {"lr": 0.1, "momentum": 0.9}, cfg, out, logger)
        stages.update()
        stages.set_postfix_str("training LanczosNewton")
        newton_logger = wandb_run("lanczos_newton", finish=True)
        newton = _train("lanczos_newton", "lanczos_newton", {"lr": 1.0}, cfg, out, newton_logger)
        stages.update()
        curves = {"SGD": sgd.history, "LanczosNewton": newton.history}
        plot_runs(curves, path=out / "training.png")
        for name, res in (("sgd", sgd), ("lanczos_newton", newton)):
            last = res.history[-1]
            summary[f"{name}_train_loss"] = last["train_loss"]
            summary[f"{name}_test_acc"] = last["test_acc"]

        model = sgd.model.double().eval()
        x, y = load_dataset("digits", subset=cfg["subset"]).tensors
        data = batches(torch.utils.data.TensorDataset(x.double(), y), 256)
        xt, yt = load_dataset("digits", train=False).tensors
        test = batches(torch.utils.data.TensorDataset(xt.double(), yt), 256)
        loss_fn = nn.CrossEntropyLoss()

        stages.set_postfix_str("spectra")
        spectra = {}
        for curvature in ("hessian", "ggn"):
            spectra[curvature] = compute_eigenspectrum(
                model,
                loss_fn,
                data,
                curvature=curvature,
                lanczos_steps=cfg["steps"],
                save_eigvec=curvature == "hessian",
                seed=0,
            )
            prov = {"model": "mlp", "dataset": "digits", "subset": cfg["subset"]}
            spectra[curvature].meta.setdefault("provenance", {}).update(prov)
            spectra[curvature].save(out / f"spectrum_{curvature}.npz")
            plot_spectrum(spectra[curvature], path=out / f"spectrum_{curvature}.png")
            s = spectra[curvature].summary()
            for key in ("lambda_max", "lambda_min", "negative_mass", "negative_mass_excl_zero"):
                summary[f"{curvature}_{key}"] = s[key]
            logger.log_spectrum(spectra[curvature], prefix=f"spectrum_{curvature}")
        stages.update()

        stages.set_postfix_str("BackPACK diagonals")
        diagonals = diagonal_approximations(model, loss_fn, data, seed=0)
        for kind, diag in diagonals.items():
            target = spectra["ggn" if "ggn" in kind else "hessian"]
            comparison = compare_to_spectrum(diag, target)
            summary[f"{kind}_wasserstein_rel"] = comparison["wasserstein_relative"]
            summary[f"{kind}_max"] = comparison["diagonal_max"]
            logger.log_comparison(comparison, prefix=f"diagonal_{kind}")
        plot_spectrum(
            spectra["ggn"],
            diagonal=diagonals["diag_ggn_exact"].numpy(),
            diagonal_label="diag_ggn_exact",
            log=True,
            path=out / "diagonal_vs_lanczos.png",
        )
        stages.update()

        stages.set_postfix_str("landscape")
        indices = select_directions(spectra["hessian"], top=(0, 1), bottom=(0, 1))
        landscape = build_loss_landscape(
            model,
            loss_fn,
            data,
            test,
            directions=spectra["hessian"],
            indices=indices,
            dist=1.0,
            n_points=11 if quick else 21,
        )
        landscape.save(out / "landscape.npz")
        plot_landscape(landscape, path=out / "landscape.png")
        logger.log_landscape(landscape)
        stages.update()
    finally:
        for run in runs.values():
            run.finish()
        stages.close()
    summary["wandb_runs"] = ", ".join(run_dirs) or None
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    _write_summary(out / "summary.md", summary)
    print(
        f"demo results in {out.resolve()} (summary.md, *.png, *.npz); "
        f"offline W&B runs: {summary['wandb_runs']}"
    )
    return summary


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    lines = ["# lanczos-optim demo (digits, MLP)", "", "| quantity | value |", "|---|---|"]
    for key, value in summary.items():
        if key == "config":
            continue
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {text} |")
    lines += ["", f"Configuration: {summary['config']}", ""]
    data = "\n".join(lines).encode()
    atomic_write(path, lambda f: f.write(data))

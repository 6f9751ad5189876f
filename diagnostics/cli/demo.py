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

    Example:
        >>> import tempfile
        >>> run_demo(tempfile.mkdtemp(), wandb_mode="bogus")  # checked before any training
        Traceback (most recent call last):
        ...
        ValueError: wandb mode must be one of ...; got 'bogus'.
    """
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
        model, logger = _train_both(cfg, out, wandb_run, stages, summary)
        demo = _Analysis(model, *_digits(cfg), out, logger, summary)
        stages.set_postfix_str("spectra")
        spectra = demo.spectra(cfg["steps"], cfg["subset"])
        stages.update()
        stages.set_postfix_str("BackPACK diagonals")
        demo.diagonals(spectra)
        stages.update()
        stages.set_postfix_str("landscape")
        demo.landscape(spectra["hessian"], n_points=11 if quick else 21)
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


def _train_both(
    cfg: dict[str, Any], out: Path, wandb_run: Any, stages: Any, summary: dict[str, Any]
) -> tuple[nn.Module, Any]:
    """Train SGD and LanczosNewton; return the SGD model (float64, eval) and its W&B logger."""
    from diagnostics.plots import plot_runs

    stages.set_postfix_str("training SGD")
    logger = wandb_run("sgd", finish=False)  # the analyses go to this run too
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
    return sgd.model.double().eval(), logger


def _digits(cfg: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The demo's training subset and the test split, as float64 batches."""
    x, y = load_dataset("digits", subset=cfg["subset"]).tensors
    data = batches(torch.utils.data.TensorDataset(x.double(), y), 256)
    xt, yt = load_dataset("digits", train=False).tensors
    return data, batches(torch.utils.data.TensorDataset(xt.double(), yt), 256)


class _Analysis:
    """The analyses of the SGD model: spectra, diagonals, landscape (saved, plotted, logged)."""

    def __init__(
        self, model: nn.Module, data: list[Any], test: list[Any], out: Path, logger: Any,
        summary: dict[str, Any],
    ) -> None:  # fmt: skip
        self.model, self.data, self.test, self.out = model, data, test, out
        self.logger, self.summary = logger, summary
        self.loss_fn = nn.CrossEntropyLoss()

    def spectra(self, steps: int, subset: int) -> dict[str, Any]:
        from diagnostics.analysis import compute_eigenspectrum
        from diagnostics.plots import plot_spectrum

        spectra = {}
        for curvature in ("hessian", "ggn"):
            spectra[curvature] = spectrum = compute_eigenspectrum(
                self.model, self.loss_fn, self.data, curvature=curvature, lanczos_steps=steps,
                save_eigvec=curvature == "hessian", seed=0,
            )  # fmt: skip
            prov = {"model": "mlp", "dataset": "digits", "subset": subset}
            spectrum.meta.setdefault("provenance", {}).update(prov)
            spectrum.save(self.out / f"spectrum_{curvature}.npz")
            plot_spectrum(spectrum, path=self.out / f"spectrum_{curvature}.png")
            s = spectrum.summary()
            for key in ("lambda_max", "lambda_min", "negative_mass", "negative_mass_excl_zero"):
                self.summary[f"{curvature}_{key}"] = s[key]
            self.logger.log_spectrum(spectrum, prefix=f"spectrum_{curvature}")
        return spectra

    def diagonals(self, spectra: dict[str, Any]) -> None:
        from diagnostics.analysis import compare_to_spectrum, diagonal_approximations
        from diagnostics.plots import plot_spectrum

        diagonals = diagonal_approximations(self.model, self.loss_fn, self.data, seed=0)
        for kind, diag in diagonals.items():
            target = spectra["ggn" if "ggn" in kind else "hessian"]
            comparison = compare_to_spectrum(diag, target)
            self.summary[f"{kind}_wasserstein_rel"] = comparison["wasserstein_relative"]
            self.summary[f"{kind}_max"] = comparison["diagonal_max"]
            self.logger.log_comparison(comparison, prefix=f"diagonal_{kind}")
        plot_spectrum(
            spectra["ggn"], diagonal=diagonals["diag_ggn_exact"].numpy(),
            diagonal_label="diag_ggn_exact", log=True, path=self.out / "diagonal_vs_lanczos.png",
        )  # fmt: skip

    def landscape(self, hessian: Any, n_points: int) -> None:
        from diagnostics.analysis import build_loss_landscape, select_directions
        from diagnostics.plots import plot_landscape

        indices = select_directions(hessian, top=(0, 1), bottom=(0, 1))
        landscape = build_loss_landscape(
            self.model, self.loss_fn, self.data, self.test, directions=hessian, indices=indices,
            dist=1.0, n_points=n_points,
        )  # fmt: skip
        landscape.save(self.out / "landscape.npz")
        plot_landscape(landscape, path=self.out / "landscape.png")
        self.logger.log_landscape(landscape)


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

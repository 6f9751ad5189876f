"""What each ``lanczos-optim`` subcommand does (the parser lives in :mod:`diagnostics.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics._io import FORMAT_PREFIX, atomic_write, load_npz, save_npz
from diagnostics._setup import AnalysisSetup, analysis_setup

__all__: list[str] = []


def _setup(args: argparse.Namespace) -> AnalysisSetup:
    return analysis_setup(
        checkpoint=args.checkpoint,
        model=args.model,
        dataset=args.dataset,
        data_path=args.data_path,
        subset=args.subset,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype=torch.float64 if args.float64 else torch.float32,
    )


def _png_beside(path: str | Path) -> Path:
    return Path(path).with_suffix(".png")


def _ranks(text: str, name: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers; got {text!r}.") from None


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically."""
    data = json.dumps(payload, indent=2, default=float).encode()
    return atomic_write(path, lambda f: f.write(data))


_WANDB_ID_FILE = "wandb-run-id.txt"


def _held_out(args: argparse.Namespace, n: int = 512) -> Any:
    """Batches of up to ``n`` samples of the data set's test split (for the epoch spectra)."""
    from diagnostics._setup import batches
    from diagnostics.datasets import load_dataset

    data = load_dataset(args.dataset, train=False, root=args.data_path, download=args.download)
    n = min(n, len(data))
    return batches(torch.utils.data.Subset(data, range(n)), min(256, n))


def _wandb_run_id(args: argparse.Namespace) -> str | None:
    """The W&B run id stored beside the checkpoint ``--resume`` names (``None``: a new run)."""
    if not args.resume:
        return None
    path = Path(args.resume)
    folder = path if path.is_dir() else path.parent
    id_file = folder / _WANDB_ID_FILE
    if not id_file.is_file():
        return None
    return id_file.read_text().strip() or None


class _RunIdWriter:
    """Writes the W&B run id into the output folder once training has started (for --resume)."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path, self.run_id, self.done = folder / _WANDB_ID_FILE, run_id, False

    def on_step(self, step: Any) -> None:
        if not self.done:
            data = self.run_id.encode()
            atomic_write(self.path, lambda f: f.write(data))
            self.done = True


def run_train(args: argparse.Namespace) -> None:
    """Train a network; W&B logging unless ``--wandb disabled``; spectra saved under --out."""
    from diagnostics._interrupt import TrainingInterrupted
    from diagnostics._training_setup import ResultsExistError, prepare_folder
    from diagnostics.epoch_spectra import EpochSpectra
    from diagnostics.optimizers import resolve_hyperparameters
    from diagnostics.training import STATS_FILENAME, train_network
    from diagnostics.wandb_logger import WandbLogger

    opt_kwargs = resolve_hyperparameters(args.optimizer, dict(args.opt), args.lr)
    resume = Path(args.resume) if args.resume else None
    if args.out is None:
        args.out = str(resume if resume.is_dir() else resume.parent) if resume else "results/train"
    try:  # before W&B writes into the folder
        prepare_folder(args.out, resume, args.overwrite, STATS_FILENAME)
    except ResultsExistError as err:
        raise ResultsExistError(err.folder, "--resume", "--overwrite") from None
    callbacks: list[Any] = []
    logger = None
    if args.wandb != "disabled":
        logger = WandbLogger(
            name=f"{args.model}-{args.optimizer}",
            config=vars(args) | {"opt": opt_kwargs, "lr": opt_kwargs.get("lr")},
            mode=args.wandb,
            directory=args.out,
            run_id=_wandb_run_id(args),
        )
        callbacks.append(logger)
        if logger.run_id:
            callbacks.append(_RunIdWriter(Path(args.out), logger.run_id))
    if args.spectrum_every is not None:
        spectra = EpochSpectra(args.out, args.spectrum_every, _held_out(args), logger=logger)
        callbacks.append(spectra)
    try:
        result = train_network(
            model=args.model,
            dataset=args.dataset,
            data_path=args.data_path,
            download=args.download,
            subset=args.subset,
            epochs=args.epochs,
            optimizer=args.optimizer,
            optimizer_kwargs=opt_kwargs,
            batch_size=args.batch_size,
            schedule=args.schedule,
            swa=args.swa,
            swa_start=args.swa_start,
            swa_lr=args.swa_lr,
            checkpoint_dir=args.out,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            resume=args.resume,
            overwrite=args.overwrite,
            seed=args.seed,
            callbacks=callbacks,
        )
    except TrainingInterrupted as err:
        hint = f"; continue with --resume {err.checkpoint.parent}" if err.checkpoint else ""
        raise TrainingInterrupted(
            f"{err}{hint}",
            signum=err.signum,
            checkpoint=err.checkpoint,
            epochs_done=err.epochs_done,
            batches_done=err.batches_done,
        ) from None
    finally:
        if logger is not None:
            logger.finish()
    last = result.history[-1]
    print(
        f"trained {args.epochs} epochs: train loss {last['train_loss']:.4f}; results in {args.out}"
    )


def run_spectrum(args: argparse.Namespace) -> None:
    """Compute, save and plot a spectrum."""
    from diagnostics.plots import plot_spectrum
    from diagnostics.spectrum import compute_eigenspectrum

    s = _setup(args)
    spectrum = compute_eigenspectrum(
        s.model,
        s.loss_fn,
        s.train,
        curvature=args.curvature,
        lanczos_steps=args.steps,
        num_probes=args.probes,
        bn_mode=args.bn_mode,
        save_eigvec=args.save_eigvec,
        seed=args.seed,
        cache_graphs=args.cache_graphs or None,
    )
    spectrum.save(args.out)
    plot_spectrum(spectrum, path=_png_beside(args.out))
    summary = spectrum.summary()
    print(
        f"{args.curvature} spectrum of {spectrum.num_params:,} parameters: "
        f"lambda_max {summary['lambda_max']:.4g}, lambda_min {summary['lambda_min']:.4g}, "
        f"negative mass {summary['negative_mass']:.3f}; saved {args.out} and "
        f"{_png_beside(args.out)}"
    )


def run_stats(args: argparse.Namespace) -> None:
    """Loss, gradient and curvature statistics as JSON."""
    from diagnostics.statistics import loss_statistics

    s = _setup(args)
    stats = loss_statistics(
        s.model, s.loss_fn, s.train, bn_mode=args.bn_mode, num_probes=args.probes, seed=args.seed
    )
    write_json(args.out, {"format": FORMAT_PREFIX + "stats", **stats.as_dict()})
    print(
        f"loss mean {stats.loss_mean:.4g}, gradient variance {stats.grad_var:.4g}; saved {args.out}"
    )


def run_landscape(args: argparse.Namespace) -> None:
    """Loss along the Ritz vectors of a saved spectrum."""
    from diagnostics.landscape import build_loss_landscape, select_directions
    from diagnostics.plots import plot_landscape
    from diagnostics.spectrum import Spectrum

    spectrum = Spectrum.load(args.spectrum)
    s = _setup(args)
    indices = select_directions(
        spectrum, top=_ranks(args.top, "top"), bottom=_ranks(args.bottom, "bottom")
    )
    landscape = build_loss_landscape(
        s.model,
        s.loss_fn,
        s.train,
        s.test,
        directions=spectrum,
        indices=indices,
        dist=args.dist,
        n_points=args.n_points,
        bn_mode=args.bn_mode,
    )
    landscape.save(args.out)
    plot_landscape(landscape, path=_png_beside(args.out))
    print(
        f"landscape along {len(indices)} Ritz vectors; saved {args.out} and {_png_beside(args.out)}"
    )


def run_diagonal(args: argparse.Namespace) -> None:
    """BackPACK diagonals, compared with a spectrum when one is given."""
    from diagnostics.compare import compare_to_spectrum
    from diagnostics.diagonal import diagonal_approximations
    from diagnostics.plots import plot_spectrum
    from diagnostics.spectrum import Spectrum

    spectrum = Spectrum.load(args.spectrum) if args.spectrum else None
    s = _setup(args)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    diagonals = diagonal_approximations(
        s.model,
        s.loss_fn,
        s.train,
        kinds=kinds,
        bn_mode=args.bn_mode,
        fallback="hutchinson" if args.hutchinson_fallback else None,
        seed=args.seed,
    )
    meta: dict[str, Any] = {"kinds": kinds, "spectrum": args.spectrum}
    if spectrum is not None:
        meta["comparison"] = {k: compare_to_spectrum(d, spectrum) for k, d in diagonals.items()}
        first = kinds[0]
        plot_spectrum(spectrum, diagonal=diagonals[first].numpy(), path=_png_beside(args.out))
    save_npz(args.out, "diagonal", {k: v.double().numpy() for k, v in diagonals.items()}, meta)
    for kind, d in diagonals.items():
        line = f"{kind}: min {float(d.min()):.4g}, max {float(d.max()):.4g}"
        if spectrum is not None:
            line += f", W1 to Lanczos {meta['comparison'][kind]['wasserstein']:.4g}"
        print(line)
    print(f"saved {args.out}")


def _format_of(path: Path) -> str:
    try:
        with np.load(path, allow_pickle=False) as f:
            fmt = str(f["format"]) if "format" in f.files else ""
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz result file ({err}).") from None
    if not fmt.startswith(FORMAT_PREFIX):
        raise ValueError(f"{str(path)!r} is not a lanczos-optim result file (no 'format' key).")
    return fmt[len(FORMAT_PREFIX) :]


def run_plot(args: argparse.Namespace) -> None:
    """Plot a result file according to its kind."""
    from diagnostics import plots

    src = Path(args.input)
    if not src.is_file():
        raise FileNotFoundError(f"{str(src)!r} does not exist.")
    out = Path(args.out) if args.out else _png_beside(src)
    if src.suffix == ".jsonl":
        try:
            history = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(src)!r} is not a stats.jsonl file ({err}).") from None
        plots.plot_training_curves(plots.rows_to_history(history), path=out)
    else:
        kind = _format_of(src)
        if kind == "spectrum":
            from diagnostics.spectrum import Spectrum

            plots.plot_spectrum(Spectrum.load(src), path=out)
        elif kind == "landscape":
            from diagnostics.landscape import Landscape

            plots.plot_landscape(Landscape.load(src), path=out)
        elif kind == "diagonal":
            arrays, meta = load_npz(src, "diagonal")
            first = meta["kinds"][0]
            if meta.get("spectrum"):
                from diagnostics.spectrum import Spectrum

                plots.plot_spectrum(
                    Spectrum.load(meta["spectrum"]), diagonal=arrays[first], path=out
                )
            else:
                plots.plot_spectrum(
                    (arrays[first], np.full(arrays[first].size, 1 / arrays[first].size)), path=out
                )
        else:
            raise ValueError(
                f"{str(src)!r} holds a {kind!r} result; plot takes spectrum, landscape or "
                "diagonal .npz files and training stats.jsonl."
            )
    print(f"saved {out}")


def run_demo(args: argparse.Namespace) -> None:
    """The end-to-end offline demo."""
    from diagnostics.demo import run_demo as demo

    demo(args.out, quick=args.quick, wandb_mode=args.wandb)

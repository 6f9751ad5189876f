"""``lanczos-optim train``: options to a :class:`~diagnostics.training.TrainConfig`, then training.

Every option is checked (:func:`train_config`, the spectrum settings, the output folder)
before W&B is set up or any file is written. With ``--resume`` the run's configuration comes
from its checkpoint (:func:`~diagnostics.training.config.resume_config`): options given again
must equal it, except those that are safe to change (``--epochs`` to extend the run, output,
checkpoint, W&B and spectrum options, ``--quiet``), so the command printed after an
interruption, ``lanczos-optim train --resume FOLDER``, continues the run as it was started.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import torch

from diagnostics.results import atomic_write
from diagnostics.training.config import TrainConfig

__all__ = ["TRAIN_OPTIONS", "run_train", "train_config"]

#: ``argparse`` destination -> :class:`TrainConfig` field of the options that configure the run.
TRAIN_OPTIONS = {
    "model": "model", "dataset": "dataset", "data_path": "data_path", "download": "download",
    "subset": "subset", "epochs": "epochs", "optimizer": "optimizer", "lr": "lr",
    "batch_size": "batch_size", "schedule": "schedule", "swa": "swa", "swa_start": "swa_start",
    "swa_lr": "swa_lr", "out": "checkpoint_dir", "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints", "overwrite": "overwrite", "seed": "seed",
}  # fmt: skip
_FLAGS = {"optimizer_kwargs": "--opt", "checkpoint_dir": "--out"}
_WANDB_ID_FILE = "wandb-run-id.txt"


def _flag(field: str) -> str:
    """The command-line option of a :class:`TrainConfig` field."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration from the options given (``None``: not given), checked.

    Raises:
        ValueError, TypeError, FileNotFoundError: A bad option, named as on the command line.
    """
    from diagnostics.training._setup import find_resume
    from diagnostics.training.config import resume_config
    from diagnostics.training.optimizers import check_hyperparameter_types, resolve_optimizer

    given = {field: getattr(args, dest) for dest, field in TRAIN_OPTIONS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if args.opt:
        given["optimizer_kwargs"] = dict(args.opt)
    given["progress"] = not args.quiet
    if args.resume is None:
        cls = resolve_optimizer(given.get("optimizer", TrainConfig.optimizer))
        check_hyperparameter_types(cls, dict(args.opt), prefix="--opt ")
        return TrainConfig(**given)
    return resume_config(find_resume(args.resume), given, spell=_flag)  # type: ignore[arg-type]


def _check_spectra(args: argparse.Namespace) -> None:
    from diagnostics.training.epoch_spectra import check_spectrum_settings
    from lanczos_optim import check_lanczos_steps

    if args.spectrum_every is not None:
        try:
            check_lanczos_steps(args.spectrum_steps)
        except ValueError as err:
            raise ValueError(f"--spectrum-steps: {err}") from None
        check_spectrum_settings(args.spectrum_every, "hessian", args.spectrum_steps, "eval",
                                name="--spectrum-every")  # fmt: skip


def _test_split(config: TrainConfig) -> Any:
    """The data set's test split; the epoch spectra take their batches from it.

    Loaded before W&B or any file, so that missing data files (a wrong ``--data-path``) are
    reported first.
    """
    from diagnostics.training import load_dataset

    return load_dataset(
        config.dataset, train=False, root=config.data_path, download=config.download
    )  # type: ignore[arg-type]


def _held_out(data: Any, n: int = 512) -> Any:
    """Batches of up to ``n`` samples of the test split ``data`` (for the epoch spectra)."""
    from diagnostics.cli._setup import batches

    n = min(n, len(data))
    return batches(torch.utils.data.Subset(data, range(n)), min(256, n))


def _wandb_run_id(folder: Path) -> str | None:
    """The W&B run id stored in the run folder of ``--resume`` (``None``: a new run)."""
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


def _logger(args: argparse.Namespace, config: TrainConfig, resume: Path | None) -> Any:
    """The W&B logger (``None`` with ``--wandb disabled``); its config: the run's options."""
    from diagnostics.training.optimizers import resolve_hyperparameters
    from diagnostics.wandb_logger import WandbLogger

    if args.wandb == "disabled":
        return None
    opt_kwargs = resolve_hyperparameters(config.optimizer, config.optimizer_kwargs, config.lr)
    options = {field: getattr(config, field) for field in TRAIN_OPTIONS.values()}
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    extra = {"spectrum_every": args.spectrum_every, "spectrum_steps": args.spectrum_steps}
    return WandbLogger(
        name=f"{config.model}-{config.optimizer}",
        config=options | extra | {"opt": opt_kwargs, "lr": opt_kwargs.get("lr")},
        mode=args.wandb,
        directory=config.checkpoint_dir,
        run_id=_wandb_run_id(resume.parent) if resume is not None else None,
    )


def _callbacks(
    args: argparse.Namespace, config: TrainConfig, logger: Any, test_split: Any
) -> list[Any]:
    from diagnostics.training import EpochSpectra

    callbacks: list[Any] = []
    if logger is not None:
        callbacks.append(logger)
        if logger.run_id:
            callbacks.append(_RunIdWriter(Path(config.checkpoint_dir), logger.run_id))  # type: ignore[arg-type]
    if args.spectrum_every is not None:
        data = _held_out(test_split)
        every, steps = args.spectrum_every, args.spectrum_steps
        spectra = EpochSpectra(
            config.checkpoint_dir, every, data, lanczos_steps=steps, logger=logger
        )
        callbacks.append(spectra)
    return callbacks


def _continue_command(args: argparse.Namespace, folder: Path) -> str:
    """The options that continue an interrupted run, quoted for a shell.

    The run's folder, and the options its checkpoints do not record (W&B mode, epoch spectra).
    """
    words = ["--resume", str(folder)]
    if args.wandb is not None:
        words += ["--wandb", args.wandb]
    if args.spectrum_every is not None:
        words += ["--spectrum-every", str(args.spectrum_every)]
        words += ["--spectrum-steps", str(args.spectrum_steps)]
    return " ".join(shlex.quote(w) for w in words)


def run_train(args: argparse.Namespace) -> None:
    """Train a network; W&B logging unless ``--wandb disabled``; spectra saved under --out."""
    from diagnostics.training import TrainingInterrupted
    from diagnostics.training._setup import ResultsExistError, find_resume, prepare_folder
    from diagnostics.training.harness import STATS_FILENAME, train_network

    if args.out is None:
        resume = Path(args.resume) if args.resume else None
        args.out = str(resume if resume.is_dir() else resume.parent) if resume else "results/train"
    config = train_config(args)
    _check_spectra(args)
    resume_path = find_resume(config.resume)
    test_split = _test_split(config)
    try:  # before W&B writes into the folder
        prepare_folder(config.checkpoint_dir, resume_path, config.overwrite, STATS_FILENAME)
    except ResultsExistError as err:
        raise ResultsExistError(err.folder, "--resume", "--overwrite") from None
    logger = _logger(args, config, resume_path)
    try:
        result = train_network(config, callbacks=_callbacks(args, config, logger, test_split))
    except TrainingInterrupted as err:
        folder = err.checkpoint.parent if err.checkpoint else None
        hint = f"; continue with {_continue_command(args, folder)}" if folder else ""
        raise TrainingInterrupted(
            f"{err}{hint}", signum=err.signum, checkpoint=err.checkpoint,
            epochs_done=err.epochs_done, batches_done=err.batches_done,
        ) from None  # fmt: skip
    finally:
        if logger is not None:
            logger.finish()
    loss = result.history[-1]["train_loss"]
    print(f"trained {config.epochs} epochs: train loss {loss:.4f}; results in {args.out}")

"""diagnostics: what the loss surface of a network looks like, built on :mod:`lanczos_optim`.

Spectra and densities, variance statistics, eigenvector landscapes, BackPACK diagonal
comparisons, random matrices, plots, result files, W&B logging, the training harness and the
``lanczos-optim`` command line. BackPACK and W&B are imported only when used.

The package is laid out in rooms, each importing only from the ones below it:

- :mod:`diagnostics.cli` — the command line and the demo;
- :mod:`diagnostics.wandb_logger` — Weights & Biases logging;
- :mod:`diagnostics.training` — harness, loop, checkpoints, schedules, models, data sets;
- :mod:`diagnostics.plots` — every figure;
- :mod:`diagnostics.analysis` — spectra, statistics, landscapes, diagonals, random matrices;
- :mod:`diagnostics.results` — result files and provenance.

Every public name of the rooms is re-exported here.
"""

from diagnostics.analysis import (
    KINDS,
    Landscape,
    LossStatistics,
    Spectrum,
    UnsupportedModelError,
    build_loss_landscape,
    compare_to_spectrum,
    compute_eigenspectrum,
    diagonal_approximations,
    hutchinson_diagonal,
    loss_statistics,
    marchenko_pastur,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_support,
    select_directions,
    semicircle_cdf,
    semicircle_density,
    synthetic_spectrum,
    wigner,
)
from diagnostics.cli import run_demo
from diagnostics.plots import (
    plot_density,
    plot_landscape,
    plot_landscape_2d,
    plot_runs,
    plot_spectrum,
    plot_statistics,
    plot_training_curves,
    rows_to_history,
    spectrum_title,
)
from diagnostics.training import (
    DATASETS,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    VGG16,
    Callback,
    EpochSpectra,
    PreResNet,
    TrainConfig,
    TrainingInterrupted,
    TrainingStep,
    TrainResult,
    build_model,
    build_optimizer,
    build_schedule,
    dataset_info,
    load_checkpoint,
    load_dataset,
    mlp,
    read_checkpoint,
    save_checkpoint,
    small_cnn,
    train_network,
    train_step,
)
from diagnostics.wandb_logger import WandbLogger, resolve_wandb_mode

__all__ = [
    # spectra
    "Spectrum",
    "compute_eigenspectrum",
    # statistics
    "LossStatistics",
    "loss_statistics",
    # landscapes
    "Landscape",
    "build_loss_landscape",
    "select_directions",
    # diagonal approximations
    "KINDS",
    "UnsupportedModelError",
    "compare_to_spectrum",
    "diagonal_approximations",
    "hutchinson_diagonal",
    # random matrices
    "marchenko_pastur",
    "marchenko_pastur_atom",
    "marchenko_pastur_cdf",
    "marchenko_pastur_density",
    "marchenko_pastur_support",
    "semicircle_cdf",
    "semicircle_density",
    "synthetic_spectrum",
    "wigner",
    # plots
    "plot_density",
    "plot_landscape",
    "plot_landscape_2d",
    "plot_runs",
    "plot_spectrum",
    "plot_statistics",
    "plot_training_curves",
    "spectrum_title",
    "rows_to_history",
    # training harness
    "Callback",
    "EpochSpectra",
    "DATASETS",
    "MODELS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "TrainingStep",
    "VGG16",
    "PreResNet",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "dataset_info",
    "load_checkpoint",
    "load_dataset",
    "mlp",
    "read_checkpoint",
    "save_checkpoint",
    "small_cnn",
    "TrainingInterrupted",
    "train_network",
    "train_step",
    # logging and the demo
    "WandbLogger",
    "resolve_wandb_mode",
    "run_demo",
]

"""diagnostics: what the loss surface of a network looks like, built on :mod:`lanczos_optim`.

Spectra and densities, variance statistics, eigenvector landscapes, BackPACK diagonal
comparisons, random matrices, plots, result files, W&B logging, the training harness and the
``lanczos-optim`` command line. BackPACK and W&B are imported only when used.
"""

from diagnostics._interrupt import TrainingInterrupted
from diagnostics.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from diagnostics.compare import compare_to_spectrum
from diagnostics.datasets import DATASETS, dataset_info, load_dataset
from diagnostics.demo import run_demo
from diagnostics.diagonal import (
    KINDS,
    UnsupportedModelError,
    diagonal_approximations,
    hutchinson_diagonal,
)
from diagnostics.epoch_spectra import EpochSpectra
from diagnostics.landscape import Landscape, build_loss_landscape, select_directions
from diagnostics.models import MODELS, VGG16, PreResNet, build_model, mlp, small_cnn
from diagnostics.optimizers import OPTIMIZERS, build_optimizer, train_step
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
from diagnostics.random_matrices import (
    marchenko_pastur,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_support,
    semicircle_cdf,
    semicircle_density,
    synthetic_spectrum,
    wigner,
)
from diagnostics.schedules import SCHEDULES, build_schedule
from diagnostics.spectrum import Spectrum, compute_eigenspectrum
from diagnostics.statistics import LossStatistics, loss_statistics
from diagnostics.training import Callback, TrainingStep, TrainResult, train_network
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

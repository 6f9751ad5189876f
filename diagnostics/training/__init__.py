"""The training harness: loop, checkpoints, schedules, models, data sets and optimisers.

:func:`train_network` trains a model, configured by a :class:`TrainConfig`, with any of
:data:`OPTIMIZERS` or the second-order peers of :data:`PEER_OPTIMIZERS` (:class:`KFAC` among
them), checkpoints every epoch and on SIGINT/SIGTERM, resumes bit for bit, and
calls :class:`Callback` hooks such as :class:`EpochSpectra` and the W&B logger.
"""

from diagnostics.training._interrupt import TrainingInterrupted
from diagnostics.training._kfac import KFAC
from diagnostics.training._loop import Callback, TrainingStep
from diagnostics.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from diagnostics.training.config import TrainConfig, resume_config
from diagnostics.training.datasets import DATASETS, dataset_info, load_dataset
from diagnostics.training.epoch_spectra import EpochSpectra
from diagnostics.training.harness import TrainResult, train_network
from diagnostics.training.models import MODELS, VGG16, PreResNet, build_model, mlp, small_cnn
from diagnostics.training.optimizers import (
    OPTIMIZERS,
    PEER_OPTIMIZERS,
    build_optimizer,
    train_step,
)
from diagnostics.training.schedules import SCHEDULES, build_schedule

__all__ = [
    "Callback",
    "DATASETS",
    "EpochSpectra",
    "KFAC",
    "MODELS",
    "OPTIMIZERS",
    "PEER_OPTIMIZERS",
    "PreResNet",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "TrainingStep",
    "VGG16",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "dataset_info",
    "load_checkpoint",
    "load_dataset",
    "mlp",
    "read_checkpoint",
    "resume_config",
    "save_checkpoint",
    "small_cnn",
    "train_network",
    "train_step",
]

"""The pieces of one training epoch: the step record, the callback base, epochs, evaluation."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diagnostics._io import atomic_write
from diagnostics.optimizers import train_step

__all__ = ["Callback", "TrainingStep"]

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainingStep:
    """What the harness passes to ``on_step`` after every optimiser step.

    Attributes:
        epoch: The epoch in progress, counted from 1.
        step: Optimiser steps taken in the whole run so far (this one included), from 1.
        batch: Index of the batch within the epoch, from 0.
        loss: Mean loss of the batch before the update.
        accuracy: Accuracy of the batch before the update (NaN without class labels).
        lr: Learning rate of the first parameter group during this step.
        batch_size: Samples in the batch.
        optimizer_info: ``optimizer.last_info`` after the step (a
            :class:`lanczos_optim.optimizers.StepInfo` for our optimisers, with ``to_dict()``),
            or ``None`` for optimisers without it.
        model: The network (in train mode).
        optimizer: The optimiser.
    """

    epoch: int
    step: int
    batch: int
    loss: float
    accuracy: float
    lr: float
    batch_size: int
    optimizer_info: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer


class Callback:
    """Base class with no-op hooks; subclassing it is optional (any object with the hooks works)."""

    def on_step(self, step: TrainingStep) -> None:
        """Called after every optimiser step."""

    def on_epoch_end(
        self,
        epoch: int,
        metrics: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Called after every epoch with its row of the history (epoch counted from 1)."""

    def on_train_end(self, result: Any) -> None:
        """Called once with the :class:`~diagnostics.training.TrainResult`."""


def _hooks(callbacks: Sequence[object], name: str) -> list[Callable[..., Any]]:
    return [hook for cb in callbacks if callable(hook := getattr(cb, name, None))]


def _correct(outputs: Tensor, targets: Tensor) -> float:
    if outputs.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
        return math.nan
    return float((outputs.argmax(dim=1) == targets).sum())


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    loss_fn: LossFn,
    device: torch.device,
    *,
    epoch: int,
    global_step: int,
    callbacks: Sequence[object],
    progress: bool,
) -> tuple[float, float, int]:
    """Train one epoch; return the sample-weighted mean loss, accuracy, and the new step count."""
    model.train()
    on_step = _hooks(callbacks, "on_step")
    total_loss, total_correct, seen = 0.0, 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    for index, (inputs, targets) in enumerate(bar):
        inputs, targets = inputs.to(device), targets.to(device)
        lr = float(optimizer.param_groups[0]["lr"])
        loss, outputs = train_step(model, optimizer, loss_fn, inputs, targets)
        n = int(targets.shape[0])
        loss_value, correct = float(loss), _correct(outputs, targets)
        total_loss += loss_value * n
        total_correct += correct
        seen += n
        global_step += 1
        if on_step:
            record = TrainingStep(
                epoch=epoch,
                step=global_step,
                batch=index,
                loss=loss_value,
                accuracy=correct / n,
                lr=lr,
                batch_size=n,
                optimizer_info=getattr(optimizer, "last_info", None),
                model=model,
                optimizer=optimizer,
            )
            for hook in on_step:
                hook(record)
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    bar.close()
    return total_loss / max(seen, 1), total_correct / max(seen, 1), global_step


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: LossFn, device: torch.device
) -> tuple[float, float]:
    """Sample-weighted mean loss and accuracy of ``model`` in eval mode over ``loader``."""
    model.eval()
    total_loss, total_correct, seen = 0.0, 0.0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = model(inputs)
        n = int(targets.shape[0])
        total_loss += float(loss_fn(outputs, targets)) * n
        total_correct += _correct(outputs, targets)
        seen += n
    return total_loss / max(seen, 1), total_correct / max(seen, 1)


def write_stats(path: str | os.PathLike[str], history: Sequence[dict[str, Any]]) -> Path:
    """Rewrite the JSON-lines statistics file atomically (one object per epoch)."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    return atomic_write(path, lambda handle: handle.write(text.encode()))

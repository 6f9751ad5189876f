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

from diagnostics.results import atomic_write
from diagnostics.training._rng_state import capture_rng_state, restore_rng_state
from diagnostics.training.optimizers import train_step

__all__ = ["Callback", "EpochTotals", "TrainingStep"]

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

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from diagnostics.training import train_network
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
        >>> data = TensorDataset(x, y)
        >>> steps = []
        >>> class Steps:  # any object with the hook works
        ...     def on_step(self, step: TrainingStep):
        ...         steps.append((step.epoch, step.step, step.batch, step.batch_size))
        >>> _ = train_network(
        ...     model=torch.nn.Linear(4, 3), dataset=data, epochs=1, batch_size=32, progress=False,
        ...     callbacks=[Steps()],
        ... )
        >>> steps
        [(1, 1, 0, 32), (1, 2, 1, 32)]
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
    """Base class with no-op hooks; subclassing it is optional (any object with the hooks works).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from diagnostics.training import train_network
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
        >>> data = TensorDataset(x, y)
        >>> class Epochs(Callback):
        ...     def __init__(self):
        ...         self.seen = []
        ...     def on_epoch_end(self, epoch, metrics, model, optimizer):
        ...         self.seen.append((epoch, metrics["epoch"]))
        >>> cb = Epochs()
        >>> _ = train_network(
        ...     model=torch.nn.Linear(4, 3), dataset=data, epochs=2, batch_size=32, progress=False,
        ...     callbacks=[cb],
        ... )
        >>> cb.seen
        [(1, 1), (2, 2)]
    """

    def on_train_start(self, config: dict[str, Any]) -> None:
        """Called once, after every argument is checked, with the run's resolved configuration.

        ``config`` is the checkpoint's ``meta``: model, data set, optimiser with the keyword
        arguments and learning rate actually used, schedule, epochs, ... and ``resumed_from``
        (the checkpoint path or ``None``).
        """

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
        """Called once with the :class:`~diagnostics.training.harness.TrainResult`."""

    def on_interrupt(self, interrupted: Any) -> None:
        """Called on SIGINT/SIGTERM after the progress is saved, before training raises.

        ``interrupted`` is the :class:`~diagnostics.TrainingInterrupted` about to be
        raised (``signal_name``, ``checkpoint``, ``epochs_done``, ``batches_done``).
        """


def _hooks(callbacks: Sequence[object], name: str) -> list[Callable[..., Any]]:
    return [hook for cb in callbacks if callable(hook := getattr(cb, name, None))]


def _correct(outputs: Tensor, targets: Tensor) -> float:
    if outputs.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
        return math.nan
    return float((outputs.argmax(dim=1) == targets).sum())


@dataclass
class EpochTotals:
    """Running sums of one epoch (saved in a mid-epoch checkpoint to continue it)."""

    loss_sum: float = 0.0
    correct_sum: float = 0.0
    seen: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Sample-weighted mean loss so far."""
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        """Accuracy so far."""
        return self.correct_sum / max(self.seen, 1)


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
    totals: EpochTotals | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[EpochTotals, int, bool]:
    """Train one epoch; return its totals, the new step count and whether ``stop()`` ended it.

    With ``totals`` of an interrupted epoch, its first ``totals.batches`` batches are drawn from
    the loader (same order, no training) and skipped, and the random state is then put back to
    the checkpoint's. ``stop()`` is polled after every batch.
    """
    model.train()
    on_step = _hooks(callbacks, "on_step")
    totals = EpochTotals() if totals is None else totals
    batches = iter(loader)
    if totals.batches:
        # Draw the batches trained before the interruption (same order) without training, then
        # put back the random state of the moment of the interruption: data pipelines that draw
        # random numbers (augmentation) must not draw the skipped batches' numbers twice.
        rng = capture_rng_state()
        for _ in range(totals.batches):
            next(batches)
        restore_rng_state(rng)
    bar = tqdm(  # disable=None: bars on a terminal only, never in logs and pipes
        batches, desc=f"epoch {epoch}", unit="batch", leave=False,
        disable=None if progress else True, initial=totals.batches, total=len(loader),
    )  # fmt: skip
    stopped = False
    for inputs, targets in bar:
        inputs, targets = inputs.to(device), targets.to(device)
        lr = float(optimizer.param_groups[0]["lr"])
        loss, outputs = train_step(model, optimizer, loss_fn, inputs, targets)
        n = int(targets.shape[0])
        loss_value, correct = float(loss), _correct(outputs, targets)
        totals.loss_sum += loss_value * n
        totals.correct_sum += correct
        totals.seen += n
        totals.batches += 1
        global_step += 1
        if on_step:
            record = TrainingStep(
                epoch=epoch,
                step=global_step,
                batch=totals.batches - 1,
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
        if stop():
            stopped = True
            break
    bar.close()
    return totals, global_step, stopped


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

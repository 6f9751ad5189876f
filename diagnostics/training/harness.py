"""The training harness: ``train_network`` (the paper's appendix C), with SWA, checkpoints, resume.

**Output folder** (``checkpoint_dir``): ``stats.jsonl`` (one JSON object per epoch, the whole
file rewritten atomically after every epoch) and ``checkpoint-00042.pt`` files every
``checkpoint_every`` epochs (default: every epoch) and after the last one, of which the newest
``keep_checkpoints`` (default 3) are kept (format: :mod:`~diagnostics.training.checkpoint`;
the ``meta`` entry records the model name and keyword arguments, input shape and class count,
the optimiser keyword arguments and learning rate actually used, so the network can be rebuilt with
:func:`diagnostics.build_model`). A folder that already holds results is refused unless
``resume`` or ``overwrite`` is given.

**Interruption.** While training, the first SIGINT (Ctrl-C) or SIGTERM stops after the current
batch: the progress is saved atomically (mid-epoch: ``checkpoint-00004-b00012.pt``, 4 epochs and
12 batches, whose ``meta["partial_epoch"]`` holds the epoch's running sums and the loader's
generator state at the epoch's start; at an epoch's end: that epoch's checkpoint), the
callbacks' ``on_interrupt`` hooks run, and :class:`TrainingInterrupted` (a
``KeyboardInterrupt``) is raised. Resuming from that checkpoint continues the epoch bit for bit.
A second signal raises ``KeyboardInterrupt`` at once.

**History row** (``TrainResult.history``, ``stats.jsonl``, ``on_epoch_end``): ``epoch`` (from 1),
``lr`` (used during the epoch), ``train_loss``, ``train_acc`` (running means over the epoch's
batches, before each update), ``test_loss``, ``test_acc`` (eval mode after the epoch; ``None``
without a test set), ``time`` (seconds).

**Callback protocol.** ``callbacks`` is a sequence of objects with any of these methods
(subclassing :class:`Callback` is optional; missing methods are skipped):

- ``on_train_start(config: dict)`` once, after every argument is checked, with the ``meta`` of
  the checkpoints (resolved optimiser keyword arguments, ...) and ``resumed_from``.
- ``on_step(step: TrainingStep)`` after every optimiser step: epoch, global step, batch loss
  and accuracy, learning rate, ``optimizer_info`` (``optimizer.last_info``: Ritz values,
  products, ... for the Lanczos optimisers; ``None`` otherwise), the model and the optimiser.
- ``on_epoch_end(epoch: int, metrics: dict, model, optimizer)`` after every epoch, before its
  checkpoint is written (so random numbers a callback draws are part of the saved state).
- ``on_train_end(result: TrainResult)`` once at the end.
- ``on_interrupt(interrupted: TrainingInterrupted)`` on SIGINT/SIGTERM, after saving.

**Resume** (``resume=`` a checkpoint or its folder) restores model, optimiser, schedulers, SWA
state, history and every RNG (torch, CUDA, numpy, Python, the loader's shuffling generator), so
with the same arguments a resumed run continues bit for bit where the uninterrupted run would be.

**Stochastic Weight Averaging** (``swa=True``, Izmailov et al. 2018, as in the paper's harness):
the schedule runs over ``swa_start`` epochs (the linear one decays to ``swa_lr``); from epoch
``swa_start`` (counted from 0) on, ``torch.optim.swa_utils.SWALR`` holds ``swa_lr`` and the
weights after every such epoch enter an ``AveragedModel``; at the end its BatchNorm statistics
are recomputed with ``update_bn`` on the training data and it is evaluated.

Example:
    >>> result = train_network(model="mlp", dataset="digits", epochs=3, subset=300, batch_size=32,
    ...                        lr=0.1, optimizer_kwargs={"momentum": 0.9}, progress=False)
    >>> [row["epoch"] for row in result.history], result.history[-1]["test_acc"] > 0.5
    ([1, 2, 3], True)
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diagnostics.training._interrupt import StopRequest, TrainingInterrupted, deferred_signals
from diagnostics.training._loop import (
    Callback,
    EpochTotals,
    TrainingStep,
    _hooks,
    evaluate,
    run_epoch,
    write_stats,
)
from diagnostics.training._setup import (
    ResultsExistError,
    build_schedulers,
    check_arguments,
    check_resume_data,
    clear_results,
    find_resume,
    load_data,
    model_shape,
    plain,
    prepare_folder,
)
from diagnostics.training.checkpoint import (
    checkpoint_name,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from diagnostics.training.models import build_model
from diagnostics.training.optimizers import (
    build_optimizer,
    resolve_hyperparameters,
    resolve_optimizer,
)

__all__ = [
    "STATS_FILENAME",
    "Callback",
    "ResultsExistError",
    "TrainResult",
    "TrainingInterrupted",
    "TrainingStep",
    "train_network",
]

#: Name of the per-epoch statistics file in the output folder.
STATS_FILENAME = "stats.jsonl"
_PARTIAL_KEYS = ("loss_sum", "correct_sum", "seen", "batches", "seconds")
_RESUME_KEYS = ("batch_size", "seed", "schedule", "lr", "epochs", "swa", "swa_start", "swa_lr")


@dataclass
class TrainResult:
    """What :func:`train_network` returns.

    Attributes:
        model: The trained network (in eval mode).
        optimizer: The optimiser in its final state.
        history: One dict per epoch (see the module docstring).
        swa_model: The averaged network (``AveragedModel.module``) with SWA, else ``None``.
        swa_metrics: ``test_loss``/``test_acc`` of the averaged network (train metrics without
            a test set), else ``None``.
        output_dir: The output folder, or ``None``.
        checkpoints: Checkpoints written by this run.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from diagnostics.training import train_network
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
        >>> data = TensorDataset(x, y)
        >>> import tempfile
        >>> res = train_network(
        ...     model=torch.nn.Linear(4, 3), dataset=data, epochs=2, batch_size=32, progress=False,
        ...     checkpoint_dir=tempfile.mkdtemp(),
        ... )
        >>> len(res.history), res.model.training, [p.name for p in res.checkpoints]
        (2, False, ['checkpoint-00001.pt', 'checkpoint-00002.pt'])
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: list[dict[str, Any]]
    swa_model: nn.Module | None = None
    swa_metrics: dict[str, float] | None = None
    output_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)


def _warn_if_different(meta: Mapping[str, Any], now: Mapping[str, Any], path: Path) -> None:
    changed = [k for k in _RESUME_KEYS if k in meta and meta[k] != now.get(k)]
    if changed:
        warnings.warn(
            f"Resuming {str(path)!r} with different {', '.join(changed)}: the run will not "
            "reproduce an uninterrupted one.",
            UserWarning,
            stacklevel=3,
        )


def train_network(
    *,
    model: str | nn.Module,
    dataset: str | Dataset,
    epochs: int,
    test_dataset: Dataset | None = None,
    data_path: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    optimizer: str | type[torch.optim.Optimizer] = "sgd",
    optimizer_kwargs: Mapping[str, Any] | None = None,
    lr: float | None = None,
    batch_size: int = 128,
    schedule: str = "linear",
    schedule_kwargs: Mapping[str, float] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    swa: bool = False,
    swa_start: int | None = None,
    swa_lr: float | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    keep_checkpoints: int = 3,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    callbacks: Sequence[object] = (),
    progress: bool = True,
    download: bool = False,
) -> TrainResult:
    r"""Train a network (the paper's ``train_network``), optionally with SWA, checkpoints, resume.

    The learning rate of epoch :math:`t` is :math:`\alpha_0 f(t)` with :math:`f` the chosen
    schedule (:mod:`diagnostics.training.schedules`; the paper's equation 11 by default) and
    :math:`\alpha_0` the optimiser's initial learning rate.

    Args:
        model: A name of :data:`diagnostics.MODELS` or a module (moved to ``device``).
        dataset: A name of :data:`diagnostics.DATASETS` (its test split is the test
            set) or a ``Dataset`` of ``(input, label)`` pairs.
        epochs: The epoch budget :math:`T`.
        test_dataset: Test set when ``dataset`` is a ``Dataset`` (default: none).
        data_path: Folder with the data files (named data sets that need files).
        subset: Train (and test) on a seeded random subset of this many samples.
        model_kwargs: Keyword arguments of :func:`diagnostics.training.models.build_model`.
        optimizer: ``"sgd"``, ``"adam"``, ``"lanczos_newton"``, ``"lanczos_saddle_free"``, any
            ``torch.optim`` class name (``"AdamW"``, ``"RMSprop"``, ...) or an optimiser class.
        optimizer_kwargs: The optimiser's keyword arguments (``lr`` may be given here). Missing
            ones take :func:`diagnostics.training.optimizers.default_hyperparameters` (SGD: lr 0.05,
            momentum 0.9; Adam: lr 1e-3; others their own); ``meta`` records what was used.
        lr: Initial learning rate :math:`\alpha_0` (or in ``optimizer_kwargs``, not both).
        batch_size: Training batch size.
        schedule: ``"linear"`` (equation 11), ``"cosine"`` or ``"constant"``.
        schedule_kwargs: ``ratio`` of the linear schedule (default 0.01, or ``swa_lr/lr`` with
            SWA), ``min_ratio`` of the cosine one.
        loss_fn: ``loss_fn(outputs, targets)``, a batch mean (default: cross-entropy).
        swa: Use Stochastic Weight Averaging.
        swa_start: First averaged epoch, counted from 0 (default ``int(0.75 * epochs)``).
        swa_lr: Learning rate during averaging (default :math:`0.1\,\alpha_0`).
        checkpoint_dir: Output folder (created if missing); ``None`` writes no files.
        checkpoint_every: Save a checkpoint every this many epochs (0: only after the last).
        keep_checkpoints: Keep only this many newest checkpoints in the folder (0: all).
        resume: A checkpoint file, or a folder (its latest checkpoint), to continue from.
        overwrite: Allow writing into a folder that already holds results.
        seed: Seeds torch, numpy, Python and the loader's shuffling generator.
        device: Where to train (default: CUDA when available, else CPU).
        callbacks: Objects with ``on_step``/``on_epoch_end``/``on_train_end`` (module docstring).
        progress: Show tqdm progress bars.
        download: Let torchvision download a named data set that is not on disk.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: Unknown model, data set, optimiser or schedule name (the message lists the
            allowed ones), an invalid argument, or a checkpoint that does not fit the run.
        FileNotFoundError: ``data_path``, the data files or the ``resume`` checkpoint missing.
        FileExistsError: ``checkpoint_dir`` holds results and neither ``resume`` nor
            ``overwrite`` is given (a :class:`ResultsExistError`).
        TypeError: A keyword argument the model, optimiser or schedule does not take.
        TrainingInterrupted: SIGINT or SIGTERM arrived; the progress was saved first (module
            docstring). A ``KeyboardInterrupt`` itself.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from diagnostics.training import train_network
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
        >>> data = TensorDataset(x, y)
        >>> res = train_network(
        ...     model=torch.nn.Linear(4, 3), dataset=data, epochs=3, batch_size=16, progress=False,
        ...     optimizer="sgd", lr=0.1,
        ... )
        >>> [row["epoch"] for row in res.history]
        [1, 2, 3]
        >>> bool(res.history[-1]["train_loss"] < res.history[0]["train_loss"])
        True
    """
    check_arguments(locals())
    opt_cls = resolve_optimizer(optimizer)
    resume_path = find_resume(resume)
    check_resume_data(resume_path, dataset, subset)
    out = prepare_folder(checkpoint_dir, resume_path, overwrite, STATS_FILENAME)
    dev = torch.device(device) if device is not None else None
    dev = dev or torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds third-party code drawing from the legacy state
    random.seed(seed)
    train_set, test_set = load_data(dataset, test_dataset, data_path, subset, seed, download)
    input_shape, num_classes = model_shape(dataset, train_set)
    kwargs_m = dict(model_kwargs or {})
    if isinstance(model, nn.Module):
        net = model
    else:
        net = build_model(model, input_shape=input_shape, num_classes=num_classes, **kwargs_m)
    net = net.to(dev)

    kwargs_o = resolve_hyperparameters(opt_cls, optimizer_kwargs, lr)
    opt = build_optimizer(opt_cls, net.parameters(), **kwargs_o)
    lr0 = float(opt.param_groups[0]["lr"])
    scheduler, swa_sched, swa_start, swa_lr, kwargs_s = build_schedulers(
        opt, schedule, schedule_kwargs, epochs, swa, swa_start, swa_lr
    )
    swa_model = AveragedModel(net) if swa else None

    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    eval_bs = max(batch_size, 256)
    train_eval = DataLoader(train_set, batch_size=eval_bs, shuffle=False)
    test_loader = DataLoader(test_set, batch_size=eval_bs) if test_set is not None else None
    loss = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    meta = plain(
        {
            "model": model if isinstance(model, str) else type(model).__name__,
            "model_kwargs": kwargs_m,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "dataset": dataset if isinstance(dataset, str) else type(dataset).__name__,
            "subset": subset,
            "optimizer": optimizer if isinstance(optimizer, str) else opt_cls.__name__,
            "optimizer_kwargs": kwargs_o,
            "lr": lr0,
            "schedule": schedule,
            "schedule_kwargs": kwargs_s,
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "swa": swa,
            "swa_start": swa_start,
            "swa_lr": swa_lr,
        }
    )

    history: list[dict[str, Any]] = []
    start, step, partial = 0, 0, None
    if resume_path is not None:
        ckpt = load_checkpoint(
            resume_path,
            model=net,
            optimizer=opt,
            scheduler=scheduler,
            swa_model=swa_model,
            swa_scheduler=swa_sched,
            generator=generator,
            restore_rng=True,
        )
        _warn_if_different(ckpt["meta"], meta, resume_path)
        history, start = list(ckpt["history"]), int(ckpt["epoch"])
        step = int(ckpt["meta"].get("steps", 0))
        partial = ckpt["meta"].get("partial_epoch")

    if out is not None:  # created only now that every argument has been checked
        if overwrite and not (
            resume_path is not None and resume_path.parent.resolve() == out.resolve()
        ):
            clear_results(out, STATS_FILENAME)  # the old run's files must not stay "latest"
        out.mkdir(parents=True, exist_ok=True)
    result = TrainResult(model=net, optimizer=opt, history=history, output_dir=out)

    def save(done: int, totals: EpochTotals | None = None, state: Tensor | None = None) -> Path:
        extra: dict[str, Any] = {"steps": step}
        batch = 0
        if totals is not None:  # mid-epoch: what continuing the epoch needs
            batch = totals.batches
            extra["partial_epoch"] = {
                **{k: getattr(totals, k) for k in _PARTIAL_KEYS},
                "generator": state,
            }
        path = save_checkpoint(
            out / checkpoint_name(done, batch), model=net, epoch=done, optimizer=opt,
            scheduler=scheduler, swa_model=swa_model, swa_scheduler=swa_sched,
            generator=generator, history=history, meta={**meta, **extra},
        )  # fmt: skip
        result.checkpoints.append(path)
        for gone in prune_checkpoints(out, keep_checkpoints, path):
            if gone in result.checkpoints:
                result.checkpoints.remove(gone)
        return path

    for hook in _hooks(callbacks, "on_train_start"):
        hook({**meta, "resumed_from": str(resume_path) if resume_path is not None else None})
    bar = tqdm(range(start, epochs), desc="training", unit="epoch", disable=not progress)
    with deferred_signals() as request:
        for epoch in bar:
            t0 = time.perf_counter()
            totals = None
            if partial is not None:  # continue the interrupted epoch where it stopped
                generator.set_state(partial["generator"])
                totals = EpochTotals(**{k: partial[k] for k in _PARTIAL_KEYS})
                partial = None
            loader_state = generator.get_state()
            lr_used = float(opt.param_groups[0]["lr"])
            totals, step, _ = run_epoch(
                net, opt, loader, loss, dev, epoch=epoch + 1, global_step=step,
                callbacks=callbacks, progress=progress, totals=totals, stop=request.__bool__,
            )  # fmt: skip
            totals.seconds += time.perf_counter() - t0
            t1 = time.perf_counter()
            if request and totals.batches < len(loader):
                path = save(epoch, totals, loader_state) if out is not None else None
                _interrupt(request, path, epoch, totals.batches, callbacks)
            test_loss, test_acc = (
                evaluate(net, test_loader, loss, dev) if test_loader is not None else (None, None)
            )
            if swa_model is not None and epoch >= swa_start:  # type: ignore[operator]
                swa_model.update_parameters(net)
            if swa_sched is not None and epoch + 1 >= swa_start:  # type: ignore[operator]
                swa_sched.step()
            else:
                scheduler.step()
            row = {
                "epoch": epoch + 1,
                "lr": lr_used,
                "train_loss": totals.loss,
                "train_acc": totals.accuracy,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "time": totals.seconds + (time.perf_counter() - t1),
            }
            history.append(row)
            bar.set_postfix(train_loss=f"{totals.loss:.4f}", refresh=False)
            for hook in _hooks(callbacks, "on_epoch_end"):
                hook(epoch + 1, dict(row), net, opt)
            done, path = epoch + 1, None
            if out is not None:
                write_stats(out / STATS_FILENAME, history)
                due = checkpoint_every > 0 and done % checkpoint_every == 0
                if done == epochs or due or request:
                    path = save(done)
            if request and done < epochs:
                _interrupt(request, path, done, 0, callbacks)
    bar.close()

    if swa_model is not None and int(swa_model.n_averaged) > 0:
        update_bn(train_eval, swa_model, device=dev)
        loader_eval, prefix = (
            (test_loader, "test") if test_loader is not None else (train_eval, "train")
        )
        swa_loss, swa_acc = evaluate(swa_model, loader_eval, loss, dev)
        result.swa_model = swa_model.module
        result.swa_metrics = {f"{prefix}_loss": swa_loss, f"{prefix}_acc": swa_acc}
    net.eval()
    for hook in _hooks(callbacks, "on_train_end"):
        hook(result)
    return result


def _interrupt(
    request: StopRequest, path: Path | None, epochs_done: int, batches: int,
    callbacks: Sequence[object],
) -> None:  # fmt: skip
    """Tell the callbacks, then raise :class:`TrainingInterrupted`."""
    where = f"after {epochs_done} epochs" + (f" and {batches} batches" if batches else "")
    saved = f"; saved {str(path)!r}" if path is not None else "; no output folder, nothing saved"
    err = TrainingInterrupted(
        f"stopped by {signal.Signals(request.signum).name} {where}{saved}",  # type: ignore[arg-type]
        signum=int(request.signum),  # type: ignore[arg-type]
        checkpoint=path,
        epochs_done=epochs_done,
        batches_done=batches,
    )
    for hook in _hooks(callbacks, "on_interrupt"):
        try:
            hook(err)
        except Exception as hook_err:  # e.g. W&B unreachable: the checkpoint is saved anyway
            warnings.warn(
                f"on_interrupt hook {hook!r} failed ({type(hook_err).__name__}: {hook_err}); "
                "the interruption is reported regardless.",
                RuntimeWarning,
                stacklevel=2,
            )
    raise err

"""The training harness: ``train_network`` (the paper's appendix C), with SWA, checkpoints, resume.

**Configuration**: a :class:`~diagnostics.training.config.TrainConfig` (or its fields as
keyword arguments); see there for every option and its default.

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

**Layout.** :func:`train_network` reads top to bottom: check, build the run
(:func:`_build_run`: data, model, optimiser, schedulers, loaders, ``meta``), restore a checkpoint
(:func:`_restore`), then :func:`_train_epochs` (one :func:`_epoch` after another, each followed
by :func:`_end_epoch`: evaluation, SWA, schedule, history, hooks, checkpoint) and :func:`_finish`.

Example:
    >>> config = TrainConfig(model="mlp", dataset="digits", epochs=3, subset=300, batch_size=32,
    ...                      lr=0.1, optimizer_kwargs={"momentum": 0.9}, progress=False)
    >>> result = train_network(config)
    >>> [row["epoch"] for row in result.history], result.history[-1]["test_acc"] > 0.5
    ([1, 2, 3], True)
"""

from __future__ import annotations

import random
import signal
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader
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
    check_callbacks,
    check_partial_epoch,
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
from diagnostics.training.config import TrainConfig
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
    "TrainConfig",
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


@dataclass
class _Run:
    """Everything built from a :class:`TrainConfig`, and the progress of the run."""

    config: TrainConfig
    net: nn.Module
    opt: torch.optim.Optimizer
    scheduler: Any
    swa_sched: Any
    swa_model: AveragedModel | None
    swa_start: int | None
    generator: torch.Generator
    loader: DataLoader
    train_eval: DataLoader
    test_loader: DataLoader | None
    loss: Callable[[Tensor, Tensor], Tensor]
    device: torch.device
    meta: dict[str, Any]
    out: Path | None
    callbacks: Sequence[object]
    result: TrainResult = field(init=False)
    step: int = 0
    start: int = 0
    lr_used: float = 0.0
    partial: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.result = TrainResult(
            model=self.net, optimizer=self.opt, history=[], output_dir=self.out
        )


def train_network(
    config: TrainConfig | None = None,
    /,
    *,
    callbacks: Sequence[object] = (),
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> TrainResult:
    r"""Train a network (the paper's ``train_network``), optionally with SWA, checkpoints, resume.

    The learning rate of epoch :math:`t` is :math:`\alpha_0 f(t)` with :math:`f` the chosen
    schedule (:mod:`diagnostics.training.schedules`; the paper's equation 11 by default) and
    :math:`\alpha_0` the optimiser's initial learning rate.

    Args:
        config: The run's :class:`~diagnostics.training.config.TrainConfig` (model, data,
            optimiser, schedule, SWA, checkpoints, resume, seed, ...).
        callbacks: Objects with ``on_step``/``on_epoch_end``/``on_train_end`` (module docstring).
        loss_fn: ``loss_fn(outputs, targets)``, a batch mean (default: cross-entropy).
        device: Where to train (default: CUDA when available, else CPU).
        **options: Fields of :class:`TrainConfig`, instead of ``config`` or replacing its values
            (``train_network(model="mlp", dataset="digits", epochs=3)`` works as before).

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
    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = replace(config, **options)
    check_callbacks(callbacks)
    resume_path = find_resume(config.resume)
    check_resume_data(resume_path, config.dataset, config.subset)
    check_partial_epoch(resume_path, config.batch_size)
    out = prepare_folder(config.checkpoint_dir, resume_path, config.overwrite, STATS_FILENAME)
    run = _build_run(config, callbacks, loss_fn, device, out)
    if resume_path is not None:
        _restore(run, resume_path)
    _prepare_output(run, resume_path)
    for hook in _hooks(callbacks, "on_train_start"):
        hook({**run.meta, "resumed_from": str(resume_path) if resume_path is not None else None})
    _train_epochs(run)
    _finish(run)
    return run.result


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds third-party code drawing from the legacy state
    random.seed(seed)


def _build_run(
    config: TrainConfig,
    callbacks: Sequence[object],
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
    device: str | torch.device | None,
    out: Path | None,
) -> _Run:
    """Data, model, optimiser, schedulers and loaders of the run, seeded by ``config.seed``."""
    c = config
    dev = torch.device(device) if device is not None else None
    dev = dev or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _seed_everything(c.seed)
    train_set, test_set = load_data(c.dataset, c.test_dataset, c.data_path, c.subset, c.seed,
                                    c.download)  # fmt: skip
    input_shape, num_classes = model_shape(c.dataset, train_set)
    net = c.model
    if not isinstance(net, nn.Module):
        net = build_model(
            net, input_shape=input_shape, num_classes=num_classes, **dict(c.model_kwargs or {})
        )
    net = net.to(dev)
    opt_cls = resolve_optimizer(c.optimizer)  # type: ignore[arg-type]
    kwargs_o = resolve_hyperparameters(opt_cls, c.optimizer_kwargs, c.lr)
    opt = build_optimizer(opt_cls, net.parameters(), model=net, **kwargs_o)
    scheduler, swa_sched, swa_start, swa_lr, kwargs_s = build_schedulers(
        opt, c.schedule, c.schedule_kwargs, c.epochs, c.swa, c.swa_start, c.swa_lr
    )
    generator = torch.Generator().manual_seed(c.seed)
    eval_bs = max(c.batch_size, 256)
    resolved = {"input_shape": list(input_shape), "num_classes": num_classes,
                "optimizer_kwargs": kwargs_o, "lr": float(opt.param_groups[0]["lr"]),
                "schedule_kwargs": kwargs_s, "swa_start": swa_start, "swa_lr": swa_lr}  # fmt: skip
    meta = _meta(c, opt_cls, resolved)
    return _Run(
        config=c, net=net, opt=opt, scheduler=scheduler, swa_sched=swa_sched,
        swa_model=AveragedModel(net) if c.swa else None, swa_start=swa_start, generator=generator,
        loader=DataLoader(train_set, batch_size=c.batch_size, shuffle=True, generator=generator),
        train_eval=DataLoader(train_set, batch_size=eval_bs, shuffle=False),
        test_loader=DataLoader(test_set, batch_size=eval_bs) if test_set is not None else None,
        loss=loss_fn if loss_fn is not None else nn.CrossEntropyLoss(), device=dev,
        meta=meta, out=out, callbacks=callbacks,
    )  # fmt: skip


def _meta(c: TrainConfig, opt_cls: type, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The run's resolved configuration, as the checkpoints record it (plain values only)."""
    return plain(
        {
            "model": c.model if isinstance(c.model, str) else type(c.model).__name__,
            "model_kwargs": dict(c.model_kwargs or {}),
            "input_shape": resolved["input_shape"],
            "num_classes": resolved["num_classes"],
            "dataset": c.dataset if isinstance(c.dataset, str) else type(c.dataset).__name__,
            "subset": c.subset,
            "optimizer": c.optimizer if isinstance(c.optimizer, str) else opt_cls.__name__,
            "optimizer_kwargs": resolved["optimizer_kwargs"],
            "lr": resolved["lr"],
            "schedule": c.schedule,
            "schedule_kwargs": resolved["schedule_kwargs"],
            "epochs": c.epochs,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "swa": c.swa,
            "swa_start": resolved["swa_start"],
            "swa_lr": resolved["swa_lr"],
            "checkpoint_every": c.checkpoint_every,
            "keep_checkpoints": c.keep_checkpoints,
            "data_path": None if c.data_path is None else str(Path(c.data_path).resolve()),
        }
    )


def _warn_if_different(meta: Mapping[str, Any], now: Mapping[str, Any], path: Path) -> None:
    changed = [k for k in _RESUME_KEYS if k in meta and meta[k] != now.get(k)]
    if changed:
        warnings.warn(
            f"Resuming {str(path)!r} with different {', '.join(changed)}: the run will not "
            "reproduce an uninterrupted one.",
            UserWarning,
            stacklevel=4,
        )


def _restore(run: _Run, path: Path) -> None:
    """Load the checkpoint into the run: weights, optimiser, schedulers, RNGs, history."""
    ckpt = load_checkpoint(
        path, model=run.net, optimizer=run.opt, scheduler=run.scheduler,
        swa_model=run.swa_model, swa_scheduler=run.swa_sched, generator=run.generator,
        restore_rng=True,
    )  # fmt: skip
    _warn_if_different(ckpt["meta"], run.meta, path)
    run.result.history.extend(ckpt["history"])
    run.start = int(ckpt["epoch"])
    run.step = int(ckpt["meta"].get("steps", 0))
    run.partial = ckpt["meta"].get("partial_epoch")


def _prepare_output(run: _Run, resume_path: Path | None) -> None:
    """Create the output folder now that every argument has been checked."""
    out = run.out
    if out is None:
        return
    own = resume_path is not None and resume_path.parent.resolve() == out.resolve()
    if run.config.overwrite and not own:
        clear_results(out, STATS_FILENAME)  # the old run's files must not stay "latest"
    out.mkdir(parents=True, exist_ok=True)


def _save(
    run: _Run, done: int, totals: EpochTotals | None = None, state: Tensor | None = None
) -> Path:
    """Write a checkpoint after ``done`` epochs (and ``totals.batches`` batches mid-epoch)."""
    assert run.out is not None
    extra: dict[str, Any] = {"steps": run.step}
    batch = 0
    if totals is not None:  # mid-epoch: what continuing the epoch needs
        batch = totals.batches
        extra["partial_epoch"] = {**{k: getattr(totals, k) for k in _PARTIAL_KEYS},
                                  "generator": state}  # fmt: skip
    path = save_checkpoint(
        run.out / checkpoint_name(done, batch), model=run.net, epoch=done, optimizer=run.opt,
        scheduler=run.scheduler, swa_model=run.swa_model, swa_scheduler=run.swa_sched,
        generator=run.generator, history=run.result.history, meta={**run.meta, **extra},
    )  # fmt: skip
    saved = run.result.checkpoints
    saved.append(path)
    for gone in prune_checkpoints(run.out, run.config.keep_checkpoints, path):
        if gone in saved:
            saved.remove(gone)
    return path


def _train_epochs(run: _Run) -> None:
    """The epochs from ``run.start`` to ``config.epochs``; SIGINT/SIGTERM stop after a batch."""
    progress = None if run.config.progress else True  # tqdm: None shows bars on a terminal only
    bar = tqdm(range(run.start, run.config.epochs), desc="training", unit="epoch", disable=progress)
    with deferred_signals() as request:
        for epoch in bar:
            totals = _epoch(run, epoch, request)
            _end_epoch(run, epoch, totals)
            bar.set_postfix(train_loss=f"{totals.loss:.4f}", refresh=False)
            done, path = epoch + 1, None
            if run.out is not None:
                write_stats(run.out / STATS_FILENAME, run.result.history)
                every = run.config.checkpoint_every
                due = every > 0 and done % every == 0
                if done == run.config.epochs or due or request:
                    path = _save(run, done)
            if request and done < run.config.epochs:
                _interrupt(request, path, done, 0, run.callbacks)
    bar.close()


def _epoch(run: _Run, epoch: int, request: StopRequest) -> EpochTotals:
    """Train epoch ``epoch`` (from 0), continuing an interrupted one; stop on a signal."""
    t0 = time.perf_counter()
    totals = None
    if run.partial is not None:  # continue the interrupted epoch where it stopped
        run.generator.set_state(run.partial["generator"])
        totals = EpochTotals(**{k: run.partial[k] for k in _PARTIAL_KEYS})
        run.partial = None
    loader_state = run.generator.get_state()
    run.lr_used = float(run.opt.param_groups[0]["lr"])
    totals, run.step, _ = run_epoch(
        run.net, run.opt, run.loader, run.loss, run.device, epoch=epoch + 1,
        global_step=run.step, callbacks=run.callbacks, progress=run.config.progress,
        totals=totals, stop=request.__bool__,
    )  # fmt: skip
    totals.seconds += time.perf_counter() - t0
    if request and totals.batches < len(run.loader):
        path = _save(run, epoch, totals, loader_state) if run.out is not None else None
        _interrupt(request, path, epoch, totals.batches, run.callbacks)
    return totals


def _end_epoch(run: _Run, epoch: int, totals: EpochTotals) -> None:
    """Evaluate, average (SWA), step the schedule, record the history row, call the hooks."""
    t1 = time.perf_counter()
    test_loss, test_acc = (None, None)
    if run.test_loader is not None:
        test_loss, test_acc = evaluate(run.net, run.test_loader, run.loss, run.device)
    if run.swa_model is not None and epoch >= run.swa_start:  # type: ignore[operator]
        run.swa_model.update_parameters(run.net)
    if run.swa_sched is not None and epoch + 1 >= run.swa_start:  # type: ignore[operator]
        run.swa_sched.step()
    else:
        run.scheduler.step()
    row = {
        "epoch": epoch + 1,
        "lr": run.lr_used,
        "train_loss": totals.loss,
        "train_acc": totals.accuracy,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "time": totals.seconds + (time.perf_counter() - t1),
    }
    run.result.history.append(row)
    for hook in _hooks(run.callbacks, "on_epoch_end"):
        hook(epoch + 1, dict(row), run.net, run.opt)


def _finish(run: _Run) -> None:
    """Evaluate the SWA average (BatchNorm statistics recomputed) and call ``on_train_end``."""
    swa_model, result = run.swa_model, run.result
    if swa_model is not None and int(swa_model.n_averaged) > 0:
        update_bn(run.train_eval, swa_model, device=run.device)
        loader, prefix = (run.test_loader, "test") if run.test_loader is not None else (
            run.train_eval, "train")  # fmt: skip
        swa_loss, swa_acc = evaluate(swa_model, loader, run.loss, run.device)
        result.swa_model = swa_model.module
        result.swa_metrics = {f"{prefix}_loss": swa_loss, f"{prefix}_acc": swa_acc}
    run.net.eval()
    for hook in _hooks(run.callbacks, "on_train_end"):
        hook(result)


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

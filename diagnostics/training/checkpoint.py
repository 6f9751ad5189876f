"""Training checkpoints: atomic, pickle-free (``weights_only``), validated before anything loads.

A checkpoint is one ``torch.save`` file (named ``checkpoint-00042.pt`` after 42 epochs by the
harness) holding a dict of tensors and plain containers only, so it loads with
``torch.load(..., weights_only=True)``:

============== ==============================================================================
key            content
============== ==============================================================================
format         ``"lanczos-optim/checkpoint"``
format_version ``1``
epoch          number of completed epochs
model          ``model.state_dict()``
optimizer      ``optimizer.state_dict()`` or ``None``; ``optimizer_class`` its class name
scheduler      ``scheduler.state_dict()`` or ``None``; ``scheduler_class`` its class name
swa_model      ``AveragedModel.state_dict()`` or ``None`` (with ``swa_scheduler``)
rng            ``torch`` (ByteTensor), ``cuda`` (list of ByteTensors, empty without CUDA),
               ``numpy`` (dict: ``name``, ``keys`` int64 tensor, ``pos``, ``has_gauss``,
               ``cached_gaussian``), ``python`` (dict: ``version``, ``state`` int64 tensor,
               ``gauss_next``), ``generator`` (ByteTensor of the data loader's generator or
               ``None``)
history        list of per-epoch metric dicts
meta           dict of plain values describing the run (model name, kwargs, data set, ...)
============== ==============================================================================

Writing goes to a temporary file in the same folder and ends with ``os.replace``: a crash never
leaves half a checkpoint and never damages an existing one. Loading checks the file, the model's
state-dict keys and shapes, the optimiser class and parameter groups and the scheduler class
*before* changing anything, and rolls back if a ``load_state_dict`` still fails: after an error
the live objects are exactly as before.

Example:
    >>> import tempfile, pathlib, torch
    >>> model = torch.nn.Linear(2, 2)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint-00001.pt"
    >>> _ = save_checkpoint(path, model=model, epoch=1)
    >>> load_checkpoint(path, model=model)["epoch"]
    1
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diagnostics.results import atomic_write
from diagnostics.training._rng_state import capture_rng_state, restore_rng_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "capture_rng_state",
    "checkpoint_name",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "lanczos-optim/checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)(?:-b(\d+))?\.pt$")
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.Size)


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """File name of the checkpoint after ``epoch`` epochs (and ``batch`` batches of the next).

    Example:
        >>> checkpoint_name(300), checkpoint_name(4, batch=12)
        ('checkpoint-00300.pt', 'checkpoint-00004-b00012.pt')
    """
    return f"checkpoint-{epoch:05d}.pt" if batch == 0 else f"checkpoint-{epoch:05d}-b{batch:05d}.pt"


def _checkpoints(folder: str | os.PathLike[str]) -> list[tuple[tuple[int, int], Path]]:
    """The checkpoint files of ``folder`` with their ``(epoch, batch)`` progress, in order."""
    found = []
    for p in Path(folder).iterdir():
        if m := _NAME.match(p.name):
            found.append(((int(m.group(1)), int(m.group(2) or 0)), p))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the most progress in ``folder`` (``None`` when there is none).

    Progress is the epoch, then the batch of a mid-epoch checkpoint (``checkpoint_name``).
    """
    found = _checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | os.PathLike[str], keep: int, newest: Path) -> list[Path]:
    """Delete the checkpoints of ``folder`` older than ``newest`` beyond the ``keep`` newest.

    Checkpoints with more progress than ``newest`` (left by another run) are never touched.

    Args:
        folder: The output folder.
        keep: How many checkpoints up to and including ``newest`` to keep (0: keep all).
        newest: The checkpoint just written.

    Returns:
        The files deleted.
    """
    if keep <= 0:
        return []
    found = [p for _, p in _checkpoints(folder)]
    names = [p.name for p in found]
    if Path(newest).name not in names:
        return []
    older = found[: names.index(Path(newest).name) + 1][:-keep]
    for path in older:
        path.unlink(missing_ok=True)
    return older


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, (Tensor, *_PLAIN)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"Checkpoint entry {where} has a key of type {type(key).__name__}.")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    else:
        raise TypeError(
            f"Checkpoint entry {where} is a {type(obj).__name__}; only tensors, numbers, strings "
            "and lists/tuples/dicts of them can be loaded with weights_only=True."
        )


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    swa_model: nn.Module | None = None,
    swa_scheduler: Any | None = None,
    generator: torch.Generator | None = None,
    history: list[dict[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: Destination file; its folder must exist.
        model: The network.
        epoch: Completed epochs.
        optimizer: The optimiser.
        scheduler: The learning-rate scheduler.
        swa_model: The ``AveragedModel`` of Stochastic Weight Averaging.
        swa_scheduler: The ``SWALR`` scheduler.
        generator: The data loader's generator (its state is saved with the RNG states).
        history: Per-epoch metrics so far.
        meta: Plain values describing the run.

    Returns:
        The path written.

    Raises:
        TypeError: Something that ``weights_only`` loading would refuse (nothing is written).
        FileNotFoundError: The folder does not exist.

    Example:
        >>> import tempfile, pathlib, torch
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint-00003.pt"
        >>> _ = save_checkpoint(path, model=model, optimizer=opt, epoch=3)

        >>> ckpt = read_checkpoint(path)
        >>> ckpt["epoch"], bool(torch.equal(ckpt["model"]["weight"], model.weight))
        (3, True)
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
        "swa_model": swa_model.state_dict() if swa_model is not None else None,
        "swa_scheduler": swa_scheduler.state_dict() if swa_scheduler is not None else None,
        "rng": capture_rng_state(generator),
        "history": list(history or []),
        "meta": dict(meta or {}),
    }
    _check_plain(payload, "checkpoint")
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU and check its format.

    Args:
        path: The checkpoint file.

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unreadable (corrupt, truncated, pickled objects) or not a lanczos-optim
            checkpoint of a known version.

    Example:
        >>> import tempfile, pathlib, torch
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint-00003.pt"
        >>> _ = save_checkpoint(path, model=model, optimizer=opt, epoch=3)

        >>> read_checkpoint(path)["epoch"]
        3
        >>> _ = path.with_name("junk.pt").write_bytes(b"not a checkpoint")
        >>> read_checkpoint(path.with_name("junk.pt"))
        Traceback (most recent call last):
        ...
        ValueError: ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot read checkpoint {str(path)!r}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a lanczos-optim checkpoint (no format {CHECKPOINT_FORMAT!r})."
        )
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"Checkpoint {str(path)!r} has format version {ckpt.get('format_version')!r}; "
            f"this version reads {CHECKPOINT_VERSION}."
        )
    return ckpt


def _state_mismatch(live: Mapping[str, Tensor], saved: Mapping[str, Any]) -> list[str]:
    problems = []
    missing = [k for k in live if k not in saved]
    unexpected = [k for k in saved if k not in live]
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, tensor in live.items():
        other = saved.get(key)
        if isinstance(other, Tensor) and other.shape != tensor.shape:
            problems.append(
                f"{key}: checkpoint shape {tuple(other.shape)}, model shape {tuple(tensor.shape)}"
            )
    return problems


def _validate(ckpt: dict[str, Any], path: Path, targets: dict[str, Any]) -> None:
    problems: list[str] = []
    for key in ("model", "swa_model"):
        if targets.get(key) is None:
            continue
        if ckpt.get(key) is None:
            problems.append(f"it holds no {key} state")
        else:
            problems += [
                f"{key} {p}" for p in _state_mismatch(targets[key].state_dict(), ckpt[key])
            ]
    optimizer = targets.get("optimizer")
    if optimizer is not None:
        saved = ckpt.get("optimizer")
        if saved is None:
            problems.append("it holds no optimizer state")
        elif ckpt.get("optimizer_class") != type(optimizer).__name__:
            problems.append(
                f"optimizer class {ckpt.get('optimizer_class')!r} in the checkpoint, "
                f"{type(optimizer).__name__!r} here"
            )
        else:
            sizes = [len(g["params"]) for g in saved.get("param_groups", [])]
            live = [len(g["params"]) for g in optimizer.param_groups]
            if sizes != live:
                problems.append(f"optimizer parameter groups of sizes {sizes}, here {live}")
    for key in ("scheduler", "swa_scheduler"):
        target = targets.get(key)
        if target is None:
            continue
        if ckpt.get(key) is None:
            problems.append(f"it holds no {key} state")
        elif key == "scheduler" and ckpt.get("scheduler_class") != type(target).__name__:
            problems.append(
                f"scheduler class {ckpt.get('scheduler_class')!r} in the checkpoint, "
                f"{type(target).__name__!r} here"
            )
    if problems:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not match (nothing was loaded): " + "; ".join(problems)
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    swa_model: nn.Module | None = None,
    swa_scheduler: Any | None = None,
    generator: torch.Generator | None = None,
    restore_rng: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint into live objects, all or nothing.

    Everything is validated first (file, format, state-dict keys and shapes, optimiser class and
    parameter groups, scheduler class); if a ``load_state_dict`` still fails, the objects already
    loaded are rolled back. Tensors are loaded onto the CPU and copied to where the model's and
    optimiser's tensors live.

    Args:
        path: The checkpoint file.
        model: Receives the model state.
        optimizer: Receives the optimiser state (must be of the saved class).
        scheduler: Receives the scheduler state.
        swa_model: Receives the averaged model's state.
        swa_scheduler: Receives the SWA scheduler's state.
        generator: Receives the saved data-loader generator state (with ``restore_rng``).
        restore_rng: Also restore the global RNG states (torch, CUDA, numpy, Python).

    Returns:
        The checkpoint dict (``epoch``, ``history``, ``meta``, ...).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unreadable, not a checkpoint, or not matching the given objects; the
            message names every mismatch, and nothing was changed.

    Example:
        >>> import tempfile, pathlib, torch
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint-00003.pt"
        >>> _ = save_checkpoint(path, model=model, optimizer=opt, epoch=3)

        >>> fresh = torch.nn.Linear(2, 2)
        >>> load_checkpoint(path, model=fresh)["epoch"]
        3
        >>> bool(torch.equal(fresh.weight, model.weight))
        True
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    targets = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "swa_model": swa_model,
        "swa_scheduler": swa_scheduler,
    }
    _validate(ckpt, path, targets)
    undo = [(obj, copy.deepcopy(obj.state_dict())) for obj in targets.values() if obj is not None]
    try:
        for key, obj in targets.items():
            if obj is not None:
                obj.load_state_dict(ckpt[key])
    except Exception as err:
        for obj, state in undo:
            with contextlib.suppress(Exception):  # best effort: the failed object may fail again
                obj.load_state_dict(state)
        raise ValueError(
            f"Checkpoint {str(path)!r} does not match (nothing was loaded): {err}"
        ) from None
    if restore_rng:
        restore_rng_state(ckpt["rng"], generator)
    return ckpt

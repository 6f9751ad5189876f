"""Up-front checks and data preparation for :func:`diagnostics.training.harness.train_network`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import SWALR
from torch.utils.data import Dataset, Subset, TensorDataset

from diagnostics.training.checkpoint import latest_checkpoint, read_checkpoint
from diagnostics.training.datasets import dataset_info, load_dataset
from diagnostics.training.schedules import build_schedule

__all__ = ["ResultsExistError"]

_HOOKS = ("on_step", "on_epoch_end", "on_train_end", "on_train_start", "on_interrupt")


def check_callbacks(callbacks: object) -> None:
    """Refuse callbacks that are not a sequence of objects with at least one hook."""
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError("callbacks must be a sequence of callback objects.")
    for cb in callbacks:
        if not any(callable(getattr(cb, hook, None)) for hook in _HOOKS):
            raise TypeError(f"Callback {cb!r} has none of the methods {', '.join(_HOOKS)}.")


def check_partial_epoch(resume: Path | None, batch_size: int) -> None:
    """Refuse to continue an interrupted epoch with another batch size (its batches differ)."""
    if resume is None:
        return
    meta = read_checkpoint(resume).get("meta", {})
    partial, then = meta.get("partial_epoch"), meta.get("batch_size")
    if partial is not None and then is not None and then != batch_size:
        raise ValueError(
            f"Cannot continue the epoch interrupted in {str(resume)!r} with batch_size "
            f"{batch_size}: it stopped after {partial['batches']} batches of {then}; resume "
            f"with batch_size {then}."
        )


def find_resume(resume: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint to resume from (a file, or a folder's latest), read once to check it."""
    if resume is None:
        return None
    path = Path(resume)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"No checkpoint-*.pt file to resume from in {str(path)!r}.")
        path = latest
    read_checkpoint(path)  # FileNotFoundError / ValueError before any work
    return path


class ResultsExistError(FileExistsError):
    """The output folder already holds training results (``folder`` names it)."""

    def __init__(self, folder: Path, resume: str = "resume=", overwrite: str = "overwrite=True"):
        self.folder = folder
        super().__init__(
            f"{str(folder)!r} already holds training results; pass {resume} to continue them, "
            f"{overwrite} to replace them, or another folder."
        )


def prepare_folder(
    folder: str | os.PathLike[str] | None, resume: Path | None, overwrite: bool, stats: str
) -> Path | None:
    """The output folder (not created yet); refuse one with results unless resuming/overwriting."""
    if folder is None:
        return resume.parent if resume is not None else None
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Output folder {str(out)!r} is a file.")
    has_results = out.is_dir() and ((out / stats).exists() or latest_checkpoint(out) is not None)
    own_folder = resume is not None and out.resolve() == resume.parent.resolve()
    if has_results and not overwrite and not own_folder:
        raise ResultsExistError(out)
    return out


def check_resume_data(resume: Path | None, dataset: object, subset: int | None) -> None:
    """Refuse to resume a checkpoint trained on another data set or subset.

    Reads only the checkpoint (nothing is loaded into a model), so a refused call changes
    nothing. A data set given as an object (not a name) is not compared.

    Raises:
        ValueError: Naming both data sets and subsets.
    """
    if resume is None:
        return
    meta = read_checkpoint(resume).get("meta", {})
    name = dataset if isinstance(dataset, str) else None
    then = (meta.get("dataset"), meta.get("subset"))
    if name is None or "dataset" not in meta:
        return
    if (str(then[0]).lower(), then[1]) != (name.lower(), subset):
        raise ValueError(
            f"Cannot resume {str(resume)!r}: it was trained on data set {then[0]!r} with subset "
            f"{then[1]}; this run asks for {name!r} with subset {subset}. Resume with the same "
            "--dataset and --subset, or start a new run in another folder."
        )


def clear_results(out: Path, stats: str) -> list[Path]:
    """Delete an earlier run's results in ``out`` (for ``overwrite``); return what was deleted.

    Only the files a training run writes: ``checkpoint-*.pt``, the stats file and the epoch
    spectra under ``spectra/``. Called once every argument has been checked, so an invalid
    call leaves them intact; without it, the old run's later checkpoints would stay the
    folder's "latest".
    """
    gone = [*out.glob("checkpoint-*.pt"), *(out / "spectra").glob("spectrum-epoch-*.npz")]
    if (out / stats).is_file():
        gone.append(out / stats)
    for path in gone:
        path.unlink()
    return gone


def _take(ds: Dataset, n: int | None, seed: int) -> Dataset:
    size = len(ds)  # type: ignore[arg-type]
    if n is None or n >= size:
        return ds
    keep = np.random.default_rng(seed).permutation(size)[:n]
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[torch.from_numpy(keep)] for t in ds.tensors))
    return Subset(ds, keep.tolist())


def load_data(
    dataset: str | Dataset,
    test_dataset: Dataset | None,
    root: str | os.PathLike[str] | None,
    subset: int | None,
    seed: int,
    download: bool = False,
) -> tuple[Dataset, Dataset | None]:
    """Training and test sets: a named data set's two splits, or the given datasets."""
    if isinstance(dataset, str):
        kw = {"root": root, "seed": seed, "download": download}
        train = _take(load_dataset(dataset, train=True, **kw), subset, seed)
        test = _take(load_dataset(dataset, train=False, **kw), subset, seed)
        return train, test
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a name or a torch Dataset; got {type(dataset).__name__}.")
    test = _take(test_dataset, subset, seed) if test_dataset is not None else None
    return _take(dataset, subset, seed), test


def model_shape(dataset: str | Dataset, train: Dataset) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a named data set, or inferred from the samples."""
    if isinstance(dataset, str):
        return dataset_info(dataset)
    if isinstance(train, TensorDataset):
        inputs, labels = train.tensors[0], train.tensors[1]
        return tuple(inputs.shape[1:]), int(labels.max()) + 1
    labels = [int(train[i][1]) for i in range(len(train))]  # type: ignore[arg-type]
    return tuple(train[0][0].shape), max(labels) + 1


def plain(obj: Any) -> Any:
    """``obj`` with everything but numbers, strings, ``None`` and containers turned into repr."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return repr(obj)


def build_schedulers(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    schedule_kwargs: Mapping[str, float] | None,
    epochs: int,
    swa: bool,
    swa_start: int | None,
    swa_lr: float | None,
) -> tuple[LambdaLR, SWALR | None, int | None, float | None, dict[str, float]]:
    """The epoch schedule and, with SWA, ``SWALR`` plus the resolved ``swa_start``/``swa_lr``.

    With SWA the schedule's budget is ``swa_start`` epochs and the linear schedule's final ratio
    defaults to ``swa_lr / lr`` (as in Garipov et al.'s SWA code); ``SWALR`` anneals to
    ``swa_lr`` within one epoch.
    """
    lr0 = float(optimizer.param_groups[0]["lr"])
    kwargs = dict(schedule_kwargs or {})
    if not swa:
        return (
            build_schedule(schedule, optimizer, epochs=epochs, **kwargs),
            None,
            None,
            None,
            kwargs,
        )
    start = int(0.75 * epochs) if swa_start is None else swa_start
    lr_swa = 0.1 * lr0 if swa_lr is None else float(swa_lr)
    if schedule == "linear" and lr0 > 0:
        kwargs.setdefault("ratio", lr_swa / lr0)
    scheduler = build_schedule(schedule, optimizer, epochs=max(start, 1), **kwargs)
    return scheduler, SWALR(optimizer, swa_lr=lr_swa, anneal_epochs=1), start, lr_swa, kwargs

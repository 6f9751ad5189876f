"""The configuration of a training run: :class:`TrainConfig`, one default and one check per option.

The fields are the options of ``lanczos-optim train`` (model, data, optimiser, schedule, SWA,
checkpoints, seed, ...); the command line takes its defaults from here, and
:func:`~diagnostics.training.harness.train_network` takes a :class:`TrainConfig` (or the same
names as keyword arguments). Every field is checked once, in :meth:`TrainConfig.validate`, when
the object is built, so a bad value is reported before any data is loaded or any file is touched.

:func:`resume_config` rebuilds the configuration of a run from its checkpoint, for ``--resume``:
options that only extend or report the run (``epochs``, the output and checkpoint options,
``progress``, ...) may be given again with other values (the checkpoint options and the data
path are the checkpoint's unless given); the others (model, data, optimiser and
its keyword arguments, schedule, batch size, seed, SWA) must equal the checkpoint's.

Example:
    >>> config = TrainConfig(model="mlp", dataset="digits", epochs=3, subset=300, batch_size=32)
    >>> config.optimizer, config.schedule, config.seed
    ('sgd', 'linear', 0)
    >>> TrainConfig(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an int >= 1; got 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from diagnostics.training._setup import check_resume_data
from diagnostics.training.checkpoint import read_checkpoint
from diagnostics.training.datasets import DATASETS
from diagnostics.training.models import _canonical
from diagnostics.training.optimizers import check_hyperparameter_types, resolve_optimizer
from diagnostics.training.schedules import SCHEDULES

__all__ = ["CARRIED", "RESUMABLE", "TrainConfig", "resume_config"]

#: Options a resumed run takes from its checkpoint; given again, they must be the same.
RESUMABLE = (
    "model", "model_kwargs", "dataset", "subset", "optimizer", "optimizer_kwargs", "schedule",
    "schedule_kwargs", "batch_size", "seed", "swa", "swa_start", "swa_lr",
)  # fmt: skip
#: Options a resumed run takes from its checkpoint unless given again (then: as given).
CARRIED = ("checkpoint_every", "keep_checkpoints", "data_path")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class TrainConfig:
    r"""Everything that defines a training run (the options of ``lanczos-optim train``).

    Args:
        model: A name of :data:`diagnostics.MODELS` or a module.
        dataset: A name of :data:`diagnostics.DATASETS` (its test split is the test set) or a
            ``Dataset`` of ``(input, label)`` pairs.
        epochs: The epoch budget :math:`T`.
        test_dataset: Test set when ``dataset`` is a ``Dataset`` (default: none).
        data_path: Folder with the data files (named data sets that need files).
        subset: Train (and test) on a seeded random subset of this many samples.
        model_kwargs: Keyword arguments of :func:`diagnostics.training.models.build_model`.
        optimizer: ``"sgd"``, ``"adam"``, ``"lanczos_newton"``, ``"lanczos_saddle_free"``, any
            ``torch.optim`` class name (``"AdamW"``, ...) or an optimiser class.
        optimizer_kwargs: The optimiser's keyword arguments (``lr`` may be given here). Missing
            ones take :func:`diagnostics.training.optimizers.default_hyperparameters`.
        lr: Initial learning rate :math:`\alpha_0` (or in ``optimizer_kwargs``, not both).
        batch_size: Training batch size.
        schedule: ``"linear"`` (the paper's equation 11), ``"cosine"`` or ``"constant"``.
        schedule_kwargs: ``ratio`` of the linear schedule (default 0.01, or ``swa_lr/lr`` with
            SWA), ``min_ratio`` of the cosine one.
        swa: Use Stochastic Weight Averaging.
        swa_start: First averaged epoch, counted from 0 (default ``int(0.75 * epochs)``).
        swa_lr: Learning rate during averaging (default :math:`0.1\,\alpha_0`).
        checkpoint_dir: Output folder (created if missing); ``None`` writes no files.
        checkpoint_every: Save a checkpoint every this many epochs (0: only after the last).
        keep_checkpoints: Keep only this many newest checkpoints in the folder (0: all).
        resume: A checkpoint file, or a folder (its latest checkpoint), to continue from.
        overwrite: Allow writing into a folder that already holds results.
        seed: Seeds torch, numpy, Python and the loader's shuffling generator.
        progress: Show progress bars (on a terminal only).
        download: Let torchvision download a named data set that is not on disk.

    Raises:
        ValueError: An unknown name (the message lists the allowed ones) or an invalid value.
        TypeError: An optimiser keyword argument of the wrong type.
        FileNotFoundError: ``data_path`` does not exist.

    Example:
        >>> TrainConfig(schedule="step")
        Traceback (most recent call last):
        ...
        ValueError: Unknown schedule 'step'; allowed: linear, cosine, constant.
    """

    model: str | nn.Module = "mlp"
    dataset: str | Dataset = "digits"
    epochs: int = 10
    test_dataset: Dataset | None = None
    data_path: str | os.PathLike[str] | None = None
    subset: int | None = None
    model_kwargs: Mapping[str, Any] | None = None
    optimizer: str | type = "sgd"
    optimizer_kwargs: Mapping[str, Any] | None = None
    lr: float | None = None
    batch_size: int = 128
    schedule: str = "linear"
    schedule_kwargs: Mapping[str, float] | None = None
    swa: bool = False
    swa_start: int | None = None
    swa_lr: float | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    resume: str | os.PathLike[str] | None = None
    overwrite: bool = False
    seed: int = 0
    progress: bool = True
    download: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (called when the object is built); see the class's Raises."""
        ints = (("epochs", 1), ("batch_size", 1), ("checkpoint_every", 0), ("keep_checkpoints", 0))
        for name, low in (*ints, ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
        if self.subset is not None and (not _is_int(self.subset) or self.subset < 1):
            raise ValueError(f"subset must be None or an int >= 1; got {self.subset!r}.")
        self._check_names()
        for name in ("lr", "swa_lr"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float))
            if value is not None and (bad or not 0.0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number; got {value!r}.")
        start = self.swa_start
        if start is not None and (not _is_int(start) or not 0 <= start < self.epochs):
            raise ValueError(
                f"swa_start must be an int in [0, epochs={self.epochs}); got {start!r}."
            )
        if self.data_path is not None and not Path(self.data_path).exists():
            raise FileNotFoundError(f"Data path {str(self.data_path)!r} does not exist.")

    def _check_names(self) -> None:
        if isinstance(self.model, str):
            _canonical(self.model)  # ValueError listing the allowed names
        if isinstance(self.dataset, str) and self.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {self.dataset!r}; allowed: {', '.join(DATASETS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"Unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}."
            )
        cls = resolve_optimizer(self.optimizer)  # type: ignore[arg-type]
        check_hyperparameter_types(cls, self.optimizer_kwargs or {}, prefix=f"{cls.__name__}: ")


def _same(name: str, then: Any, now: Any) -> bool:
    if name == "optimizer":
        return resolve_optimizer(then) is resolve_optimizer(now)
    if name == "dataset" and isinstance(then, str) and isinstance(now, str):
        return then.lower() == now.lower()
    if name in ("model_kwargs", "schedule_kwargs"):
        return dict(then or {}) == dict(now or {})
    return then == now


def _given_kwargs(
    meta: Mapping[str, Any], given: Mapping[str, Any], path: Path, spell: Callable[[str], str]
) -> dict[str, Any]:
    """The checkpoint's optimiser keyword arguments; ``given`` ones (and ``lr``) must match."""
    then = dict(meta.get("optimizer_kwargs") or {})
    now = dict(given.get("optimizer_kwargs") or {})
    if given.get("lr") is not None:
        now["lr"] = given["lr"]
    for key, value in now.items():
        if key not in then or then[key] != value:
            shown = spell("lr") if key == "lr" and "lr" in given else spell("optimizer_kwargs")
            raise ValueError(
                f"Cannot resume {str(path)!r} with {shown} {key}={value!r}: it was trained with "
                f"{key}={then.get(key)!r}; drop the option, or start a new run in another folder."
            )
    return then


def resume_config(
    checkpoint: str | os.PathLike[str],
    given: Mapping[str, Any] | None = None,
    *,
    spell: Callable[[str], str] = lambda name: name,
) -> TrainConfig:
    """The configuration of the run that wrote ``checkpoint``, with the ``given`` options.

    The options of :data:`RESUMABLE` come from the checkpoint's ``meta``; given again, they must
    equal it (else a one-line ``ValueError``: another model, data set, optimiser, batch size,
    ... would not continue the run). Those of :data:`CARRIED` (checkpoint interval and count,
    data path) come from the checkpoint unless given. Every other given option (``epochs`` to
    extend the run, output options, ``progress``, ...) is taken as given.

    Args:
        checkpoint: The checkpoint file.
        given: Fields of :class:`TrainConfig` set explicitly (``lr`` and ``optimizer_kwargs``
            are compared with the checkpoint's optimiser keyword arguments).
        spell: How an option is named in messages (the CLI gives ``"--batch-size"``, ...).

    Returns:
        The :class:`TrainConfig`, with ``resume=checkpoint``.

    Raises:
        ValueError: A checkpoint without a named model and data set, a given option that
            differs from the checkpoint's where that is not safe, or fewer ``epochs`` than the
            checkpoint has trained.

    Example:
        >>> import tempfile
        >>> from diagnostics.training import TrainConfig, train_network
        >>> out = tempfile.mkdtemp()
        >>> run = TrainConfig(model="mlp", dataset="digits", epochs=1, subset=100, batch_size=50,
        ...                   optimizer="adam", lr=0.01, checkpoint_dir=out, progress=False)
        >>> ckpt = train_network(run).checkpoints[-1]
        >>> again = resume_config(ckpt, {"epochs": 2})
        >>> again.optimizer, again.batch_size, again.epochs
        ('adam', 50, 2)
        >>> resume_config(ckpt, {"batch_size": 20})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...
    """
    path, given = Path(checkpoint), dict(given or {})
    ckpt = read_checkpoint(path)
    meta = dict(ckpt.get("meta") or {})
    if meta.get("dataset") not in DATASETS or "model" not in meta:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not name a model and data set the harness can "
            "rebuild; resume it from Python with train_network(..., resume=...)."
        )
    dataset = given.get("dataset", meta["dataset"])
    check_resume_data(path, dataset, given.get("subset", meta.get("subset")))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = {k: meta[k] for k in RESUMABLE if k in meta and k in fields}
    config["optimizer_kwargs"] = _given_kwargs(meta, given, path, spell)
    for name, value in given.items():
        if name in ("lr", "optimizer_kwargs"):
            continue
        if name in config and not _same(name, config[name], value):
            raise ValueError(
                f"Cannot resume {str(path)!r} with {spell(name)} {value!r}: it was trained with "
                f"{config[name]!r}; drop the option, or start a new run in another folder."
            )
        config[name] = value
    if "epochs" not in given:
        config["epochs"] = meta.get("epochs", TrainConfig.epochs)
    elif _is_int(done := ckpt.get("epoch")) and given["epochs"] < done:
        raise ValueError(
            f"Cannot resume {str(path)!r} with {spell('epochs')} {given['epochs']!r}: it has "
            f"trained {done} epochs already; give at least {done}, or drop the option."
        )
    for name in CARRIED:  # else a resumed keep-all run would prune its checkpoints to 3
        moved = name == "data_path" and not Path(str(meta.get(name))).exists()
        if name not in given and meta.get(name) is not None and not moved:
            config[name] = meta[name]
    return TrainConfig(**{**config, "resume": path})

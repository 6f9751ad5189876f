"""A training callback: a full Lanczos spectrum every N epochs, saved and optionally logged.

``lanczos-optim train --spectrum-every N`` uses it: after every N-th epoch the Hessian (or GGN)
spectrum on held-out data is written to ``<out>/spectra/spectrum-epoch-00005.npz``
(:meth:`diagnostics.analysis.spectrum.Spectrum.save`, atomic) and, with a
:class:`~diagnostics.wandb_logger.WandbLogger`, logged to W&B as well, so the spectra are kept
whether or not W&B is used.

Example:
    >>> import tempfile, torch
    >>> _ = torch.manual_seed(0)
    >>> from diagnostics.training.harness import train_network
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> data = torch.utils.data.TensorDataset(x, y)
    >>> folder = tempfile.mkdtemp()
    >>> spectra = EpochSpectra(folder, every=2, data=[(x, y)], lanczos_steps=4)
    >>> _ = train_network(model=torch.nn.Linear(4, 3), dataset=data, epochs=2,
    ...                   callbacks=[spectra], progress=False)
    >>> [p.name for p in spectra.saved]
    ['spectrum-epoch-00002.npz']
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diagnostics.training._loop import Callback
from lanczos_optim import check_bn_mode, check_curvature, check_lanczos_steps

__all__ = [
    "EPOCH_SPECTRUM_LANCZOS_STEPS",
    "SPECTRA_FOLDER",
    "EpochSpectra",
    "check_spectrum_settings",
    "epoch_spectrum",
    "spectrum_filename",
]

#: Sub-folder of the output folder that holds the spectra.
SPECTRA_FOLDER = "spectra"
#: Default Lanczos steps of the spectra taken during training (EpochSpectra, WandbLogger and
#: ``lanczos-optim train --spectrum-steps``).
EPOCH_SPECTRUM_LANCZOS_STEPS = 30


def check_spectrum_settings(
    every: object, curvature: object, lanczos_steps: object, bn_mode: object, *, name: str = "every"
) -> tuple[str, int, str]:
    """Check the settings of the spectra during training, before the first one is computed.

    Shared by :class:`EpochSpectra`, :class:`~diagnostics.wandb_logger.WandbLogger` and
    ``lanczos-optim train``, so a bad value is refused when the callback is built, not when
    the first spectrum epoch ends. Curvature, steps and BatchNorm mode go through the
    :mod:`lanczos_optim.validation` checks (steps above ``P`` are capped when the spectrum runs).

    Args:
        every: Epoch interval, an int >= 1.
        curvature: One of :data:`lanczos_optim.CURVATURES`.
        lanczos_steps: An int >= 1.
        bn_mode: ``"eval"`` or ``"train"``.
        name: How ``every`` is named in the message.

    Returns:
        ``(curvature, lanczos_steps, bn_mode)``, checked.

    Raises:
        ValueError: Naming the value and what is allowed.

    Example:
        >>> check_spectrum_settings(1, "ggn", 12, "train")
        ('ggn', 12, 'train')
        >>> check_spectrum_settings(0, "ggn", 12, "train")
        Traceback (most recent call last):
        ...
        ValueError: every must be an int >= 1 (epochs); got 0.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"{name} must be an int >= 1 (epochs); got {every!r}.")
    return check_curvature(curvature), check_lanczos_steps(lanczos_steps), check_bn_mode(bn_mode)


def spectrum_filename(epoch: int) -> str:
    """File name of the spectrum after ``epoch`` epochs.

    Example:
        >>> spectrum_filename(5)
        'spectrum-epoch-00005.npz'
    """
    return f"spectrum-epoch-{epoch:05d}.npz"


def epoch_spectrum(
    model: nn.Module,
    data: object,
    epoch: int,
    lr: float,
    *,
    loss_fn: Callable[..., torch.Tensor],
    curvature: str,
    lanczos_steps: int,
    bn_mode: str,
) -> Any:
    """The spectrum after ``epoch`` epochs (probe seeded by the epoch), tagged with epoch and lr.

    ``lr`` is the learning rate that was in force during the epoch (the history row's), which
    the edge-of-stability indicator needs.
    """
    from diagnostics.analysis import compute_eigenspectrum

    spectrum = compute_eigenspectrum(
        model,
        loss_fn,
        data,
        curvature=curvature,
        lanczos_steps=lanczos_steps,
        bn_mode=bn_mode,
        seed=epoch,
    )
    spectrum.meta["epoch"] = epoch
    spectrum.meta["lr"] = lr
    return spectrum


class EpochSpectra(Callback):
    """Compute a spectrum every ``every`` epochs; save it under ``folder/spectra/``; log it.

    Args:
        folder: The run's output folder (``None``: keep the spectra only in ``self.spectra``
            and W&B).
        every: Epoch interval (an int >= 1).
        data: Held-out batches for the spectra (one batch, a list of batches or a DataLoader).
        logger: A :class:`~diagnostics.wandb_logger.WandbLogger` to log them to (optional).
        loss_fn: Loss (default: cross-entropy).
        curvature: ``"hessian"`` or ``"ggn"``.
        lanczos_steps: Lanczos steps (default :data:`EPOCH_SPECTRUM_LANCZOS_STEPS`; capped at
            the parameter count).
        bn_mode: BatchNorm policy of the products (``"eval"`` or ``"train"``).

    Attributes:
        saved: Paths written.
        spectra: ``{epoch: Spectrum}`` when ``folder`` is ``None`` (else empty, to save memory).

    Raises:
        ValueError: ``every``, ``curvature``, ``lanczos_steps`` or ``bn_mode`` invalid (checked
            here, by :func:`check_spectrum_settings`, not when the first spectrum is due).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2).double()
        >>> batch = (torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,)))
        >>> spectra = EpochSpectra(None, 2, batch, lanczos_steps=4)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> for epoch in (1, 2, 3, 4):
        ...     spectra.on_epoch_end(epoch, {"lr": 0.1}, model, opt)
        >>> sorted(spectra.spectra)  # every second epoch
        [2, 4]
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None,
        every: int,
        data: object,
        *,
        logger: Any = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        curvature: str = "hessian",
        lanczos_steps: int = EPOCH_SPECTRUM_LANCZOS_STEPS,
        bn_mode: str = "eval",
    ) -> None:
        settings = check_spectrum_settings(
            every, curvature, lanczos_steps, bn_mode, name="spectrum every"
        )
        self.folder = Path(folder) / SPECTRA_FOLDER if folder is not None else None
        self.every, self.data, self.logger = every, data, logger
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.curvature, self.lanczos_steps, self.bn_mode = settings
        self.saved: list[Path] = []
        self.spectra: dict[int, Any] = {}
        self.provenance: dict[str, Any] = {}

    def on_train_start(self, config: dict[str, Any]) -> None:
        """Record the run's model and data set as the spectra's provenance (plot titles)."""
        model, dataset = config.get("model"), config.get("dataset")
        self.provenance = {"model": model, "dataset": dataset, "split": "held-out"}

    def on_epoch_end(
        self,
        epoch: int,
        metrics: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Every ``every`` epochs: compute, save and log the spectrum."""
        if epoch % self.every:
            return
        lr = float(metrics.get("lr", optimizer.param_groups[0]["lr"]))  # the harness: lr used
        spectrum = epoch_spectrum(
            model,
            self.data,
            epoch,
            lr,
            loss_fn=self.loss_fn,
            curvature=self.curvature,
            lanczos_steps=self.lanczos_steps,
            bn_mode=self.bn_mode,
        )
        if self.provenance:
            spectrum.meta["provenance"] = dict(self.provenance)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / spectrum_filename(epoch)
            spectrum.save(path)
            self.saved.append(path)
        else:
            self.spectra[epoch] = spectrum
        if self.logger is not None:
            self.logger.log_epoch_spectrum(spectrum, lr, optimizer)

r"""Weights & Biases logging of curvature during training (a training-harness callback).

What is logged:

* every ``log_every`` steps: the batch loss and learning rate; with our optimisers, their own
  per-step record at no extra cost (``curvature/top_ritz``, ``curvature/bottom_ritz``,
  ``curvature/negative_mass``, ``curvature/krylov_fraction``, ``optim/damping``,
  ``optim/products``, timings ...);
* the edge-of-stability indicator :math:`\eta\,\lambda_{\max}` (``curvature/eos``), with a
  warning once it passes ``eos_threshold`` (default 1.8; gradient descent on a quadratic diverges
  beyond 2);
* every ``spectrum_every`` epochs, for any optimiser, a full Lanczos spectrum on held-out data: a
  ``wandb.Histogram`` of the Ritz values weighted by their quadrature weights, the stem plot as a
  ``wandb.Image``, and its summaries;
* on request, landscapes and diagonal-versus-Lanczos comparisons as ``wandb.Table`` and images.

Mode: ``"online"`` when an API key is configured, otherwise ``"offline"`` (runs go to
``$WANDB_DIR/wandb/offline-run-*`` and can be synced later with ``wandb sync``); ``"disabled"``
writes nothing. The API key is never printed, logged or stored by this module.
"""

from __future__ import annotations

import math
import netrc
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from diagnostics._training_loop import Callback, TrainingStep

__all__ = ["WANDB_MODES", "WandbLogger", "resolve_wandb_mode", "step_metrics"]

WANDB_MODES = ("online", "offline", "disabled")


def _api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: str | None = None) -> str:
    """Return the W&B mode to use: ``mode``, else ``$WANDB_MODE``, else online iff a key exists.

    Raises:
        ValueError: If ``mode`` is not one of :data:`WANDB_MODES`.

    Example:
        >>> resolve_wandb_mode("disabled")
        'disabled'
    """
    if mode is None:
        mode = os.environ.get("WANDB_MODE") or ("online" if _api_key_configured() else "offline")
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {WANDB_MODES}; got {mode!r}.")
    return mode


def _pixels(figure: Any) -> np.ndarray:
    """RGB pixels of a matplotlib Figure (``wandb.Image(fig)`` would need pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _effective_curvature(info: Any) -> float:
    r"""The curvature the step length meets: :math:`\lambda_{\max}` for gradient steps.

    A damped Newton step scales each Ritz direction by :math:`1/(|\theta| + \delta)`, so the
    stability of ``lr`` is set by :math:`\max_i |\theta_i| / (|\theta_i| + \delta)` instead.
    """
    theta = torch.as_tensor(info.ritz_values, dtype=torch.float64).abs()
    damping = float(getattr(info, "damping", math.nan))
    if math.isnan(damping):
        return float(theta.max())
    return float((theta / (theta + damping)).max())


def step_metrics(info: Any) -> dict[str, float]:
    """Scalars of an optimiser's ``last_info`` record (empty for optimisers without one).

    Example:
        >>> step_metrics(None)
        {}
    """
    if info is None or not hasattr(info, "ritz_values"):
        return {}
    theta = torch.as_tensor(info.ritz_values, dtype=torch.float64)
    weights = torch.as_tensor(info.weights, dtype=torch.float64)
    out = {
        "optim/damping": float(info.damping),
        "optim/products": float(info.num_products),
        "optim/step_norm": float(info.step_norm),
        "optim/grad_norm": float(info.grad_norm),
        "optim/predicted_decrease": float(info.predicted_decrease),
        "optim/num_clipped": float(info.num_clipped),
        "optim/skipped": float(info.skipped),
        "optim/product_seconds": float(info.product_seconds),
        "optim/bookkeeping_seconds": float(info.bookkeeping_seconds),
        "curvature/krylov_fraction": float(info.krylov_fraction),
    }
    if theta.numel():
        out["curvature/top_ritz"] = float(theta.max())
        out["curvature/bottom_ritz"] = float(theta.min())
        if weights.numel() == theta.numel():
            out["curvature/negative_mass"] = float(weights[theta < 0].sum())
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


class WandbLogger(Callback):
    """Log training and curvature to Weights & Biases; pass it in ``callbacks=`` of training.

    Args:
        project: W&B project.
        name: Run name.
        config: Run configuration (hyperparameters) to record.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; see :func:`resolve_wandb_mode`.
        directory: Folder for W&B files (default: ``$WANDB_DIR`` or the working directory).
        log_every: Log step metrics every this many optimiser steps.
        spectrum_every: Compute and log a full spectrum every this many epochs (``None``: never).
        spectrum_data: Data for those spectra (one batch or a list/DataLoader of batches).
        loss_fn: Loss for those spectra (default: cross-entropy).
        curvature: ``"hessian"`` or ``"ggn"`` for those spectra.
        lanczos_steps: Lanczos steps for those spectra.
        bn_mode: BatchNorm policy of those spectra.
        eos_threshold: Warn once when ``lr * lambda_max`` passes this value.
        finish_on_train_end: Close the run when training ends (``False`` to log more after).

    Example:
        >>> logger = WandbLogger(mode="disabled")
        >>> logger.log({"x": 1.0})
        >>> logger.finish()
    """

    def __init__(
        self,
        project: str = "lanczos-optim",
        name: str | None = None,
        config: dict[str, Any] | None = None,
        *,
        mode: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        log_every: int = 1,
        spectrum_every: int | None = None,
        spectrum_data: object = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        curvature: str = "hessian",
        lanczos_steps: int = 30,
        bn_mode: str = "eval",
        eos_threshold: float = 1.8,
        finish_on_train_end: bool = True,
    ) -> None:
        import wandb

        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be an int >= 1; got {log_every!r}.")
        if spectrum_every is not None and (
            not isinstance(spectrum_every, int) or spectrum_every < 1
        ):
            raise ValueError(f"spectrum_every must be None or an int >= 1; got {spectrum_every!r}.")
        if spectrum_every is not None and spectrum_data is None:
            raise ValueError("spectrum_every needs spectrum_data (the batches for the spectra).")
        self.mode = resolve_wandb_mode(mode)
        self.log_every = log_every
        self.spectrum_every = spectrum_every
        self.spectrum_data = spectrum_data
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.curvature, self.lanczos_steps, self.bn_mode = curvature, lanczos_steps, bn_mode
        self.eos_threshold = eos_threshold
        self._eos_warned = False
        self.finish_on_train_end = finish_on_train_end
        self._step = 0
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            name=name,
            config=config or {},
            mode=self.mode,
            # wandb caches its settings per process; read $WANDB_DIR at each init instead.
            dir=str(directory) if directory is not None else os.environ.get("WANDB_DIR"),
            reinit="create_new",
        )

    # ----------------------------------------------------------------- generic logging
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a dict of values at ``step`` (default: the last optimiser step)."""
        if self.run is None:
            raise RuntimeError("This WandbLogger's run is finished; create a new logger.")
        self.run.log(metrics, step=self._step if step is None else step)

    def _eos(self, lr: float, lambda_max: float) -> float:
        eos = lr * lambda_max
        if eos >= self.eos_threshold and not self._eos_warned:
            self._eos_warned = True
            warnings.warn(
                f"Edge of stability: lr * lambda_max = {eos:.3g} passed {self.eos_threshold} "
                "(gradient descent on a quadratic diverges beyond 2).",
                RuntimeWarning,
                stacklevel=3,
            )
        return eos

    # ----------------------------------------------------------------- callbacks
    def on_step(self, step: TrainingStep) -> None:
        """Log the batch loss, lr and our optimisers' per-step curvature record."""
        self._step = step.step
        if step.step % self.log_every:
            return
        metrics = {"train/batch_loss": step.loss, "train/lr": step.lr, "epoch": step.epoch}
        if not math.isnan(step.accuracy):
            metrics["train/batch_accuracy"] = step.accuracy
        curv = step_metrics(step.optimizer_info)
        if "curvature/top_ritz" in curv:
            curv["curvature/eos"] = self._eos(step.lr, _effective_curvature(step.optimizer_info))
        self.log({**metrics, **curv})

    def on_epoch_end(
        self,
        epoch: int,
        metrics: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Log the epoch's metrics and, every ``spectrum_every`` epochs, a full spectrum."""
        row = {f"epoch/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.spectrum_every and epoch % self.spectrum_every == 0:
            from diagnostics.spectrum import compute_eigenspectrum

            spectrum = compute_eigenspectrum(
                model,
                self.loss_fn,
                self.spectrum_data,
                curvature=self.curvature,
                lanczos_steps=self.lanczos_steps,
                bn_mode=self.bn_mode,
                seed=epoch,
            )
            row.update(self.spectrum_payload(spectrum, prefix="spectrum"))
            lr = float(optimizer.param_groups[0]["lr"])
            row["spectrum/eos"] = self._eos(lr, spectrum.lambda_max)
        self.log(row)

    def on_train_end(self, result: Any) -> None:
        """Close the run (unless ``finish_on_train_end`` is False)."""
        if self.finish_on_train_end:
            self.finish()

    # ----------------------------------------------------------------- results
    def spectrum_payload(self, spectrum: Any, prefix: str = "spectrum") -> dict[str, Any]:
        """W&B objects for a Spectrum: weighted histogram, stem-plot image and summaries."""
        from diagnostics.plots import plot_spectrum

        values = np.asarray(spectrum.ritz_values, dtype=np.float64)
        weights = np.asarray(spectrum.weights, dtype=np.float64)
        hist = np.histogram(values, bins=min(64, max(8, values.size)), weights=weights)
        figure = plot_spectrum(spectrum)
        trace, _ = spectrum.trace()
        return {
            f"{prefix}/ritz_histogram": self._wandb.Histogram(np_histogram=hist),
            f"{prefix}/stem": self._wandb.Image(_pixels(figure)),
            f"{prefix}/lambda_max": float(spectrum.lambda_max),
            f"{prefix}/lambda_min": float(spectrum.lambda_min),
            f"{prefix}/negative_mass": float(spectrum.negative_mass()),
            f"{prefix}/trace": float(trace),
        }

    def log_spectrum(self, spectrum: Any, prefix: str = "spectrum") -> None:
        """Log a Spectrum now."""
        self.log(self.spectrum_payload(spectrum, prefix))

    def log_landscape(self, landscape: Any, prefix: str = "landscape") -> None:
        """Log a Landscape as a ``wandb.Table`` (one row per direction and point) and a plot."""
        from diagnostics.plots import plot_landscape

        columns = ["direction", "ritz_value", "t", "train_loss", "quadratic", "train_acc"]
        columns += ["test_loss", "test_acc"]
        table = self._wandb.Table(columns=columns)
        for i, label in enumerate(landscape.labels):
            for j, t in enumerate(landscape.t):
                table.add_data(
                    label,
                    float(landscape.ritz_value[i]),
                    float(t),
                    *(float(getattr(landscape, k)[i, j]) for k in columns[3:]),
                )
        image = self._wandb.Image(_pixels(plot_landscape(landscape)))
        self.log({f"{prefix}/table": table, f"{prefix}/plot": image})

    def log_comparison(
        self, comparison: dict[str, Any], figure: Any = None, prefix: str = "diagonal"
    ) -> None:
        """Log a diagonal-versus-Lanczos comparison (see ``compare_to_spectrum``) as a table."""
        table = self._wandb.Table(columns=["quantity", "value"])
        for key, value in comparison.items():
            if isinstance(value, (int, float)):
                table.add_data(key, float(value))
        payload: dict[str, Any] = {f"{prefix}/comparison": table}
        if figure is not None:
            payload[f"{prefix}/plot"] = self._wandb.Image(_pixels(figure))
        self.log(payload)

    def finish(self) -> None:
        """Finish the run (idempotent)."""
        if self.run is not None:
            self.run.finish()
            self.run = None

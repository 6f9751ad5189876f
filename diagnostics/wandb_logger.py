r"""Weights & Biases logging of curvature during training (a training-harness callback).

What is logged:

* once, when training starts, the run's resolved configuration (``on_train_start``: model, data,
  optimiser keyword arguments and the learning rate actually used, schedule, ...);
* every ``log_every`` steps: the batch loss and learning rate; with our optimisers, their own
  per-step record at no extra cost (``curvature/top_ritz``, ``curvature/bottom_ritz``,
  ``curvature/negative_mass``, ``curvature/krylov_fraction``, ``optim/damping``,
  ``optim/products``, timings ...; with ``adaptive_damping``, the reduction ratio ``optim/rho``
  and the damping of the next step ``optim/next_damping``);
* every epoch: its metrics as ``epoch/...`` and the epoch number under the one key ``epoch``;
* the edge-of-stability indicator :math:`\eta\,\lambda_{\max}` (``curvature/eos``), with a
  warning once it passes ``eos_threshold`` (default 1.8; gradient descent on a quadratic diverges
  beyond 2). For our damped optimisers :math:`\lambda_{\max}` is replaced by the curvature the
  step meets, :math:`\max_i |\theta_i| / (|\theta_i| + \delta)`, and :math:`\eta` is always the
  learning rate in force when the curvature was measured;
* every ``spectrum_every`` epochs, for any optimiser, a full Lanczos spectrum on held-out data: a
  ``wandb.Histogram`` of the Ritz values weighted by their quadrature weights, the stem plot as a
  ``wandb.Image``, and its summaries;
* on request, landscapes and diagonal-versus-Lanczos comparisons as ``wandb.Table`` and images.

**Negative mass.** ``.../negative_mass`` is the spectral mass on the negative axis *without the
Ritz value nearest zero* (which stands for the spike of eigenvalues at zero and can carry most of
the mass, paper section 7.1); the raw mass, that Ritz value included, is ``.../negative_mass_raw``.

**Interruption and resume.** On SIGINT/SIGTERM (``on_interrupt``) the run's summary gets
``interrupted`` (True), ``interrupted_by`` (the signal), ``interrupted_after_epochs`` and
``interrupted_checkpoint``, the tag ``interrupted`` is added and the run finishes with exit code
255 (W&B's code for a keyboard interrupt). A logger created with that run's ``run_id`` continues
the same run (``resume="allow"``); a run that ends normally has ``interrupted`` False.

Mode: ``"online"`` when an API key is configured, otherwise ``"offline"`` (runs go to
``$WANDB_DIR/wandb/offline-run-*`` and can be synced later with ``wandb sync``); ``"disabled"``
writes nothing. The API key is never printed, logged or stored by this module.
"""

from __future__ import annotations

import contextlib
import math
import netrc
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from diagnostics.analysis._spectrum_summary import SpectrumSummaries
from diagnostics.training import Callback, TrainingStep
from diagnostics.training.epoch_spectra import (
    EPOCH_SPECTRUM_LANCZOS_STEPS,
    check_spectrum_settings,
)
from diagnostics.training.optimizers import differentiates_itself

__all__ = [
    "WANDB_MODES",
    "WandbLogger",
    "resolve_wandb_mode",
    "spectrum_step_curvature",
    "step_metrics",
]

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

    A ``$WANDB_MODE`` that is set but blank counts as unset.

    Raises:
        ValueError: If ``mode`` is not one of :data:`WANDB_MODES`.

    Example:
        >>> resolve_wandb_mode("disabled")
        'disabled'
    """
    if mode is None:  # a blank $WANDB_MODE (as CI templates leave it) counts as unset
        mode = os.environ.get("WANDB_MODE", "").strip()
        mode = mode or ("online" if _api_key_configured() else "offline")
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {WANDB_MODES}; got {mode!r}.")
    return mode


@contextlib.contextmanager
def _blank_wandb_mode_unset() -> Iterator[None]:
    """Hide a set-but-blank ``$WANDB_MODE`` from ``wandb.init`` (it refuses ``""``), as if unset."""
    value = os.environ.get("WANDB_MODE")
    blank = value is not None and not value.strip()
    if blank:
        del os.environ["WANDB_MODE"]
    try:
        yield
    finally:
        if blank:
            os.environ["WANDB_MODE"] = value  # type: ignore[assignment]


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


def spectrum_step_curvature(ritz_values: Any, optimizer: torch.optim.Optimizer) -> float:
    r"""The curvature a step of ``optimizer`` meets on a spectrum (times ``lr``: the EoS indicator).

    For gradient-type optimisers this is :math:`\lambda_{\max}`. Our damped Newton optimisers
    scale each eigendirection by :math:`1/(|\theta| + \delta)` of their own curvature (weight
    decay :math:`\lambda` included), so there it is
    :math:`\max_i |\theta_i + \lambda| / (|\theta_i + \lambda| + \delta)`, below 1.

    Args:
        ritz_values: The spectrum's Ritz values.
        optimizer: The optimiser (its first parameter group's ``damping``/``weight_decay``).

    Returns:
        The curvature.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> spectrum_step_curvature([-1.0, 4.0], opt)
        4.0
    """
    theta = torch.as_tensor(ritz_values, dtype=torch.float64)
    group = optimizer.param_groups[0]
    if not differentiates_itself(optimizer) or "damping" not in group:
        return float(theta.max())
    theta = (theta + float(group.get("weight_decay", 0.0))).abs()
    return float((theta / (theta + float(group["damping"]))).max())


class _StepMeasure(SpectrumSummaries):
    """One optimiser step's Ritz values and weights as a one-probe spectral measure."""

    def __init__(self, theta: np.ndarray, weights: np.ndarray) -> None:
        self.ritz_values, self.weights = theta, weights
        self.probe = np.zeros(theta.size, dtype=np.int64)
        self.num_probes, self.num_params = 1, 0


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
        "optim/rho": float(getattr(info, "rho", math.nan)),
        "optim/next_damping": float(getattr(info, "next_damping", math.nan)),
    }
    if theta.numel():
        out["curvature/top_ritz"] = float(theta.max())
        out["curvature/bottom_ritz"] = float(theta.min())
        if weights.numel() == theta.numel():
            measure = _StepMeasure(theta.numpy(), weights.numpy())
            out["curvature/negative_mass"] = measure.negative_mass(exclude_nearest_zero=True)
            out["curvature/negative_mass_raw"] = measure.negative_mass()
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def _check_settings(
    log_every: object,
    spectrum_every: object,
    spectrum_data: object,
    curvature: object,
    lanczos_steps: object,
    bn_mode: object,
    eos_threshold: object,
) -> tuple[str, int, str]:
    """Check the logger's settings when it is built (before W&B is started).

    Returns the checked ``(curvature, lanczos_steps, bn_mode)`` of the spectra.
    """
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be an int >= 1; got {log_every!r}.")
    every = 1 if spectrum_every is None else spectrum_every
    settings = check_spectrum_settings(
        every, curvature, lanczos_steps, bn_mode, name="spectrum_every"
    )
    if spectrum_every is not None and spectrum_data is None:
        raise ValueError("spectrum_every needs spectrum_data (the batches for the spectra).")
    bad = isinstance(eos_threshold, bool) or not isinstance(eos_threshold, (int, float))
    if bad or not 0.0 < eos_threshold < math.inf:  # type: ignore[operator]
        raise ValueError(f"eos_threshold must be a positive finite number; got {eos_threshold!r}.")
    return settings


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

    Every setting is checked here, before W&B is started (a ``ValueError`` naming the value),
    not when the first spectrum epoch ends.
        finish_on_train_end: Close the run when training ends (``False`` to log more after).
        run_id: W&B run id; with the id of an earlier run, that run is continued
            (``resume="allow"``). ``None``: a new id (``logger.run_id``).

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
        lanczos_steps: int = EPOCH_SPECTRUM_LANCZOS_STEPS,
        bn_mode: str = "eval",
        eos_threshold: float = 1.8,
        finish_on_train_end: bool = True,
        run_id: str | None = None,
    ) -> None:
        import wandb

        settings = _check_settings(
            log_every, spectrum_every, spectrum_data, curvature, lanczos_steps, bn_mode,
            eos_threshold,
        )  # fmt: skip
        self.mode = resolve_wandb_mode(mode)
        self.log_every = log_every
        self.spectrum_every = spectrum_every
        self.spectrum_data = spectrum_data
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.curvature, self.lanczos_steps, self.bn_mode = settings
        self.eos_threshold = eos_threshold
        self._eos_warned = False
        self.finish_on_train_end = finish_on_train_end
        self._step = 0
        self._wandb = wandb
        with _blank_wandb_mode_unset():
            self.run = wandb.init(
                project=project,
                name=name,
                config=config or {},
                mode=self.mode,
                # wandb caches its settings per process; read $WANDB_DIR at each init instead.
                dir=str(directory) if directory is not None else os.environ.get("WANDB_DIR"),
                reinit="create_new",
                id=run_id,
                resume="allow" if run_id is not None else None,
                # W&B would look for a git repository in the run folder (warning "git root ...
                # does not exist" when it is new); the provenance records what the run needs.
                settings=wandb.Settings(disable_git=True),
            )
        self.run_id: str | None = getattr(self.run, "id", None) or run_id

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
    def on_train_start(self, config: dict[str, Any]) -> None:
        """Record the run's resolved configuration (the learning rate actually used, ...)."""
        if self.run is not None:
            self.run.config.update(config, allow_val_change=True)

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
        row: dict[str, Any] = {
            f"epoch/{k}": v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and k != "epoch"
        }
        row["epoch"] = epoch
        self.log(row)
        if self.spectrum_every and epoch % self.spectrum_every == 0:
            from diagnostics.training.epoch_spectra import epoch_spectrum

            lr = float(metrics.get("lr", optimizer.param_groups[0]["lr"]))  # the harness: lr used
            spectrum = epoch_spectrum(
                model,
                self.spectrum_data,
                epoch,
                lr,
                loss_fn=self.loss_fn,
                curvature=self.curvature,
                lanczos_steps=self.lanczos_steps,
                bn_mode=self.bn_mode,
            )
            self.log_epoch_spectrum(spectrum, lr, optimizer)

    def log_epoch_spectrum(
        self, spectrum: Any, lr: float, optimizer: torch.optim.Optimizer, prefix: str = "spectrum"
    ) -> None:
        """Log a spectrum measured during training, with its edge-of-stability indicator.

        Args:
            spectrum: The :class:`~diagnostics.analysis.spectrum.Spectrum`.
            lr: The learning rate in force while the weights it was measured at were trained
                (the history row's ``lr``, not the optimiser's after the scheduler stepped).
            optimizer: The optimiser (see :func:`spectrum_step_curvature`).
            prefix: Key prefix.
        """
        row = self.spectrum_payload(spectrum, prefix=prefix)
        curvature = spectrum_step_curvature(spectrum.ritz_values, optimizer)
        row[f"{prefix}/step_curvature"] = curvature
        row[f"{prefix}/eos"] = self._eos(lr, curvature)
        self.log(row)

    def on_interrupt(self, interrupted: Any) -> None:
        """Mark the run as interrupted (summary, tag, exit code 255) and finish it."""
        if self.run is None:
            return
        checkpoint = getattr(interrupted, "checkpoint", None)
        self.run.summary.update(
            {
                "interrupted": True,
                "interrupted_by": getattr(interrupted, "signal_name", "KeyboardInterrupt"),
                "interrupted_after_epochs": getattr(interrupted, "epochs_done", None),
                "interrupted_checkpoint": str(checkpoint) if checkpoint is not None else None,
            }
        )
        self.run.tags = (*[t for t in self.run.tags or () if t != "interrupted"], "interrupted")
        self.finish(exit_code=255)

    def on_train_end(self, result: Any) -> None:
        """Close the run (unless ``finish_on_train_end`` is False); clear an interrupted mark."""
        if self.run is not None:
            self.run.summary["interrupted"] = False
            if "interrupted" in (self.run.tags or ()):
                self.run.tags = tuple(t for t in self.run.tags if t != "interrupted")
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
            f"{prefix}/negative_mass": float(spectrum.negative_mass(exclude_nearest_zero=True)),
            f"{prefix}/negative_mass_raw": float(spectrum.negative_mass()),
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

    def finish(self, exit_code: int | None = None) -> None:
        """Finish the run (idempotent); a non-zero ``exit_code`` marks it as failed in W&B."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

r"""Mini-batch statistics of a model's loss: loss, gradient and curvature variances, weight norms.

Over a data set of :math:`N` samples in batches :math:`b` with weights :math:`w_b = |b|/N`
(exact for a ragged last batch), a per-batch quantity :math:`x_b` (a number or a flat vector)
has the weighted mean and the weighted (population) variance

.. math::
    \bar x = \sum_b w_b x_b, \qquad
    \mathrm{Var}(x) = \sum_b w_b \|x_b - \bar x\|^2 = \sum_b w_b \|x_b\|^2 - \|\bar x\|^2 .

With equal batches this is the design notes' :math:`\mathrm{mean}\|x_b\|^2 - \|\bar x\|^2`;
for a vector it is the trace of the batch covariance. It is accumulated in float64 by West's
weighted Welford update, never by subtracting raw second moments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from diagnostics._progress import progress_bar
from lanczos_optim import (
    CURVATURES,
    NUM_PROBES,
    BatchWeights,
    LossFn,
    check_bn_mode,
    check_curvature,
    check_data,
    check_num_probes,
    check_scalar_loss,
    curvature_mode,
    flatten_tensors,
    ggn_product,
    hessian_product,
    iterate_batches,
    output_hessian_product,
    select_params,
    unflatten_vector,
)

__all__ = ["LossStatistics", "loss_statistics"]


class _WeightedMoments:
    """Weighted mean and summed squared deviation of scalars or vectors, in float64 (West 1979)."""

    def __init__(self) -> None:
        self.weight = 0.0
        self.mean: Tensor | None = None
        self.sq_dev = 0.0

    def add(self, x: Tensor, w: float) -> None:
        x = x.detach().to(torch.float64)
        if self.mean is None:
            self.weight, self.mean = w, x.clone()
            return
        old = self.weight
        self.weight += w
        delta = x - self.mean
        self.mean += delta * (w / self.weight)
        self.sq_dev += w * old / self.weight * float(delta.square().sum())

    def variance(self) -> float:
        return self.sq_dev / self.weight

    def mean_sq_norm(self) -> float:
        return float("nan") if self.mean is None else float(self.mean.square().sum())


@dataclass
class LossStatistics:
    r"""Statistics from :func:`loss_statistics`; curvature fields are ``None`` when skipped.

    Attributes:
        num_samples: :math:`N`, samples seen.
        num_batches: Batches seen.
        loss_mean: :math:`\bar\ell = \sum_b w_b \ell_b`.
        loss_var: :math:`\sum_b w_b (\ell_b - \bar\ell)^2`.
        grad_mean_sq_norm: :math:`\|\bar g\|^2`.
        grad_var: :math:`\sum_b w_b \|g_b - \bar g\|^2` (trace of the gradient covariance).
        hessian_mean_sq_norm: :math:`\|\bar H z\|^2`, averaged over probes.
        hessian_var: :math:`\sum_b w_b \|H_b z - \bar H z\|^2`, averaged over probes.
        hessian_mu: :math:`z^\top \bar H z`, averaged over probes.
        ggn_mean_sq_norm: As ``hessian_mean_sq_norm`` for the GGN.
        ggn_var: As ``hessian_var`` for the GGN.
        ggn_mu: As ``hessian_mu`` for the GGN.
        weight_l2: L2 norm of each named parameter.
        weight_linf: L-infinity norm of each named parameter.
        weight_l2_total: L2 norm of all parameters together.
        weight_linf_total: Largest absolute entry of all parameters.
        probes: The ``[num_probes, P]`` unit probes (float64), for reproduction.

    Example:
        >>> import torch
        >>> from diagnostics.analysis import loss_statistics
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(2, 1).double()
        >>> x, y = torch.randn(6, 2).double(), torch.randn(6, 1).double()
        >>> s = loss_statistics(model, torch.nn.MSELoss(), [(x[:3], y[:3]), (x[3:], y[3:])])
        >>> loss = torch.nn.functional.mse_loss(model(x), y).item()
        >>> s.num_samples, s.num_batches, abs(s.loss_mean - loss) < 1e-12
        (6, 2, True)
    """

    num_samples: int
    num_batches: int
    loss_mean: float
    loss_var: float
    grad_mean_sq_norm: float
    grad_var: float
    weight_l2: dict[str, float]
    weight_linf: dict[str, float]
    weight_l2_total: float
    weight_linf_total: float
    hessian_mean_sq_norm: float | None = None
    hessian_var: float | None = None
    hessian_mu: float | None = None
    ggn_mean_sq_norm: float | None = None
    ggn_var: float | None = None
    ggn_mu: float | None = None
    probes: Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, float]:
        """Return every computed statistic as a flat ``name -> float`` mapping.

        Per-parameter norms appear as ``weight_l2/<name>`` and ``weight_linf/<name>``.
        """
        out: dict[str, float] = {}
        for key, value in vars(self).items():
            if isinstance(value, (int, float)) and value is not None:
                out[key] = float(value)
        for kind in ("l2", "linf"):
            for name, value in getattr(self, f"weight_{kind}").items():
                out[f"weight_{kind}/{name}"] = value
        return out


def _curvature_products(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    params: Sequence[Tensor],
    probes: list[list[Tensor]],
    curvature: Sequence[str],
) -> tuple[Tensor, Tensor, dict[str, list[Tensor]]]:
    """One forward pass: batch loss, flat gradient and flat curvature-probe products."""
    outputs = model(x)
    loss = check_scalar_loss(loss_fn(outputs, y))
    products: dict[str, list[Tensor]] = {}
    grad = None
    if "hessian" in curvature:  # Hessian first: the GGN step frees the loss-to-output graph
        grad, prod = hessian_product(loss, params)
        products["hessian"] = [flatten_tensors(prod(z)) for z in probes]
    if "ggn" in curvature:
        h_out = output_hessian_product(loss_fn, outputs, y)
        g, prod = ggn_product(loss, outputs, params, h_out)
        grad = g if grad is None else grad
        products["ggn"] = [flatten_tensors(prod(z)) for z in probes]
    if grad is None:
        grad = torch.autograd.grad(loss, params, allow_unused=True)
        grad = [torch.zeros_like(p) if g is None else g for g, p in zip(grad, params, strict=True)]
    return loss.detach(), flatten_tensors(grad), products


class _Moments:
    """Weighted moments over the batches of the loss, the gradient and each probe's products."""

    def __init__(self, curvature: Sequence[str], num_probes: int) -> None:
        self.loss, self.grad = _WeightedMoments(), _WeightedMoments()
        self.curvature = {c: [_WeightedMoments() for _ in range(num_probes)] for c in curvature}
        self.num_batches = self.num_samples = 0

    def add(self, batch: tuple[Tensor, Tensor, dict[str, list[Tensor]]], w: float) -> None:
        """Add one batch's ``(loss, gradient, products)`` with weight ``w``.

        ``w`` is the batch's share of the loss's normaliser: its size, or for a class-weighted
        or ``ignore_index`` cross-entropy the class weights of its non-ignored targets.
        """
        loss, grad, prods = batch
        self.loss.add(loss, w)
        self.grad.add(grad, w)
        for c, vecs in prods.items():
            for acc, v in zip(self.curvature[c], vecs, strict=True):
                acc.add(v, w)
        self.num_batches += 1


def _weight_norms(names: Sequence[str], params: Sequence[Tensor]) -> dict[str, Any]:
    """Per-parameter and total L2 and max norms of the weights, in float64."""
    with torch.no_grad():
        flat = [p.detach().to(torch.float64).reshape(-1) for p in params]
        pairs = list(zip(names, flat, strict=True))
        l2 = {n: float(f.norm()) for n, f in pairs}
        linf = {n: float(f.abs().max()) if f.numel() else 0.0 for n, f in pairs}
    return {
        "weight_l2": l2,
        "weight_linf": linf,
        "weight_l2_total": float(torch.cat(flat).norm()),
        "weight_linf_total": max(linf.values()),
    }


def loss_statistics(
    model: nn.Module,
    loss_fn: LossFn,
    data: object,
    *,
    bn_mode: str = "eval",
    num_probes: int = NUM_PROBES,
    curvature: Sequence[str] = CURVATURES,
    seed: int | None = None,
    params: Iterable[Tensor] | None = None,
    progress: bool = False,
    reduction: str | None = None,
) -> LossStatistics:
    r"""Loss, gradient and curvature statistics over the mini-batches of ``data``.

    With batch weights :math:`w_b = |b|/N`, batch losses :math:`\ell_b`, batch gradients
    :math:`g_b`, batch curvatures :math:`C_b` (Hessian or GGN) and unit probes :math:`z`:

    .. math::
        \mathrm{Var}(\ell) = \sum_b w_b (\ell_b - \bar\ell)^2, \quad
        \mathrm{Var}(g) = \sum_b w_b \|g_b\|^2 - \|\bar g\|^2, \quad
        \mathrm{Var}(C) = \sum_b w_b \|C_b z\|^2 - \|\bar C z\|^2, \quad
        \mu = z^\top \bar C z,

    each evaluated stably (float64 Welford) rather than by the subtraction shown. Curvature
    values are averaged over the probes. Weight norms are per named parameter and in total.

    Args:
        model: The network; its parameters, buffers and train/eval flags are left unchanged.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch-mean loss.
        data: One ``(inputs, targets)`` batch or a re-iterable of them (list, DataLoader).
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        num_probes: Number of random unit probes :math:`z` for the curvature statistics.
        curvature: Any of ``"hessian"`` and ``"ggn"``; empty to skip curvature.
        seed: Seed of the probes (``None``: fresh randomness).
        params: Parameters to use (default: all trainable parameters).
        progress: Show a progress bar of the batches on stderr (only when it is a terminal).
        reduction: ``"mean"`` for a loss that states no reduction (a lambda); ``None`` reads
            it from the loss or checks it on the first batch. Batch :math:`b` weighs
            :math:`w_b = W_b / W`, its share of the loss's normaliser: :math:`|b|/N`, or the
            class weights of its non-ignored targets for a weighted cross-entropy, so that
            :math:`\bar\ell` and :math:`\bar g` are the loss and gradient of the whole data.

    Returns:
        A :class:`LossStatistics`.

    Raises:
        ValueError: On empty data, an unknown ``bn_mode`` or curvature, ``num_probes < 1``, or
            a loss with ``reduction="sum"``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1).double()
        >>> x, y = torch.randn(10, 3).double(), torch.randn(10, 1).double()
        >>> stats = loss_statistics(model, torch.nn.MSELoss(), [(x[:5], y[:5]), (x[5:], y[5:])])
        >>> stats.num_samples, stats.loss_var >= 0
        (10, True)
    """
    check_bn_mode(bn_mode)
    curvature = (curvature,) if isinstance(curvature, str) else tuple(curvature)
    for c in curvature:
        check_curvature(c)
    num_probes = check_num_probes(num_probes)
    data = check_data(data)
    chosen, names = select_params(model, params)
    dtype, device = chosen[0].dtype, chosen[0].device
    weights = BatchWeights(loss_fn, reduction, data, dtype, mean_only="loss_statistics")
    dim = sum(p.numel() for p in chosen)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    probes = torch.randn(num_probes, dim, generator=gen, dtype=torch.float64, device="cpu")
    probes /= probes.norm(dim=1, keepdim=True)
    probe_lists = [unflatten_vector(z.to(device, dtype), chosen) for z in probes]
    total = len(data) if hasattr(data, "__len__") else None
    bar = progress_bar(total, "statistics", enabled=progress, unit="batch")
    with bar, torch.enable_grad(), curvature_mode(model, bn_mode):
        moments = _Moments(curvature, num_probes)
        for x, y, n in iterate_batches(data, device, dtype):
            bar.update()
            w = float(weights(lambda x=x: model(x), y, n))
            moments.num_samples += n
            if w == 0.0:  # every target ignored: the batch has no loss (0/0)
                moments.num_batches += 1
                continue
            moments.add(
                _curvature_products(model, loss_fn, x, y, chosen, probe_lists, curvature), w
            )
    if moments.num_batches == 0:
        raise ValueError("data is empty: it yielded no samples.")
    if moments.loss.mean is None:
        raise ValueError("Every target of data is ignore_index (or of class weight 0).")
    stats = LossStatistics(
        num_samples=moments.num_samples,
        num_batches=moments.num_batches,
        loss_mean=float(moments.loss.mean),
        loss_var=moments.loss.variance(),
        grad_mean_sq_norm=moments.grad.mean_sq_norm(),
        grad_var=moments.grad.variance(),
        probes=probes,
        **_weight_norms(names, chosen),
    )
    curv_m = moments.curvature
    for c, accs in curv_m.items():
        setattr(stats, f"{c}_mean_sq_norm", sum(a.mean_sq_norm() for a in accs) / num_probes)
        setattr(stats, f"{c}_var", sum(a.variance() for a in accs) / num_probes)
        mu = sum(float(z @ a.mean.cpu()) for z, a in zip(probes, accs, strict=True))
        setattr(stats, f"{c}_mu", mu / num_probes)
    return stats

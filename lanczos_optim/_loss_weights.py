r"""How a loss reduces over a batch, so that the batches of a data set are weighted exactly.

A loss with ``reduction="mean"`` on batch :math:`b` is :math:`L_b = S_b / W_b`, a sum
:math:`S_b` over the batch divided by a normaliser :math:`W_b`. The loss of the whole data is
:math:`L = \sum_b S_b / \sum_b W_b = \sum_b (W_b / W) L_b`, so batch :math:`b` weighs
:math:`W_b / W`. :math:`W_b` is the sample count for every torch loss except cross-entropy and
NLL with class-index targets, where it is :math:`\sum_{i: y_i \ne \text{ignore}} w_{y_i}`
(class weights, ignored targets). With ``reduction="sum"`` every batch weighs 1.

A loss whose reduction cannot be read (a plain function, a lambda) is checked once on a batch:
its value is compared with the mean and with the sum of the values of the batch's two halves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lanczos_optim._graph_products import check_scalar_loss

#: Reductions a data-set curvature can be built from.
REDUCTIONS = ("mean", "sum")

#: Functional losses whose keywords say how they reduce (``functools.partial`` of them).
_FUNCTIONAL = {
    F.cross_entropy: True,
    F.nll_loss: True,
    F.mse_loss: False,
    F.l1_loss: False,
    F.smooth_l1_loss: False,
    F.huber_loss: False,
    F.binary_cross_entropy: False,
    F.binary_cross_entropy_with_logits: False,
    F.kl_div: False,
}


@dataclass(frozen=True)
class LossReduction:
    """How ``loss_fn`` reduces a batch: its reduction and, for class losses, the normaliser.

    Attributes:
        reduction: ``"mean"``, ``"sum"``, or ``None`` when it could not be read.
        by_class: Cross-entropy or NLL: the mean divides by the class weights of the
            non-ignored class-index targets.
        class_weight: The ``weight=`` of a class loss, or ``None``.
        ignore_index: The ``ignore_index`` of a class loss.
        stated: Whether the loss itself states the reduction (``False`` when it was given as
            ``reduction=`` or found by :func:`detect_reduction`).
    """

    reduction: str | None
    by_class: bool = False
    class_weight: Tensor | None = None
    ignore_index: int = -100
    stated: bool = True

    def batch_weight(self, targets: object, n: int, single: bool = False) -> Tensor | float:
        r"""The batch's normaliser :math:`W_b`: its weight in the data-set mean.

        For a sum it is 1, or 0 for a batch of class targets that are all ignored (or of
        class weight 0), whose loss and curvature are zero: such a batch is skipped.

        Raises:
            ValueError: For a mean the loss does not state, over several batches (not
                ``single``), with negative class targets: their count is unknown.
        """
        class_targets = (
            self.by_class and isinstance(targets, Tensor) and not targets.is_floating_point()
        )
        if self.reduction == "mean" and not (self.stated or single) and _negative(targets):
            raise ValueError(
                f"targets hold class index {int(targets.min())} (ignore_index padding?), so the "
                "mean of a loss that states no reduction divides by an unknown count; use "
                "nn.CrossEntropyLoss/nn.NLLLoss (or functools.partial of F.cross_entropy), a "
                "sum-reduced loss, or give the data as one batch."
            )
        if self.reduction == "sum":
            return (self._class_sum(targets) > 0).double() if class_targets else 1.0
        if class_targets:
            return self._class_sum(targets)
        if self.by_class and isinstance(targets, Tensor):  # probabilities: mean over positions
            return float(targets.numel() // targets.shape[1]) if targets.ndim > 1 else 1.0
        return float(n)

    def _class_sum(self, targets: Tensor) -> Tensor:
        keep = targets != self.ignore_index
        if self.class_weight is None:
            return keep.sum(dtype=torch.float64)
        w = self.class_weight.to(targets.device, torch.float64)
        return w[targets[keep]].sum()


def _negative(targets: object) -> bool:
    """Integer targets with a negative entry: only an ``ignore_index`` can be negative."""
    return (
        isinstance(targets, Tensor)
        and not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
        and targets.numel() > 0
        and bool((targets < 0).any())
    )


def _read(loss_fn: object) -> LossReduction:
    """The reduction that ``loss_fn`` states (``None`` when it states none)."""
    if isinstance(loss_fn, functools.partial) and loss_fn.func in _FUNCTIONAL:
        kw = loss_fn.keywords
        if loss_fn.args or "size_average" in kw or "reduce" in kw:
            return LossReduction(None)
        by_class = _FUNCTIONAL[loss_fn.func]
        return LossReduction(
            _normal(kw.get("reduction", "mean")),
            by_class,
            kw.get("weight") if by_class else None,
            kw.get("ignore_index", -100),
        )
    reduction = getattr(loss_fn, "reduction", None)
    if not isinstance(reduction, str) or _normal(reduction) not in REDUCTIONS:
        return LossReduction(None)  # e.g. a custom loss saying "none" but returning a sum
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return LossReduction(_normal(reduction), True, loss_fn.weight, int(loss_fn.ignore_index))
    return LossReduction(_normal(reduction))


def _normal(reduction: str) -> str:
    return "mean" if reduction == "batchmean" else reduction


def resolve_reduction(loss_fn: object, reduction: object = None) -> LossReduction:
    """How ``loss_fn`` reduces, from its ``reduction`` (attribute or keyword) or ``reduction=``.

    Raises:
        ValueError: If ``reduction`` is not ``None``, ``"mean"`` or ``"sum"``, or contradicts
            the reduction ``loss_fn`` states.
    """
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be None, 'mean' or 'sum'; got {reduction!r}.")
    read = _read(loss_fn)
    if reduction is None or read.reduction is None:
        return read if reduction is None else LossReduction(reduction, stated=False)
    if read.reduction != reduction:
        raise ValueError(
            f"reduction={reduction!r} contradicts the loss's own reduction={read.reduction!r}."
        )
    return read


def single_batch(data: object) -> bool:
    """Whether ``data`` holds one batch (a list, tuple or DataLoader of length 1)."""
    try:
        return len(data) == 1  # type: ignore[arg-type]
    except TypeError:  # no length (an IterableDataset's loader)
        return False


def _close(a: float, b: float, scale: float, tol: float) -> bool:
    return abs(a - b) <= tol * scale


def detect_reduction(
    loss_fn: object, outputs: Tensor | object, targets: object, dtype: torch.dtype
) -> str:
    r"""``"mean"`` or ``"sum"``, from the loss of a batch against those of its two halves.

    With :math:`L`, :math:`L_1`, :math:`L_2` the losses of the batch (size :math:`n`) and of its
    halves (sizes :math:`n_1, n_2`): a mean satisfies :math:`L = (n_1 L_1 + n_2 L_2)/n`, a sum
    :math:`L = L_1 + L_2`. Costs three loss evaluations on the detached outputs. With class
    targets, a mean is also checked on a split by class (the samples of the first sample's
    class, and the rest), which a class-weighted mean fails: two more evaluations.

    Raises:
        ValueError: If the batch cannot be halved, neither (or both) hold, or its class
            targets are all one class.
    """
    hint = (
        "loss_fn states no reduction, so its batches cannot be weighted; pass reduction='mean' "
        "or 'sum' to the operator, or give the data as one batch"
    )
    if not isinstance(outputs, Tensor) or not isinstance(targets, Tensor):
        raise ValueError(f"{hint} (the outputs or targets are not tensors).")
    n = int(outputs.shape[0]) if outputs.ndim else 0
    if n < 2 or targets.ndim == 0 or targets.shape[0] != n:
        raise ValueError(f"{hint} (its first batch of {n} cannot be split to check it).")
    halves = torch.arange(n, device=outputs.device) < n // 2
    is_mean, is_sum = _split_agrees(loss_fn, outputs, targets, halves, dtype)
    if is_mean and not is_sum and targets.ndim == 1 and not targets.is_floating_point():
        # Class targets: a class-weighted mean passes the halves check when their class mix is
        # alike, so split by class as well (a batch of one class cannot rule weights out).
        same = targets == targets[0]
        if bool(same.all()):
            raise ValueError(f"{hint} (its first batch holds class {int(targets[0])} only).")
        is_mean = _split_agrees(loss_fn, outputs, targets, same, dtype)[0]
    if is_mean != is_sum:
        return "mean" if is_mean else "sum"
    what = "both the mean and" if is_mean else "neither the mean nor"
    raise ValueError(f"{hint}: its value on a batch is {what} the sum of its halves' values.")


def _split_agrees(
    loss_fn: object, outputs: Tensor, targets: Tensor, part: Tensor, dtype: torch.dtype
) -> tuple[bool, bool]:
    """Whether the batch's loss is the mean, and the sum, of its two parts' (``part``, rest)."""
    n, k = part.numel(), int(part.sum())
    rest = ~part
    with torch.no_grad():
        whole = float(check_scalar_loss(loss_fn(outputs, targets)))  # type: ignore[operator]
        first = float(loss_fn(outputs[part], targets[part]))  # type: ignore[operator]
        second = float(loss_fn(outputs[rest], targets[rest]))  # type: ignore[operator]
    scale = abs(whole) + abs(first) + abs(second)
    tol = math.sqrt(torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-6
    is_mean = _close(whole, (k * first + (n - k) * second) / n, scale, tol)
    return is_mean, _close(whole, first + second, scale, tol)


class BatchWeights:
    r"""The normalisers :math:`W_b` of the batches of one pass over data (for the diagnostics).

    A loss that states no reduction is checked with :func:`detect_reduction` on the first batch
    of multi-batch data, on outputs computed under ``no_grad`` (one extra forward).

    Args:
        loss_fn: The loss.
        reduction: ``None``, ``"mean"`` or ``"sum"`` (see :func:`resolve_reduction`).
        data: The data (a list or tuple of one batch needs no reduction).
        dtype: The dtype of the computation (sets the check's tolerance).
        mean_only: Name of a caller that needs batch means: a sum is refused.

    Example:
        A class-weighted cross-entropy with padding: a batch weighs the class weights of its
        targets other than ``ignore_index``, not its sample count.

        >>> import torch
        >>> from lanczos_optim import BatchWeights
        >>> loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]), ignore_index=-100)
        >>> y = torch.tensor([0, 1, -100])
        >>> data = [(torch.zeros(3, 2), y), (torch.zeros(2, 2), y[:2])]
        >>> w = BatchWeights(loss_fn, None, data, torch.float32)
        >>> float(w(lambda: None, y, 3)), float(w(lambda: None, y[:2], 2))
        (4.0, 4.0)
    """

    def __init__(
        self,
        loss_fn: object,
        reduction: object,
        data: object,
        dtype: torch.dtype,
        mean_only: str | None = None,
    ) -> None:
        self.loss_fn, self.dtype, self.mean_only = loss_fn, dtype, mean_only
        self.single = single_batch(data)
        self.reduction = self._checked(resolve_reduction(loss_fn, reduction))

    def _checked(self, red: LossReduction) -> LossReduction:
        if self.mean_only and red.reduction == "sum":
            raise ValueError(f"{self.mean_only} compares batch-mean losses; got reduction='sum'.")
        return red

    def __call__(self, outputs: Callable[[], object], targets: object, n: int) -> Tensor | float:
        """:math:`W_b` of a batch of ``n`` samples; ``outputs()`` gives its outputs if needed."""
        if self.reduction.reduction is None:
            if self.single:
                return float(n)
            with torch.no_grad():
                found = detect_reduction(self.loss_fn, outputs(), targets, self.dtype)
            self.reduction = self._checked(resolve_reduction(self.loss_fn, found))
        return self.reduction.batch_weight(targets, n, self.single)

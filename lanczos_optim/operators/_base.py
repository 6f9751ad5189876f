"""Shared machinery of the curvature operators: data handling, sample weighting, reduction."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import closing

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call

from lanczos_optim._determinism import DataFingerprint, check_loader
from lanczos_optim._graph_products import Product, check_scalar_loss
from lanczos_optim._loss_weights import detect_reduction, resolve_reduction, single_batch
from lanczos_optim._model_state import check_bn_mode, curvature_mode
from lanczos_optim._outputs import (
    OutputSelector,
    check_selector,
    select_outputs,
    takes_tensor,
)
from lanczos_optim._precision import (
    check_precision,
    forward_precision,
    outputs_in,
    product_precision,
)
from lanczos_optim.flatten import flatten_tensors, unflatten_vector
from lanczos_optim.operators._data import (
    LossFn,
    check_data,
    is_batch,
    iterate_batches,
    select_params,
)
from lanczos_optim.operators._graph_cache import CachedBatches, GraphCache


def _weightless(weight: Tensor | float) -> bool:
    """A batch whose every target is ignored: no term (its mean loss is 0/0)."""
    return isinstance(weight, Tensor) and not bool(weight > 0)


class CurvatureOperator:
    r"""A symmetric curvature matrix of a model's loss as a linear operator on the flat parameters.

    Over a data set split into batches :math:`b` with batch-mean losses
    :math:`L_b = S_b / W_b` (a sum over the batch divided by its normaliser), the operator is
    the curvature of the data-set loss :math:`L = \sum_b S_b / W`, :math:`W = \sum_b W_b`:

    .. math::
        C = \sum_b \frac{W_b}{W} C_b ,

    so a short last batch is weighted correctly. :math:`W_b` is the batch's sample count
    :math:`|b|`, except for ``nn.CrossEntropyLoss``/``nn.NLLLoss`` (and ``functools.partial``
    of ``F.cross_entropy``/``F.nll_loss``) with class-index targets, where it is the sum of the
    class weights of its targets other than ``ignore_index`` (as torch's own mean), so class
    weights and padding are exact across batches. With ``reduction="sum"``,
    :math:`C = \sum_b C_b`. Under ``torch.distributed`` the batch sums and normalisers are
    all-reduced over ranks, each rank holding a shard of the data.

    The reduction is read from the loss (its ``reduction`` attribute, or the keywords of a
    ``functools.partial`` of a torch functional loss) or given as ``reduction=``. A loss that
    states none (a lambda, a plain function) is checked on the first batch of multi-batch
    data: its value against the mean and the sum of its two halves' values (three loss
    evaluations on outputs already computed); when it is neither (a weighted mean, say), the
    normaliser cannot be known and the operator refuses with a ``ValueError``, as it does for
    such a mean over batches whose class targets are negative (``ignore_index`` padding, whose
    count it divides by). One batch needs no reduction.

    A loss linear in the model's outputs (``NLLLoss`` or ``KLDivLoss`` on log-probabilities)
    has a zero output Hessian: on log-probability outputs the GGN is that of the same loss on
    ``log_softmax`` of the outputs (the same value and gradient), i.e. the softmax GGN; on
    other outputs the GGN refuses with a ``ValueError`` instead of returning zero.

    The data must be the same on every pass (every product is one pass): a DataLoader with a
    random sampler is refused at once, and every pass over data other than a list of batches
    fingerprints its batches (float64 sums and position-weighted sums of the inputs and
    targets, one extra read) and is compared with the first at its end, which catches random
    augmentation and shuffling through a custom sampler. ``check_deterministic=False`` turns
    both checks off.

    Models may return a dict, a tuple or a Hugging Face ``ModelOutput``: ``outputs=`` selects
    the tensor the loss takes (a key, an index, or a function); by default a mapping's
    ``"logits"`` entry, and any other structure is passed whole to the loss for the Hessian
    (unless the loss is one of torch's own) and refused for the GGN. Inputs may be a dict of
    tensors, passed as ``model(**inputs)``.

    With ``cache_graphs``, each batch's autograd graph is built once and every later product is
    a backward pass through it (for the Hessian on the CNN of ``benchmarks/engine.py``, CPU:
    1.61 gradient passes per product instead of 2.69; see the benchmark tables); the graphs
    stay in memory while the operator lives or until
    :meth:`clear_cache`, and are rebuilt automatically when a parameter or buffer of the model (or
    a tensor of a list of batches) changes.

    Subclasses implement :meth:`_build_product`, and may override :meth:`_batch_products` with
    a faster way to multiply a batch's curvature when its graph is not kept.

    Args:
        model: The network.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar with ``reduction="mean"``
            (per-batch mean, the default of torch losses) or ``"sum"`` (then :math:`C=\sum_b C_b`).
        data: One ``(inputs, targets)`` batch or a re-iterable of them, such as a DataLoader.
        params: Parameters to differentiate (default: every parameter with ``requires_grad``).
        bn_mode: ``"eval"`` (BatchNorm uses running statistics) or ``"train"`` (batch
            statistics). Buffers and train/eval flags are restored exactly after every product.
        distributed: Reduce over ranks; default: when ``torch.distributed`` is initialised.
        cache_graphs: Keep each batch's graph between products. Default (``None``): when
            ``data`` is one batch, whose graph a product holds anyway. ``True`` for several
            batches costs the memory of all their graphs at once; the data are then read once.
        cache_check: How kept graphs are checked before each product. ``"fast"`` (default):
            tensor identity, autograd version counters and storage of the parameters, buffers
            and listed data, checksums of the buffers (BatchNorm running statistics change
            without a version bump), and whether any ``torch.optim`` optimiser has stepped
            since the graphs were built (fused optimisers write without a version bump).
            ``"full"``: also checksums of every parameter and listed data tensor (one read of
            them per product), which catches writes that bypass autograd, such as
            ``p.data.copy_(...)`` or a NumPy array refilled behind the inputs.
        reduction: ``"mean"`` or ``"sum"`` for a loss that does not state its reduction
            (``None``: read it from the loss, or check it); must agree with the loss's own.
        outputs: Selects the tensor the loss takes from structured model outputs (a key, an
            index or a function; ``None``: a mapping's ``"logits"``).
        check_deterministic: Refuse data that differ between passes (default ``True``).
        precision: Arithmetic of the products. ``"highest"`` (default): the operator's dtype
            with TF32 off, also for cuDNN convolutions. ``"tf32"``: float32 matrix products
            and convolutions in TF32 on CUDA (no effect on the CPU). ``"bf16"``: the forward
            pass under bfloat16 autocast (the backward passes follow its dtypes); the outputs,
            the loss, its Hessian and the returned products stay in the operator's dtype.
            The accuracy each setting reached is in the benchmark tables
            (``benchmarks/step_cost.py``).

    Example:
        >>> import torch
        >>> from lanczos_optim import HessianOperator
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> H = HessianOperator(model, torch.nn.MSELoss(), [(x[:5], y[:5]), (x[5:], y[5:])])
        >>> isinstance(H, CurvatureOperator), tuple(H.shape)
        (True, (3, 3))
        >>> # batches of 5 and 3 samples, weighted by size: the Hessian of the mean over all 8
        >>> bool(torch.allclose(H @ torch.eye(3, dtype=torch.float64), 2 * x.T @ x / 8))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: object,
        *,
        params: Iterable[Tensor] | None = None,
        bn_mode: str = "eval",
        distributed: bool | None = None,
        cache_graphs: bool | None = None,
        cache_check: str = "fast",
        precision: str = "highest",
        reduction: str | None = None,
        outputs: OutputSelector = None,
        check_deterministic: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # products reduce over ranks themselves
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}.")
        self.model = model
        self.loss_fn = loss_fn
        self.bn_mode = check_bn_mode(bn_mode)
        self.data = check_data(data)
        if not isinstance(check_deterministic, bool):
            raise TypeError(f"check_deterministic must be a bool; got {check_deterministic!r}.")
        self.check_deterministic = check_deterministic
        if check_deterministic:
            check_loader(self.data)
        self._fingerprint = DataFingerprint()
        self.outputs = check_selector(outputs)
        self._reduction = resolve_reduction(loss_fn, reduction)
        if cache_graphs is not None and not isinstance(cache_graphs, bool):
            raise TypeError(f"cache_graphs must be True, False or None; got {cache_graphs!r}.")
        self.cache_graphs = is_batch(data) if cache_graphs is None else cache_graphs
        self._cache = GraphCache(cache_check)
        self.precision = check_precision(precision)
        self.params, self.param_names = select_params(model, params)
        self.distributed = distributed
        self.num_samples: int | None = None
        #: Number of operator-vector products computed so far (columns of ``matmat`` count each).
        self.num_products = 0
        p = self.params[0]
        dim = sum(q.numel() for q in self.params)
        self.shape = (dim, dim)
        self.dtype = p.dtype
        self.device = p.device

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.shape[0]}, dtype={self.dtype}, "
            f"device={self.device}, bn_mode={self.bn_mode!r}, cache_graphs={self.cache_graphs})"
        )

    @property
    def _sum_reduction(self) -> bool:
        return self._reduction.reduction == "sum"

    def _batches(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        batches = iterate_batches(self.data, self.device, self.dtype)
        # A list of batches is fixed (the user's own writes to it are seen by the graph
        # cache); a loader or other iterable is fingerprinted on every pass.
        if self.check_deterministic and not isinstance(self.data, (list, tuple)):
            batches = self._fingerprint.watch(batches)
        return batches

    def _single_batch(self) -> bool:
        return single_batch(self.data)

    def _resolve_reduction(self) -> None:
        """Check the reduction of a loss that states none on the first batch (one forward)."""
        if self._reduction.reduction is not None or self._single_batch():
            return
        for x, y, _ in iterate_batches(self.data, self.device, self.dtype):
            with torch.no_grad(), curvature_mode(self.model, self.bn_mode):
                outputs = self._forward(x)
            found = detect_reduction(self.loss_fn, outputs, y, self.dtype)
            self._reduction = resolve_reduction(self.loss_fn, found)
            return

    def _batch_weight(self, y: object, n: int) -> Tensor | float:
        if self._reduction.reduction is None:  # one batch: its weight cancels
            return float(n)
        return self._reduction.batch_weight(y, n, self._single_batch())

    def _forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """The model's outputs, with ``params`` (by name) in place of its own if given."""
        state = dict(params or {})
        if self.bn_mode == "train":
            # Batch statistics would update the running ones in place, and BatchNorm's backward
            # reads those: run on copies so that the model is untouched and a kept graph valid.
            state.update({n: b.clone() for n, b in self.model.named_buffers()})
        args, kwargs = ((), x) if isinstance(x, Mapping) else ((x,), {})
        with forward_precision(self.precision, self.device):
            if state:
                out = functional_call(self.model, state, args, kwargs)
            else:
                out = self.model(*args, **kwargs)
        need_tensor = self._needs_output_tensor or takes_tensor(self.loss_fn)
        out = select_outputs(out, self.outputs, need_tensor=need_tensor, who=type(self).__name__)
        return outputs_in(out, self.dtype) if isinstance(out, Tensor) else out

    #: Whether the curvature needs the model's output tensor (the GGN) or only the loss.
    _needs_output_tensor = True

    def _batch_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self._forward(x)
        return check_scalar_loss(self.loss_fn(outputs, y)), outputs

    def _batch_products(
        self, x: Tensor, y: Tensor, columns: list[list[Tensor]]
    ) -> list[list[Tensor]]:
        """Products of the batch's curvature with ``columns``, building the batch's graph."""
        product = self._build_product(x, y)
        return [product(col) for col in columns]

    def _build_product(self, x: Tensor, y: Tensor) -> Product:
        """Build the batch's graph and return ``v -> C_b v`` on it (used by the cache)."""
        raise NotImplementedError

    def clear_cache(self) -> None:
        """Free the cached graphs (the next product rebuilds them when ``cache_graphs``)."""
        self._cache.clear()

    def _cached_batches(self) -> CachedBatches | None:
        def build() -> CachedBatches:
            with torch.enable_grad(), curvature_mode(self.model, self.bn_mode):
                entries: CachedBatches = []
                for x, y, n in self._batches():
                    w = self._batch_weight(y, n)
                    entries.append((None if _weightless(w) else self._build_product(x, y), n, w))
                return entries

        return self._cache.get(self.model, self.data, build)

    def _is_distributed(self) -> bool:
        if self.distributed is None:
            return dist.is_available() and dist.is_initialized()
        return self.distributed

    def sync_vector(self, vector: Tensor) -> Tensor:
        """Return rank 0's copy of ``vector`` on every rank (a no-op in a single process).

        Lanczos calls this on its start vector so that all ranks run the same recurrence.
        """
        if self._is_distributed():
            vector = vector.clone()
            dist.broadcast(vector, src=0)
        return vector

    def _reduce(self, acc: Tensor, count: int, weight: Tensor) -> tuple[Tensor, int, Tensor]:
        if not self._is_distributed():
            return acc, count, weight
        extra = torch.stack([acc.new_tensor(float(count)), weight.to(acc)])
        flat = torch.cat([acc.reshape(-1), extra])
        dist.all_reduce(flat)
        return flat[:-2].view_as(acc), round(float(flat[-2])), flat[-1]

    def _accumulate(
        self,
        terms: Callable[[], Generator[tuple[Tensor | None, int, Tensor | float]]],
        width: int,
        rows: int | None = None,
    ) -> Tensor:
        """Weighted sum of the per-batch ``[rows, width]`` terms ``(value, size, weight)``.

        A batch of weight 0 (every target ignored: its mean loss is 0/0) has no value.
        """
        rows = self.shape[0] if rows is None else rows
        acc = torch.zeros(rows, width, dtype=self.dtype, device=self.device)
        weight = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        # closing(): the generator's own clean-up (restoring the model) runs now, also on errors.
        with torch.enable_grad(), closing(terms()) as values:
            for value, n, w in values:
                if value is not None:
                    acc += value * (w.to(value.dtype) if isinstance(w, Tensor) else w)
                    weight += w
                count += n
        acc, count, weight = self._reduce(acc, count, weight)
        if count == 0:
            raise ValueError("data is empty: it yielded no samples.")
        self.num_samples = count
        if self._sum_reduction:
            return acc
        if self._reduction.by_class and not bool(weight > 0):
            raise ValueError("Every target of data is ignore_index (or of class weight 0).")
        return acc / weight.to(acc.dtype)

    def _over_batches(
        self, per_batch: Callable[[Tensor, Tensor], Tensor]
    ) -> Callable[[], Generator[tuple[Tensor, int]]]:
        def terms() -> Generator[tuple[Tensor | None, int, Tensor | float]]:
            with curvature_mode(self.model, self.bn_mode):
                for x, y, n in self._batches():
                    w = self._batch_weight(y, n)
                    yield None if _weightless(w) else per_batch(x, y), n, w

        return terms

    def matmat(self, matrix: Tensor) -> Tensor:
        """Multiply the operator onto the columns of a ``[P, K]`` matrix."""
        if matrix.ndim != 2 or matrix.shape[0] != self.shape[0]:
            raise ValueError(
                f"matmat expects shape ({self.shape[0]}, K); got {tuple(matrix.shape)}."
            )
        self._resolve_reduction()
        with product_precision(self.precision):
            return self._matmat(matrix.to(self.device, self.dtype))

    def _matmat(self, matrix: Tensor) -> Tensor:
        columns = [unflatten_vector(matrix[:, k], self.params) for k in range(matrix.shape[1])]

        def stack(prods: list[list[Tensor]]) -> Tensor:
            return torch.stack([flatten_tensors(p) for p in prods], dim=1)

        # None when caching is off or unsafe (sparse or inference tensors): rebuild per call.
        batches = self._cached_batches() if self.cache_graphs else None
        if batches is not None:

            def terms() -> Generator[tuple[Tensor | None, int, Tensor | float]]:
                for product, n, w in batches:
                    yield None if product is None else stack([product(c) for c in columns]), n, w

        else:
            terms = self._over_batches(lambda x, y: stack(self._batch_products(x, y, columns)))
        result = self._accumulate(terms, matrix.shape[1])
        self.num_products += matrix.shape[1]
        return result

    def matvec(self, vector: Tensor) -> Tensor:
        """Multiply the operator onto a ``[P]`` vector."""
        if vector.ndim != 1 or vector.shape[0] != self.shape[0]:
            raise ValueError(f"matvec expects shape ({self.shape[0]},); got {tuple(vector.shape)}.")
        return self.matmat(vector[:, None])[:, 0]

    def __matmul__(self, other: Tensor) -> Tensor:
        """``op @ v`` for ``[P]`` and ``op @ V`` for ``[P, K]``."""
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """Return the data-set loss and its flat gradient, weighted exactly like the products."""

        def per_batch(x: Tensor, y: Tensor) -> Tensor:
            loss, _ = self._batch_loss(x, y)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            flat = flatten_tensors(
                [
                    torch.zeros_like(p) if g is None else g
                    for g, p in zip(grads, self.params, strict=True)
                ]
            )
            return torch.cat([flat, loss.detach().reshape(1).to(flat)])[:, None]

        self._resolve_reduction()
        with product_precision(self.precision):
            acc = self._accumulate(self._over_batches(per_batch), 1, rows=self.shape[0] + 1)[:, 0]
        return float(acc[-1]), acc[:-1]

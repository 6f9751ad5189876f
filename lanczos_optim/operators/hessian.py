"""The Hessian of a model's loss as a linear operator."""

from __future__ import annotations

from torch import Tensor

from lanczos_optim._graph_products import Product, hessian_product
from lanczos_optim.operators._base import CurvatureOperator

__all__ = ["HessianOperator"]


class HessianOperator(CurvatureOperator):
    r"""Hessian :math:`H = \nabla^2_w L(w)` of the data-set loss as a ``[P, P]`` operator.

    .. math::
        H v = \sum_b \frac{|b|}{N} \nabla_w \big( \nabla_w L_b(w)^\top v \big)

    Each batch runs one forward pass and one ``create_graph`` backward pass; every column of a
    :meth:`matmat` then costs one further backward (double backward). That was measured as fast
    as ``torch.func`` forward-over-reverse on CNNs and faster on small MLPs, and shares the
    batch's graph across columns (on the CNN of ``benchmarks/engine.py``, CPU: 2.69 gradient
    passes per product, against 2.67 for ``torch.func``). With ``cache_graphs`` (default for a
    single batch) the graph is also shared across calls, so a product is that one backward pass
    (1.61 gradient passes there).

    Args:
        model: The network.
        loss_fn: Scalar loss ``loss_fn(outputs, targets)``.
        data: One ``(inputs, targets)`` batch or a re-iterable of batches.
        params: Parameters to differentiate (default: all with ``requires_grad``).
        bn_mode: ``"eval"`` or ``"train"`` BatchNorm statistics; buffers never change.
        distributed: Sum over ``torch.distributed`` ranks (default: when initialised).
        cache_graphs: Keep each batch's graph between products (default: for a single batch).
        cache_check: How kept graphs are checked before each product: ``"fast"`` (default) or
            ``"full"`` (also checksums of every parameter and listed data tensor); see
            :class:`~lanczos_optim.CurvatureOperator`.
        precision: Arithmetic of the products: ``"highest"`` (default), ``"tf32"`` or
            ``"bf16"`` (forward under bfloat16 autocast); the products stay in the operator's
            dtype.
        reduction: ``"mean"`` or ``"sum"`` for a loss that states no reduction (a lambda);
            ``None`` reads it from the loss or checks it on the first batch.
        outputs: Picks the tensor the loss takes from dict/tuple model outputs (a key, an
            index or a function; default: a mapping's ``"logits"``).
        check_deterministic: Refuse data that differ between passes (shuffled loaders, random
            augmentation); see :class:`~lanczos_optim.CurvatureOperator`.

    The other keywords, how batches are weighted (class weights and ``ignore_index``
    included), and what is refused and why, are described in
    :class:`~lanczos_optim.CurvatureOperator`.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> y = torch.randn(8, 1, dtype=torch.float64)
        >>> H = HessianOperator(model, torch.nn.MSELoss(), (x, y))
        >>> dense = H @ torch.eye(3, dtype=torch.float64)
        >>> torch.allclose(dense, 2 * x.T @ x / 8)
        True
    """

    _needs_output_tensor = False  # structured outputs may go to the loss whole

    def _build_product(self, x: Tensor, y: Tensor) -> Product:
        loss, _ = self._batch_loss(x, y)
        return hessian_product(loss, self.params)[1]

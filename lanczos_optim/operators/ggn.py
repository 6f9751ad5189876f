"""The generalised Gauss-Newton matrix of a model's loss as a linear operator."""

from __future__ import annotations

from torch import Tensor
from torch.autograd import grad
from torch.func import jvp

from lanczos_optim._graph_products import Product, check_scalar_loss, ggn_product
from lanczos_optim._loss_hessian import output_hessian_product
from lanczos_optim.operators._base import CurvatureOperator

__all__ = ["GGNOperator"]


class GGNOperator(CurvatureOperator):
    r"""Generalised Gauss-Newton matrix :math:`G = J^\top H_\ell J` as a ``[P, P]`` operator.

    .. math::
        G v = \sum_b \frac{|b|}{N} J_b^\top H_{\ell,b} J_b v ,

    with :math:`J_b` the Jacobian of the model outputs on batch :math:`b` and
    :math:`H_{\ell,b}` the Hessian of the loss with respect to those outputs: closed form for
    ``nn.CrossEntropyLoss`` (:math:`\mathrm{diag}(p) - pp^\top` per sample) and ``nn.MSELoss``,
    autograd for any other loss. :math:`G` is positive semi-definite for convex losses.

    :math:`J v` comes from ``torch.func.jvp`` (forward mode) and :math:`J^\top u` from one
    backward pass through the same forward: 1.67 gradient passes per product on the CNN of
    ``benchmarks/engine.py`` (CPU, one thread), against 2.93 for the reverse-over-reverse trick
    rebuilt each time. BatchNorm buffers are cloned inside the functional call so that
    batch-statistics mode works with ``torch.func`` and never mutates the model. With
    ``cache_graphs`` (default for a single batch) the forward graph is kept and :math:`J v`
    comes from the double-backward trick on it (1.55 gradient passes on that CNN; 1.4 against
    3.6 rebuilt on the small MLP of ``benchmarks/peers.py``, where the per-call overhead of
    ``torch.func`` dominates). Timings are in the benchmark tables. Models with an
    operation that has no forward-mode derivative (e.g. ``torch.sparse.mm``) use that trick
    throughout.

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
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2).double()
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> y = torch.randn(8, 2, dtype=torch.float64)
        >>> G = GGNOperator(model, torch.nn.MSELoss(), (x, y))
        >>> v = torch.randn(G.shape[0], dtype=torch.float64)
        >>> bool(v @ (G @ v) >= 0)
        True
    """

    #: Set once an operation of the model had no forward-mode AD (e.g. sparse matmul): the
    #: products then use the reverse-over-reverse trick, which needs only backward formulas.
    _reverse_only = False

    def _batch_products(
        self, x: Tensor, y: Tensor, columns: list[list[Tensor]]
    ) -> list[list[Tensor]]:
        if not self._reverse_only:
            try:
                return self._jvp_products(x, y, columns)
            except NotImplementedError:  # forward-mode AD missing for an operation
                self._reverse_only = True
        return super()._batch_products(x, y, columns)

    def _jvp_products(
        self, x: Tensor, y: Tensor, columns: list[list[Tensor]]
    ) -> list[list[Tensor]]:
        names = self.param_names

        def f(*ps: Tensor) -> Tensor:
            return self._forward(x, dict(zip(names, ps, strict=True)))

        primals = tuple(self.params)
        results, h_out = [], None
        for col in columns:
            out, jv = jvp(f, primals, tuple(col))
            if h_out is None:
                check_scalar_loss(self.loss_fn(out.detach(), y))
                h_out = output_hessian_product(self.loss_fn, out, y)
            gv = grad(out, primals, grad_outputs=h_out(jv), allow_unused=True)
            results.append(
                [
                    g if g is not None else p.new_zeros(p.shape)
                    for g, p in zip(gv, primals, strict=True)
                ]
            )
        return results

    def _build_product(self, x: Tensor, y: Tensor) -> Product:
        loss, outputs = self._batch_loss(x, y)
        h_out = output_hessian_product(self.loss_fn, outputs, y)
        return ggn_product(loss, outputs, self.params, h_out)[1]

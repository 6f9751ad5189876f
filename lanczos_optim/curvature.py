r"""Building blocks of curvature computations: batched products, model modes, data, operators.

The curvature operators and the optimisers are built from these; they are public so that tools
built on :mod:`lanczos_optim` (such as ``diagnostics``) need no private module.

**Products on one batch's graph.** For a scalar loss :math:`L(w)` of the parameters :math:`w`
and model outputs :math:`f(w)`:

* :func:`hessian_product` differentiates :math:`L` once with ``create_graph`` and returns
  :math:`\nabla L` and :math:`v \mapsto H v = \nabla_w(\nabla_w L^\top v)` (Pearlmutter's
  trick, one backward pass per product);
* :func:`ggn_product` returns :math:`J^\top \nabla_f L` and
  :math:`v \mapsto G v = J^\top H_\ell J v`, :math:`J = \partial f / \partial w`,
  :math:`H_\ell = \nabla_f^2 L`, with :math:`J v` by the double-backward trick;
* :func:`output_hessian_product` returns :math:`u \mapsto H_\ell u` (closed forms for
  cross-entropy and squared error, autograd otherwise).

Both product functions return a :class:`BatchedProduct`: ``product(vs)`` multiplies one
parameter-shaped list, ``product.many(columns)`` several in one vmapped backward pass.

**Model mode and data.** :func:`curvature_mode` puts a model in the mode a product needs
(``bn_mode`` ``"eval"`` or ``"train"``, see :func:`check_bn_mode`) and restores its flags and
buffers bitwise; :func:`check_data` accepts one ``(inputs, targets)`` batch or a re-iterable of
them, :func:`iterate_batches` moves them to a device and dtype, :func:`select_params` picks the
parameters to differentiate. :data:`LossFn` is the loss type ``loss_fn(outputs, targets)``
returning a scalar, ``Callable[[Tensor, Tensor], Tensor]`` (a type alias: it has no docstring of
its own, so it is described here).

**Data-set operators.** :func:`curvature_operator` maps a name of :data:`CURVATURES` to
:class:`~lanczos_optim.HessianOperator` or :class:`~lanczos_optim.GGNOperator`.

Example:
    >>> import torch
    >>> from lanczos_optim.curvature import curvature_mode, ggn_product, hessian_product
    >>> model = torch.nn.Linear(3, 1, bias=False).double()
    >>> x = torch.randn(8, 3, dtype=torch.float64)
    >>> y = torch.randn(8, 1, dtype=torch.float64)
    >>> with curvature_mode(model, "eval"):
    ...     out = model(x)
    ...     loss = torch.nn.functional.mse_loss(out, y)
    ...     grad, hvp = hessian_product(loss, list(model.parameters()))
    ...     _, gvp = ggn_product(loss, out, list(model.parameters()))
    ...     v = [torch.ones(1, 3, dtype=torch.float64)]
    ...     hv, gv = hvp(v)[0], gvp(v)[0]
    >>> exact = (2 * x.T @ x / 8) @ torch.ones(3, dtype=torch.float64)
    >>> torch.allclose(hv[0], exact), torch.allclose(gv[0], exact)  # least squares: H = G
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from lanczos_optim._graph_products import (
    BatchedProduct,
    check_scalar_loss,
    ggn_product,
    hessian_product,
)
from lanczos_optim._loss_hessian import output_hessian_product
from lanczos_optim._loss_weights import BatchWeights
from lanczos_optim._model_state import curvature_mode
from lanczos_optim.operators import CurvatureOperator, GGNOperator, HessianOperator
from lanczos_optim.operators._data import LossFn, check_data, iterate_batches, select_params
from lanczos_optim.validation import CURVATURES, check_bn_mode, check_curvature

__all__ = [
    "CURVATURES",
    "BatchWeights",
    "BatchedProduct",
    "LossFn",
    "check_bn_mode",
    "check_curvature",
    "check_data",
    "check_scalar_loss",
    "curvature_mode",
    "curvature_operator",
    "ggn_product",
    "hessian_product",
    "iterate_batches",
    "output_hessian_product",
    "select_params",
]

_OPERATORS: dict[str, type[CurvatureOperator]] = {"hessian": HessianOperator, "ggn": GGNOperator}


def curvature_operator(
    curvature: str,
    model: nn.Module,
    loss_fn: LossFn,
    data: object,
    *,
    params: Iterable[Tensor] | None = None,
    **kwargs: object,
) -> CurvatureOperator:
    r"""The data-set curvature named ``curvature`` as a ``[P, P]`` linear operator.

    .. math::
        C v = \sum_b \frac{|b|}{N} C_b v, \qquad
        C_b = \nabla_w^2 L_b \ (\texttt{"hessian"}) \quad\text{or}\quad
        C_b = J_b^\top H_{\ell,b} J_b \ (\texttt{"ggn"}).

    Args:
        curvature: One of :data:`CURVATURES`.
        model: The network.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar.
        data: One ``(inputs, targets)`` batch or a re-iterable of batches.
        params: Parameters to differentiate (default: all with ``requires_grad``).
        **kwargs: Further keywords of :class:`~lanczos_optim.CurvatureOperator` (``bn_mode``,
            ``cache_graphs``, ``precision``, ...).

    Returns:
        A :class:`~lanczos_optim.HessianOperator` or :class:`~lanczos_optim.GGNOperator`.

    Raises:
        ValueError: On a curvature not in :data:`CURVATURES` (and the operator's own errors).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> x = torch.eye(2, dtype=torch.float64)
        >>> y = torch.zeros(2, 1, dtype=torch.float64)
        >>> op = curvature_operator("ggn", model, torch.nn.MSELoss(), (x, y))
        >>> type(op).__name__, op @ torch.ones(2, dtype=torch.float64)
        ('GGNOperator', tensor([1., 1.], dtype=torch.float64))
    """
    cls = _OPERATORS[check_curvature(curvature)]
    return cls(model, loss_fn, data, params=params, **kwargs)  # type: ignore[arg-type]

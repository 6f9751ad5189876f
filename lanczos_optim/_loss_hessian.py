"""Products with the Hessian of a loss with respect to the model outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn


def _is_plain_cross_entropy(loss_fn: object, outputs: Tensor, targets: Tensor) -> bool:
    return (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.weight is None
        and loss_fn.reduction in ("mean", "sum")
        and outputs.ndim == 2
        and targets.ndim == 1
        and not targets.is_floating_point()
        and bool((targets != loss_fn.ignore_index).all())
    )


def _log_prob_dim(outputs: Tensor) -> int | None:
    """The dimension along which ``outputs`` are log-probabilities (logsumexp 0), if any."""
    if outputs.ndim == 0 or not outputs.is_floating_point() or outputs.numel() == 0:
        return None
    tol = 10 * torch.finfo(outputs.dtype).eps ** 0.5
    for dim in dict.fromkeys((1 if outputs.ndim > 1 else 0, outputs.ndim - 1)):
        lse = torch.logsumexp(outputs, dim=dim)
        if bool((lse.abs() <= tol).all()):
            return dim
    return None


def hessian_vanishes(grad_outputs: Tensor, outputs: Tensor) -> bool:
    """Whether the loss's output Hessian is zero: its product with a fixed random probe is 0.

    ``grad_outputs`` is the loss's gradient in ``outputs``, built with ``create_graph``. A loss
    linear in the outputs (``NLLLoss``, ``L1Loss``) often still has a graph there, so the
    product is computed (one backward through the loss alone).
    """
    if not grad_outputs.requires_grad:
        return True
    if outputs.device.type == "meta":
        return False
    device = outputs.device  # drawn where the outputs live: no host copy of large outputs
    gen = torch.Generator(device=device).manual_seed(0)
    probe = torch.randn(outputs.shape, generator=gen, dtype=outputs.dtype, device=device)
    (hu,) = torch.autograd.grad(
        grad_outputs, outputs, grad_outputs=probe, retain_graph=True, allow_unused=True
    )
    return hu is None or not bool(hu.any())


#: Losses whose output Hessian is zero where their residuals pass ``delta`` (a true zero).
_PIECEWISE = (nn.HuberLoss, nn.SmoothL1Loss)

_LINEAR = (
    "The loss is linear in the model's outputs, so its GGN is zero; use the Hessian, or a "
    "loss with curvature in the outputs (e.g. CrossEntropyLoss on logits)"
)


def linear_loss_hessian(
    outputs: Tensor, grad_outputs: Tensor, *, refuse: bool = True
) -> Callable[[Tensor], Tensor]:
    r"""The output Hessian to use for a loss that is linear in the model's outputs.

    A linear loss :math:`\ell = \sum_i g_i^\top f_i` (``NLLLoss`` or ``KLDivLoss`` on
    log-probabilities) has a zero output Hessian, so its GGN would be zero. When the outputs
    :math:`f_i` are log-probabilities along a dimension, :math:`\operatorname{log\_softmax}(f_i)
    = f_i`, so the loss equals :math:`\sum_i g_i^\top \operatorname{log\_softmax}(f_i)` (with
    ``NLLLoss``: cross-entropy on the log-probabilities) in value and gradient; its output
    Hessian, the softmax GGN, is returned:

    .. math::
        H_\ell u_i = c_i \big(p_i \odot u_i - p_i\, p_i^\top u_i\big), \quad
        p_i = e^{f_i}, \quad c_i = -\textstyle\sum_j g_{ij}.

    On other outputs the zero output Hessian is refused (``refuse``), or returned with a
    ``RuntimeWarning`` (the optimisers, which cannot tell a linear loss from a Huber loss
    whose residuals all pass ``delta`` on one batch).

    Raises:
        ValueError: If ``refuse`` and the outputs are not log-probabilities.
    """
    outputs, grad_outputs = outputs.detach(), grad_outputs.detach()
    dim = _log_prob_dim(outputs)
    if dim is None:
        if refuse:
            raise ValueError(f"{_LINEAR}.")
        warnings.warn(
            f"{_LINEAR}: the output Hessian is zero on this batch.", RuntimeWarning, stacklevel=4
        )
        return torch.zeros_like
    p = outputs.exp()
    c = -grad_outputs.sum(dim=dim, keepdim=True)

    def softmax_ggn(u: Tensor) -> Tensor:
        pu = p * u
        return c * (pu - p * pu.sum(dim=dim, keepdim=True))

    return softmax_ggn


def output_hessian_product(
    loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor
) -> Callable[[Tensor], Tensor]:
    r"""Return ``u -> H_l u`` with :math:`H_l = \nabla^2_{f} \ell(f, y)` at ``outputs``.

    Closed forms for ``nn.CrossEntropyLoss`` (softmax Hessian, label smoothing included) and
    ``nn.MSELoss``; autograd (double backward) for any other loss, and for a loss linear in
    the outputs (zero output Hessian) :func:`linear_loss_hessian`.

    Example:
        Cross-entropy of one sample's logits :math:`z`: :math:`H_l = \operatorname{diag}(p) -
        p p^\top` with :math:`p = \operatorname{softmax}(z)`:

        >>> import torch
        >>> from lanczos_optim import output_hessian_product
        >>> logits = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> h_l = output_hessian_product(loss_fn, logits, torch.tensor([1]))
        >>> p = torch.softmax(logits[0], dim=0)
        >>> u = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
        >>> bool(torch.allclose(h_l(u[None])[0], (torch.diag(p) - torch.outer(p, p)) @ u))
        True
    """
    outputs = outputs.detach()
    if _is_plain_cross_entropy(loss_fn, outputs, targets):
        p = torch.softmax(outputs, dim=1)
        scale = 1.0 / outputs.shape[0] if loss_fn.reduction == "mean" else 1.0

        def ce(u: Tensor) -> Tensor:
            return scale * (p * u - p * (p * u).sum(dim=1, keepdim=True))

        return ce
    if type(loss_fn) is nn.MSELoss and loss_fn.reduction in ("mean", "sum"):
        scale = 2.0 / outputs.numel() if loss_fn.reduction == "mean" else 2.0
        return lambda u: scale * u

    out = outputs.requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(out, targets)
        (grad_out,) = torch.autograd.grad(loss, out, create_graph=True)
    if not isinstance(loss_fn, _PIECEWISE) and hessian_vanishes(grad_out, out):
        return linear_loss_hessian(outputs, grad_out)  # NLL on log-probabilities, or refused

    def generic(u: Tensor) -> Tensor:
        (hu,) = torch.autograd.grad(grad_out, out, grad_outputs=u, retain_graph=True)
        return hu

    return generic

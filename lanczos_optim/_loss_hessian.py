"""Products with the Hessian of a loss with respect to the model outputs."""

from __future__ import annotations

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


def output_hessian_product(
    loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor
) -> Callable[[Tensor], Tensor]:
    r"""Return ``u -> H_l u`` with :math:`H_l = \nabla^2_{f} \ell(f, y)` at ``outputs``.

    Closed forms for ``nn.CrossEntropyLoss`` (softmax Hessian, label smoothing included) and
    ``nn.MSELoss``; autograd (double backward) for any other loss.

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

    def generic(u: Tensor) -> Tensor:
        if not grad_out.requires_grad:
            return torch.zeros_like(u)
        (hu,) = torch.autograd.grad(grad_out, out, grad_outputs=u, retain_graph=True)
        return hu

    return generic

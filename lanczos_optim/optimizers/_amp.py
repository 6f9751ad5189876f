"""Mixed precision around the optimisers: the user's autocast, GradScaler's loss scale.

The optimisers' own arithmetic (curvature products, Lanczos recurrence, solve) runs with
autocast switched off, while the user's closure still runs under the autocast the user set.
A ``torch.amp.GradScaler`` is handled in the backward protocol (the scale is divided out of the
gradient and of every curvature product) and refused where it cannot be right.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from lanczos_optim._graph_products import BatchedProduct, gauss_newton_apply

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")
BF16_HINT = (
    "use bf16 autocast instead (torch.autocast(device_type, dtype=torch.bfloat16), Lightning "
    "precision='bf16-mixed', Accelerate mixed_precision='bf16'), which needs no loss scaling"
)


@contextlib.contextmanager
def outside_autocast(
    device: torch.device, closure: Callable[[], Any] | None
) -> Iterator[Callable[[], Any] | None]:
    """Switch the user's autocast off on ``device``; yield ``closure`` re-entering it.

    Example:
        >>> import torch
        >>> def user_matmul():
        ...     return torch.ones(2) @ torch.ones(2)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     with outside_autocast(torch.device("cpu"), user_matmul) as c:
        ...         inner = (torch.ones(2) @ torch.ones(2)).dtype
        ...         user = c().dtype
        >>> inner, user
        (torch.float32, torch.bfloat16)
    """
    kind = device.type
    if kind not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(kind):
        yield closure
        return
    dtype = torch.get_autocast_dtype(kind)
    user_closure = closure

    def in_user_autocast() -> Any:
        with torch.autocast(kind, dtype=dtype, enabled=True):
            return user_closure()  # type: ignore[misc]

    with torch.autocast(kind, enabled=False):
        yield None if closure is None else in_user_autocast


def scaler_scale_of(loss: Tensor) -> float | None:
    """The factor if ``loss`` is ``GradScaler.scale(x)`` (a product with its scale), else None.

    ``GradScaler`` multiplies by a 0-dim float32 power of two that does not require grad; a
    loss whose last operation is such a product is reported.

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> scaler = torch.amp.GradScaler("cpu")
        >>> scaler_scale_of(scaler.scale((w**2).sum())), scaler_scale_of((w**2).sum())
        (65536.0, None)
    """
    node = loss.grad_fn
    if node is None or type(node).__name__ != "MulBackward0":
        return None
    try:
        other = node._saved_other
    except (AttributeError, RuntimeError):
        return None
    if not isinstance(other, Tensor) or other.ndim != 0 or other.requires_grad:
        return None
    if other.dtype != torch.float32 or other.device.type == "meta":
        return None
    value = float(other)
    if value < 2.0 or not math.isfinite(value) or math.log2(value) % 1 != 0:
        return None
    return value


def grad_scaler_state(optimizer: object) -> tuple[Tensor | None, Tensor | None] | None:
    """``(grad_scale, found_inf)`` that ``GradScaler.step`` set on the optimiser, or None.

    The optimisers declare ``_step_supports_amp_scaling``, so ``GradScaler.step`` calls their
    ``step`` directly with these two attributes set instead of unscaling ``p.grad`` itself.

    Example:
        >>> grad_scaler_state(object()) is None
        True
    """
    if not hasattr(optimizer, "found_inf"):
        return None
    return getattr(optimizer, "grad_scale", None), optimizer.found_inf


def cast_source(outputs: Tensor) -> GradientEdge | None:
    """Where ``outputs = x.float()`` (a dtype cast) reads ``x`` from, or None if not a cast.

    Example:
        >>> import torch
        >>> x = torch.ones(2, dtype=torch.bfloat16, requires_grad=True) * 2
        >>> cast_source(x.float()).node is x.grad_fn, cast_source(x)
        (True, None)
    """
    node = outputs.grad_fn
    if node is None or type(node).__name__ != "ToCopyBackward0":
        return None
    inner, nr = node.next_functions[0]
    return None if inner is None else GradientEdge(inner, nr)


def cast_ggn(
    loss: Tensor, outputs: Tensor, source: GradientEdge, params: Sequence[Tensor]
) -> tuple[list[Tensor], BatchedProduct]:
    r"""Gradient and GGN when the closure returned ``out.float()`` but the loss used ``out``.

    :math:`H_\ell` is taken with respect to ``out`` (through the autograd edge the cast reads
    from, in ``out``'s dtype) and :math:`J` through the cast outputs; the cast is the identity
    on the values, so this is the GGN of the loss the closure computed.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> out = 3 * w
        >>> loss = (out**2).sum()  # H = 2 I in the outputs, J = 3 I: GGN = 18 I
        >>> cast = out.float()
        >>> grads, product = cast_ggn(loss, cast, cast_source(cast), [w])
        >>> grads[0].tolist(), product([torch.tensor([1.0, 0.0], dtype=torch.float64)])[0].tolist()
        ([18.0, 36.0], [18.0, 0.0])
    """
    (g_out,) = torch.autograd.grad(loss, source, create_graph=True)
    full = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(full, params, strict=True)]

    def h_out(u: Tensor, batched: bool = False) -> Tensor:
        if not g_out.requires_grad:
            return torch.zeros_like(u)
        (hu,) = torch.autograd.grad(
            g_out,
            source,
            grad_outputs=u.to(g_out.dtype),
            retain_graph=True,
            is_grads_batched=batched,
        )
        return hu.to(u.dtype)

    return grads, BatchedProduct(gauss_newton_apply(outputs, params, h_out))


def cast_hint(outputs: Tensor) -> str:
    """A hint when the returned outputs are a dtype cast of what the loss used (bf16 autocast).

    Example:
        >>> import torch
        >>> out = torch.ones(2, requires_grad=True).to(torch.bfloat16)
        >>> cast_hint(out.float()).startswith(" The outputs are a cast")
        True
    """
    node = outputs.grad_fn
    if node is None or type(node).__name__ != "ToCopyBackward0":
        return ""
    return (
        " The outputs are a cast (e.g. .float()) of the tensor the loss used: cast before the "
        "loss (outputs = model(x).float(); loss = loss_fn(outputs, y)) and return those outputs."
    )

"""Arithmetic precision of curvature products: full, TF32 or a bfloat16 forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

#: Precision policies of the curvature operators (see :class:`CurvatureOperator`).
PRECISIONS = ("highest", "tf32", "bf16")


def check_precision(precision: object) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ``ValueError``.

    Example:
        >>> from lanczos_optim import check_precision
        >>> check_precision("tf32")
        'tf32'
        >>> check_precision("fp16")
        Traceback (most recent call last):
        ...
        ValueError: precision must be one of ('highest', 'tf32', 'bf16'); got 'fp16'.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    return precision  # type: ignore[return-value]


def _legacy_switches() -> bool:
    """Whether the TF32 switches are on torch's legacy API (``allow_tf32``).

    Once a user sets the newer ``fp32_precision`` API, torch raises on reading the legacy one,
    so each product uses whichever API the user is on.
    """
    try:
        _ = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    except RuntimeError:
        return False
    return True


@contextmanager
def product_precision(precision: str) -> Iterator[None]:
    """Set the CUDA TF32 switches for one product and restore them afterwards.

    ``"highest"`` turns TF32 off for float32 matrix products and cuDNN convolutions (cuDNN's
    default is on); ``"tf32"`` and ``"bf16"`` turn it on. Only these switches change: cuDNN
    stays enabled, and ``deterministic`` and ``benchmark`` keep the user's settings. On the CPU
    the switches change nothing.
    """
    tf32 = precision != "highest"
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if _legacy_switches():
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved
    else:
        saved_new = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved_new


@contextmanager
def forward_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the model's forward pass under bfloat16 autocast for ``"bf16"``, else unchanged."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def outputs_in(outputs: Tensor, dtype: torch.dtype) -> Tensor:
    """Model outputs cast back to the operator's dtype, so the loss and its Hessian are exact."""
    if outputs.is_floating_point() and outputs.dtype != dtype:
        return outputs.to(dtype)
    return outputs

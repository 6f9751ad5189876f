"""Arithmetic precision of curvature products: full, TF32 or a bfloat16 forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor

#: Precision policies of the curvature operators (see :class:`CurvatureOperator`).
PRECISIONS = ("highest", "tf32", "bf16")


def check_precision(precision: object) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    return precision  # type: ignore[return-value]


@contextmanager
def product_precision(precision: str) -> Iterator[None]:
    """Set the CUDA TF32 switches for one product and restore them afterwards.

    ``"highest"`` turns TF32 off for float32 matrix products and cuDNN convolutions (cuDNN's
    default is on); ``"tf32"`` and ``"bf16"`` turn it on. On the CPU the switches change nothing.
    """
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    with ExitStack() as stack:
        stack.enter_context(torch.backends.cudnn.flags(allow_tf32=precision != "highest"))
        matmul.allow_tf32 = precision != "highest"
        try:
            yield
        finally:
            matmul.allow_tf32 = saved


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

"""Put a model in the mode a curvature product needs and restore it exactly afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

BN_MODES = ("eval", "train")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def check_bn_mode(bn_mode: object) -> str:
    """Return ``bn_mode`` if it is known, else raise a ValueError naming the allowed values.

    Example:
        >>> from lanczos_optim import check_bn_mode
        >>> check_bn_mode("train")
        'train'
        >>> check_bn_mode("bogus")
        Traceback (most recent call last):
        ...
        ValueError: bn_mode must be one of ('eval', 'train'); got 'bogus'.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}; got {bn_mode!r}.")
    return bn_mode  # type: ignore[return-value]


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality (NaN equals itself, -0.0 differs from 0.0); False when not comparable."""
    if a.layout != torch.strided or b.layout != torch.strided:
        return False  # e.g. a sparse buffer: always written back
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.is_floating_point():
        as_int = _INT_OF_SIZE[a.element_size()]
        a, b = a.contiguous().view(as_int), b.contiguous().view(as_int)
    return torch.equal(a, b)


@contextmanager
def curvature_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Set the model up for curvature products and restore it bitwise on exit.

    ``"eval"``: the whole model in eval mode, BatchNorm uses its running statistics.
    ``"train"``: the model in eval mode (dropout off) except BatchNorm layers, which use batch
    statistics. In both cases every buffer (running statistics, ``num_batches_tracked``) and every
    module's ``training`` flag is exactly as before when the block exits, also on an exception.
    Buffers whose values did not change are not written back, so they keep their autograd
    version counters and graphs that saved them (BatchNorm in eval mode) stay usable.

    Example:
        >>> import torch
        >>> from lanczos_optim import curvature_mode
        >>> model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5)).double()
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
        >>> with curvature_mode(model, "train"):  # batch statistics, dropout off
        ...     _ = model(x)  # updates the running statistics
        ...     [m.training for m in model]
        [True, False]
        >>> [m.training for m in model]  # flags and buffers restored
        [True, True]
        >>> model[0].running_mean.tolist(), int(model[0].num_batches_tracked)
        ([0.0, 0.0], 0)
    """
    check_bn_mode(bn_mode)
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        yield
    finally:
        try:
            with torch.no_grad():
                for b, saved in buffers:
                    # Compare bits: BatchNorm updates running statistics without bumping their
                    # version counters. Untouched buffers keep theirs.
                    if not _same_bits(b, saved):
                        b.copy_(saved)
        finally:
            for m, flag in flags:
                m.training = flag

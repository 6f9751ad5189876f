"""Put a model in the mode a curvature product needs and restore it exactly afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

BN_MODES = ("eval", "train")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def check_bn_mode(bn_mode: object) -> str:
    """Return ``bn_mode`` if it is known, else raise a ValueError naming the allowed values."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}; got {bn_mode!r}.")
    return bn_mode  # type: ignore[return-value]


@contextmanager
def curvature_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Set the model up for curvature products and restore it bitwise on exit.

    ``"eval"``: the whole model in eval mode, BatchNorm uses its running statistics.
    ``"train"``: the model in eval mode (dropout off) except BatchNorm layers, which use batch
    statistics. In both cases every buffer (running statistics, ``num_batches_tracked``) and every
    module's ``training`` flag is exactly as before when the block exits, also on an exception.
    Buffers whose values did not change are not written back, so they keep their autograd
    version counters and graphs that saved them (BatchNorm in eval mode) stay usable.
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
        with torch.no_grad():
            for b, saved in buffers:
                # Compare values: BatchNorm updates running statistics without bumping their
                # version counters. Untouched buffers keep theirs.
                if not torch.equal(b, saved):
                    b.copy_(saved)
        for m, flag in flags:
            m.training = flag

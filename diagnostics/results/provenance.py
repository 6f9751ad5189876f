"""Where a result came from: checkpoint, weights, model, data; and the check that two agree.

Every result file of the command line records a ``provenance`` dict in its metadata:

- ``checkpoint``: the checkpoint path (``None`` for a seeded initialisation);
- ``param_hash``: :func:`parameter_hash` of the weights analysed;
- ``model``, ``dataset``, ``subset``: the names and sample count asked for;
- ``num_params``: the parameter count :math:`P`;
- ``data_hash``: :func:`data_hash` of the training samples analysed (independent of batch
  size and order; it stands for the subset too).

:func:`check_same_source` refuses to combine two results whose weights, model or data differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_same_source", "data_hash", "parameter_hash"]

# Keys compared by check_same_source, with how a mismatch is described.
_CHECKED = {
    "num_params": "parameter count",
    "model": "model",
    "param_hash": "weights of parameter hash",
    "dataset": "data set",
    "data_hash": "samples of data hash",
}


def _update(h: Any, t: Tensor) -> None:
    # float32 bytes: the same weights give the same hash whether analysed in float32 or float64
    # (a float32 checkpoint survives the round trip through float64 exactly).
    x = t.detach().to("cpu", torch.float32 if t.is_floating_point() else torch.int64)
    h.update(str(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())


def parameter_hash(model: nn.Module) -> str:
    """A short SHA-256 fingerprint of a model's parameter names, shapes and values.

    Example:
        >>> import torch
        >>> a = torch.nn.Linear(2, 2)
        >>> parameter_hash(a) == parameter_hash(a.double())
        True
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        _update(h, p)
    return h.hexdigest()[:16]


def data_hash(batches: Iterable[tuple[Tensor, Tensor]]) -> str:
    """A short SHA-256 fingerprint of the samples in ``(inputs, targets)`` batches.

    It depends on the set of samples only: not on how they are split into batches nor on
    their order (each sample is hashed on its own and the sorted digests are combined), so the
    same data with another ``--batch-size`` or another order gives the same hash.

    Example:
        >>> import torch
        >>> x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
        >>> data_hash([(x, y)]) == data_hash([(x[3:], y[3:]), (x[:3], y[:3])])
        True
    """
    digests = []
    for x, y in batches:
        xs = x.detach().to("cpu", torch.float32 if x.is_floating_point() else torch.int64)
        ys = y.detach().to("cpu", torch.float32 if y.is_floating_point() else torch.int64)
        for xi, yi in zip(xs.contiguous().numpy(), ys.contiguous().numpy(), strict=True):
            h = hashlib.sha256(str(xi.shape).encode())
            h.update(xi.tobytes())
            h.update(yi.tobytes())
            digests.append(h.digest())
    h = hashlib.sha256()
    for d in sorted(digests):
        h.update(d)
    return h.hexdigest()[:16]


def check_same_source(
    recorded: Mapping[str, Any], current: Mapping[str, Any], *, what: str
) -> None:
    """Raise if ``recorded`` (a result file's provenance) differs from ``current``.

    Keys missing on either side (e.g. files written by the library, not the command line) are
    not compared; ``num_params`` always is when both have it.

    Args:
        recorded: Provenance stored in the result file.
        current: Provenance of the model and data of this run.
        what: How to name the file in the message, e.g. ``"spectrum 'ggn.npz'"``.

    Raises:
        ValueError: One line naming the first field that differs, both values and the fix.

    Example:
        >>> check_same_source({"num_params": 10}, {"num_params": 10}, what="spectrum 'a.npz'")
        >>> check_same_source({"num_params": 10}, {"num_params": 12}, what="spectrum 'a.npz'")
        Traceback (most recent call last):
        ...
        ValueError: spectrum 'a.npz' was computed with parameter count 10 ...; this run has 12 ...
    """
    for key, label in _CHECKED.items():
        if key in recorded and key in current and recorded[key] != current[key]:
            was, now = recorded[key], current[key]
            then = recorded.get("checkpoint") or "a seeded initialisation"
            here = current.get("checkpoint") or "a seeded initialisation"
            raise ValueError(
                f"{what} was computed with {label} {was!r} (from {then}); this run has {now!r} "
                f"(from {here}). Use the checkpoint, model, data set, subset and seed it was "
                "made with."
            )

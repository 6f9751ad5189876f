"""Adapters that turn dense matrices, operator objects and callables into a matvec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["as_matvec"]


@dataclass(frozen=True)
class _MatVec:
    """A symmetric operator reduced to what Lanczos needs: ``dim``, dtype, device, ``matvec``."""

    matvec: Callable[[Tensor], Tensor]
    dim: int
    dtype: torch.dtype
    device: torch.device
    matmat: Callable[[Tensor], Tensor] | None = None
    sync: Callable[[Tensor], Tensor] | None = None


def _check_dense(matrix: Tensor) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"A dense operator must be a square 2-D tensor; got shape {tuple(matrix.shape)}."
        )
    if not matrix.is_floating_point():
        raise TypeError(f"A dense operator must be floating point; got dtype {matrix.dtype}.")
    if not torch.isfinite(matrix).all():
        raise ValueError("A dense operator must be finite; got NaN or infinite entries.")
    scale = matrix.abs().max()
    asym = (matrix - matrix.T).abs().max()
    tol = 100 * torch.finfo(matrix.dtype).eps * max(float(scale), 1e-300)
    if float(asym) > tol:
        raise ValueError(
            "A dense operator must be symmetric; got max |A - A^T| = "
            f"{float(asym):.3e} (allowed: <= {tol:.3e})."
        )


def as_matvec(
    operator: object,
    *,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> _MatVec:
    """Wrap ``operator`` as a :class:`_MatVec`.

    Args:
        operator: A dense symmetric tensor; an object with ``shape`` and ``matvec`` or ``@``;
            or a callable ``v -> A v`` (then ``dim`` is required).
        dim: Dimension of a callable operator.
        dtype: Dtype of a callable operator (default: ``torch.get_default_dtype()``).
        device: Device of a callable operator (default: CPU).

    Returns:
        The wrapped operator.

    Raises:
        ValueError: If a dense operator is not square and symmetric, or ``dim`` is missing.
        TypeError: If ``operator`` is none of the accepted kinds.
    """
    if isinstance(operator, Tensor):
        _check_dense(operator)
        return _MatVec(
            matvec=operator.__matmul__,
            dim=operator.shape[0],
            dtype=operator.dtype,
            device=operator.device,
            matmat=operator.__matmul__,
        )
    shape = getattr(operator, "shape", None)
    if shape is not None and (hasattr(operator, "matvec") or hasattr(operator, "__matmul__")):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"An operator must be square; got shape {tuple(shape)}.")
        matvec = getattr(operator, "matvec", None) or operator.__matmul__
        return _MatVec(
            matvec=matvec,
            dim=int(shape[0]),
            dtype=getattr(operator, "dtype", None) or dtype or torch.get_default_dtype(),
            device=torch.device(getattr(operator, "device", None) or device or "cpu"),
            matmat=getattr(operator, "matmat", None),
            sync=getattr(operator, "sync_vector", None),
        )
    if callable(operator):
        if dim is None or int(dim) < 1:
            raise ValueError(
                f"A callable operator needs dim= (a positive integer); got dim={dim!r}."
            )
        return _MatVec(
            matvec=operator,
            dim=int(dim),
            dtype=dtype or torch.get_default_dtype(),
            device=torch.device(device or "cpu"),
        )
    raise TypeError(
        "operator must be a dense symmetric tensor, an object with `shape` and `matvec`/`@`, "
        f"or a callable with dim=; got {type(operator).__name__}."
    )

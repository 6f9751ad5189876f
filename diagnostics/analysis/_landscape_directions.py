"""Directions of a loss landscape: Ritz vectors chosen by rank, or tensors given by the user."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diagnostics.analysis.spectrum import Spectrum

__all__ = ["Directions", "resolve_directions", "select_directions"]


def select_directions(
    spectrum: Spectrum,
    top: Sequence[int] = (0, 1, 2, 5),
    bottom: Sequence[int] = (0, 1, 2, 5),
    by_abs: Sequence[int] = (),
) -> list[int]:
    r"""Choose Ritz vectors by rank, as the paper's landscape figures do (section 9).

    Ranks count from 0 among the Ritz values :math:`\theta_0 \le \dots \le \theta_{m-1}` of the
    spectrum's first probe (the one whose Ritz vectors are kept): ``top`` from the largest,
    ``bottom`` from the smallest (most negative), ``by_abs`` from the smallest :math:`|\theta|`
    (the flattest directions). Ranks beyond ``m`` are skipped, repeats kept once, in order.

    Args:
        spectrum: A :class:`~diagnostics.analysis.spectrum.Spectrum`.
        top: Ranks from the largest Ritz value.
        bottom: Ranks from the smallest Ritz value.
        by_abs: Ranks from the smallest absolute Ritz value.

    Returns:
        Column indices into ``spectrum.ritz_vectors``.

    Raises:
        ValueError: On a negative or non-integer rank.

    Example:
        >>> import torch
        >>> from lanczos_optim import lanczos
        >>> A = torch.diag(torch.tensor([-2.0, 0.1, 1.0, 3.0], dtype=torch.float64))
        >>> r = lanczos(A, 4, v0=torch.ones(4, dtype=torch.float64))
        >>> s = Spectrum.from_lanczos([r], num_params=4)
        >>> select_directions(s, top=(0,), bottom=(0, 1), by_abs=(0,))
        [3, 0, 1]
    """
    theta, _ = spectrum.probe_values(0)
    m = theta.size
    order_abs = np.argsort(np.abs(theta), kind="stable")
    chosen: list[int] = []
    for name, ranks, pick in (
        ("top", top, lambda r: m - 1 - r),
        ("bottom", bottom, lambda r: r),
        ("by_abs", by_abs, lambda r: int(order_abs[r])),
    ):
        for r in ranks:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
                raise ValueError(f"{name} ranks must be non-negative integers; got {r!r}.")
            if r < m and pick(int(r)) not in chosen:
                chosen.append(pick(int(r)))
    return chosen


@dataclass
class Directions:
    """Flat directions with their labels and, for Ritz vectors, Ritz values and columns."""

    vectors: list[Tensor]
    labels: list[str]
    ritz_values: np.ndarray
    indices: np.ndarray


def _from_spectrum(spectrum: Spectrum, indices: Sequence[int] | None, dim: int) -> Directions:
    if spectrum.ritz_vectors is None:
        raise ValueError(
            "The Spectrum given as directions has no Ritz vectors; compute it with "
            "`lanczos-optim spectrum --save-eigvec` or "
            "compute_eigenspectrum(..., save_eigvec=True)."
        )
    if spectrum.num_params != dim:
        raise ValueError(
            f"The Spectrum's Ritz vectors have {spectrum.num_params} entries but the model has "
            f"P={dim} parameters to perturb."
        )
    theta, _ = spectrum.probe_values(0)
    cols = select_directions(spectrum) if indices is None else list(indices)
    if not cols:
        raise ValueError("No directions selected: indices is empty.")
    for c in cols:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < theta.size:
            raise ValueError(f"indices must be integers in [0, {theta.size}); got {c!r}.")
    vectors = [torch.from_numpy(spectrum.ritz_vectors[:, c].copy()) for c in cols]
    labels = [f"θ = {theta[c]:.4g}" for c in cols]
    return Directions(vectors, labels, theta[cols].astype(np.float64), np.array(cols))


def _from_tensors(directions: object, dim: int) -> Directions:
    if isinstance(directions, Tensor):
        if directions.ndim != 2:
            raise ValueError(
                "A tensor of directions must be [P, k] (one column per direction); got shape "
                f"{tuple(directions.shape)}. Give a list for single vectors."
            )
        directions = list(directions.T)
    if not isinstance(directions, (list, tuple)):
        raise TypeError(
            "directions must be a Spectrum with Ritz vectors, a list of flat tensors or a [P, k] "
            f"tensor; got {type(directions).__name__}."
        )
    if not directions:
        raise ValueError("directions is empty; give at least one direction.")
    vectors = []
    for k, v in enumerate(directions):
        if not isinstance(v, Tensor) or v.ndim != 1 or v.shape[0] != dim:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"directions[{k}] must be a flat tensor of shape ({dim},) (the model's parameter "
                f"count); got {shape}."
            )
        norm = float(torch.linalg.vector_norm(v.detach().double()))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError(f"directions[{k}] must be finite and non-zero; got norm {norm}.")
        vectors.append(v.detach())
    n = len(vectors)
    return Directions(vectors, [f"v{k}" for k in range(n)], np.full(n, np.nan), np.full(n, -1))


def resolve_directions(
    directions: object,
    indices: Sequence[int] | None,
    labels: Sequence[str] | None,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Directions:
    """Validate ``directions`` and return them as flat tensors in the parameters' dtype.

    Raises:
        ValueError: On a Spectrum without Ritz vectors, a parameter-count mismatch, an empty or
            zero direction, bad indices, or labels of the wrong length.
        TypeError: On directions of another type.
    """
    if isinstance(directions, Spectrum):
        out = _from_spectrum(directions, indices, dim)
    else:
        if indices is not None:
            raise ValueError("indices applies only when directions is a Spectrum.")
        out = _from_tensors(directions, dim)
    out.vectors = [v.to(device=device, dtype=dtype) for v in out.vectors]
    if labels is not None:
        if len(labels) != len(out.vectors):
            raise ValueError(f"labels has {len(labels)} entries for {len(out.vectors)} directions.")
        out.labels = [str(s) for s in labels]
    return out

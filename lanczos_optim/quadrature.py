"""Stochastic Lanczos quadrature: the discrete spectral measure of a symmetric operator."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lanczos_optim._lanczos_many import lanczos_many
from lanczos_optim._linear_operator import _MatVec, as_matvec
from lanczos_optim.lanczos import LanczosResult, lanczos
from lanczos_optim.validation import NUM_PROBES, check_lanczos_steps, check_num_probes

__all__ = ["SpectralDensity", "spectral_density"]

_PROBES = ("gaussian", "rademacher")


@dataclass
class SpectralDensity:
    r"""Discrete spectral measure from :math:`d` probes of Lanczos.

    .. math::
        \hat\mu = \frac{1}{d}\sum_{j=1}^{d}\sum_i \gamma^{(j)}_i \delta_{\theta^{(j)}_i}

    Attributes:
        nodes: Ritz values of all probes, float64 (concatenated, ascending within each probe).
        weights: Matching weights, each probe's divided by :math:`d`; they sum to 1.
        per_probe: The :class:`LanczosResult` of each probe.
        dim: The operator's dimension :math:`P`.

    Example:
        >>> import torch
        >>> from lanczos_optim import spectral_density
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> sd = spectral_density(A, 3, num_probes=2, generator=torch.Generator().manual_seed(0))
        >>> sorted({round(x, 6) for x in sd.nodes.tolist()}), round(float(sd.weights.sum()), 6)
        ([1.0, 2.0, 3.0], 1.0)
    """

    nodes: Tensor
    weights: Tensor
    dim: int
    per_probe: list[LanczosResult] = field(default_factory=list)

    @property
    def num_probes(self) -> int:
        """Number of probe vectors."""
        return len(self.per_probe)

    @property
    def ritz_vectors(self) -> Tensor | None:
        """The ``[P, m]`` unit Ritz vectors of the first probe (with ``compute_vectors``)."""
        return self.per_probe[0].ritz_vectors if self.per_probe else None

    def moment(self, k: int) -> float:
        r"""The :math:`k`-th moment :math:`\sum_i w_i \theta_i^k`, estimating :math:`tr(A^k)/P`."""
        return float((self.weights * self.nodes**k).sum())

    def moments(self, k_max: int) -> Tensor:
        """Moments ``0..k_max`` as a float64 tensor."""
        return torch.tensor(
            [self.moment(k) for k in range(k_max + 1)], dtype=torch.float64, device="cpu"
        )

    def probe_traces(self) -> Tensor:
        r"""Per-probe Hutchinson estimates :math:`P\, v^\top A v / v^\top v`."""
        return torch.stack([self.dim * (r.weights * r.ritz_values).sum() for r in self.per_probe])

    def trace(self) -> tuple[float, float]:
        """Hutchinson trace estimate and its standard error (NaN for a single probe)."""
        t = self.probe_traces()
        se = float(t.std(unbiased=True) / math.sqrt(len(t))) if len(t) > 1 else float("nan")
        return float(t.mean()), se

    def smooth(self, grid: Tensor, sigma: float) -> Tensor:
        r"""Gaussian-kernel density :math:`\sum_i w_i \mathcal{N}(x; \theta_i, \sigma^2)` on a grid.

        Kernel smoothing biases every even moment upwards (paper, Theorem 5), which is why the
        default view is the discrete measure itself; use this only for display.
        """
        if not sigma > 0:
            raise ValueError(f"sigma must be positive; got {sigma}.")
        grid = torch.as_tensor(grid, dtype=torch.float64, device=self.nodes.device)
        z = (grid[:, None] - self.nodes[None, :]) / sigma
        kern = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return kern @ self.weights


def _probe(
    kind: str, dim: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator | None
) -> Tensor:
    gdev = gen.device if gen is not None else device
    if kind == "gaussian":
        v = torch.randn(dim, generator=gen, dtype=dtype, device=gdev)
    else:
        v = torch.randint(0, 2, (dim,), generator=gen, device=gdev).to(dtype) * 2 - 1
    return v.to(device)


def _starts(
    op: _MatVec, num_probes: int, probe: str, v0: Tensor | None, gen: torch.Generator | None
) -> list[Tensor]:
    """The probes' start vectors: the columns of ``v0``, or random draws of kind ``probe``."""
    if v0 is None:
        return [_probe(probe, op.dim, op.dtype, op.device, gen) for _ in range(num_probes)]
    if not isinstance(v0, Tensor) or v0.shape != (op.dim, num_probes):
        shape = tuple(v0.shape) if isinstance(v0, Tensor) else type(v0).__name__
        raise ValueError(f"v0 must be a tensor of shape ({op.dim}, {num_probes}); got {shape}.")
    return list(v0.to(op.device, op.dtype).unbind(dim=1))


def _batch_probes(
    batch_probes: bool | None, op: _MatVec, num_probes: int, reorthogonalize: bool, single: bool
) -> bool:
    """Whether to run the probes in lock-step; ``single``: an option only one-by-one runs have."""
    if batch_probes and single:
        raise ValueError("batch_probes=True cannot be combined with tol or compute_vectors.")
    if batch_probes is None:
        return op.matmat is not None and num_probes > 1 and reorthogonalize and not single
    return batch_probes


def spectral_density(
    operator: object,
    num_steps: int,
    num_probes: int = NUM_PROBES,
    *,
    probe: str = "gaussian",
    generator: torch.Generator | None = None,
    v0: Tensor | None = None,
    reorthogonalize: bool = True,
    batch_probes: bool | None = None,
    tol: float | None = None,
    stop_on: str = "extremes",
    compute_vectors: bool = False,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    callback: Callable[[int], None] | None = None,
) -> SpectralDensity:
    r"""Estimate the spectral density of a symmetric operator by stochastic Lanczos quadrature.

    For each random probe :math:`v`, ``num_steps`` Lanczos steps give Ritz values
    :math:`\theta_i` and Gauss weights :math:`\gamma_i` with
    :math:`\sum_i \gamma_i \theta_i^k = v^\top A^k v / v^\top v` for :math:`k \le 2m-1`. Its
    expectation over probes is :math:`\mathrm{tr}(A^k)/P`, the moments of the spectral density.
    In high dimension one probe is usually enough (paper, section 8).

    Args:
        operator: As for :func:`~lanczos_optim.lanczos`.
        num_steps: Lanczos steps per probe, ``>= 1``; capped at ``P`` (exact).
        num_probes: Number of independent probes, at least 1.
        probe: ``"gaussian"`` or ``"rademacher"``.
        generator: Random generator for the probes.
        v0: ``[P, num_probes]`` start vectors to use instead of random probes (each column is
            normalised); ``probe`` and ``generator`` are then unused.
        reorthogonalize: Full reorthogonalisation (default).
        batch_probes: Run the probes in lock-step, one ``matmat`` of all probes per step.
            Default: when the operator has ``matmat``, there are several probes and neither
            ``tol`` nor ``compute_vectors`` is set. Gives the same result as running them one
            by one; faster where ``matmat`` shares work (see ``benchmarks/peers.py``). Always
            reorthogonalises.
        tol: Stop a probe early once the residual bounds of the Ritz values chosen by
            ``stop_on`` fall below ``tol * max|theta|`` (see :func:`~lanczos_optim.lanczos`).
        stop_on: ``"extremes"``, ``"largest"``, ``"smallest"`` or ``"all"``.
        compute_vectors: Also compute the ``[P, m]`` Ritz vectors of the first probe
            (:attr:`SpectralDensity.ritz_vectors`); one probe's, to bound the memory.
        dim: Dimension of a callable operator.
        dtype: Dtype of a callable operator.
        device: Device of a callable operator.
        callback: Called as ``callback(j)`` after each Lanczos step, ``j`` counting the steps
            of the current probe (with ``batch_probes``, the lock-steps of all probes).

    Returns:
        A :class:`SpectralDensity`.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> g = torch.Generator().manual_seed(0)
        >>> sd = spectral_density(A, 20, num_probes=4, generator=g)
        >>> round(float(sd.weights.sum()), 6)
        1.0
        >>> abs(sd.moment(1) - 50.5) < 10
        True
        >>> sd = spectral_density(A, 200, compute_vectors=True, generator=g)  # capped at P
        >>> sd.ritz_vectors.shape
        torch.Size([100, 100])
    """
    num_probes = check_num_probes(num_probes)
    if probe not in _PROBES:
        raise ValueError(f"probe must be one of {_PROBES}; got {probe!r}.")
    op = as_matvec(operator, dim=dim, dtype=dtype, device=device)
    num_steps = check_lanczos_steps(num_steps, op.dim, name="num_steps")
    starts = _starts(op, num_probes, probe, v0, generator)
    if op.sync is not None:  # a distributed operator: every rank uses rank 0's probes
        starts = [op.sync(s) for s in starts]
    single = tol is not None or compute_vectors
    if _batch_probes(batch_probes, op, num_probes, reorthogonalize, single):
        matmat = op.matmat or (lambda m: torch.stack([op.matvec(c) for c in m.T], dim=1))
        results = lanczos_many(matmat, torch.stack(starts, dim=1), num_steps, callback)
    else:
        results = [
            lanczos(
                op.matvec,
                num_steps,
                v0=start,
                reorthogonalize=reorthogonalize,
                tol=tol,
                stop_on=stop_on,
                compute_vectors=compute_vectors and j == 0,
                dim=op.dim,
                dtype=op.dtype,
                device=op.device,
                callback=callback,
            )
            for j, start in enumerate(starts)
        ]
    nodes = torch.cat([r.ritz_values for r in results])
    weights = torch.cat([r.weights for r in results]) / num_probes
    return SpectralDensity(nodes=nodes, weights=weights, dim=op.dim, per_probe=results)

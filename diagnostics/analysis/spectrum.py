"""Lanczos eigenspectrum of a model's Hessian or GGN: compute, summarise, save and load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lanczos_optim
from diagnostics._progress import progress_bar
from diagnostics.analysis._spectrum_summary import SpectrumSummaries
from diagnostics.results import load_npz, parameter_hash, save_npz
from lanczos_optim import (
    CURVATURES,
    NUM_PROBES,
    SPECTRUM_LANCZOS_STEPS,
    LanczosResult,
    check_lanczos_steps,
    check_num_probes,
    curvature_operator,
    spectral_density,
)

__all__ = ["CURVATURES", "Spectrum", "compute_eigenspectrum"]

_KIND = "spectrum"
_VERSION = 1
_FLOAT_KEYS = ("ritz_values", "weights", "residuals", "alpha", "beta", "probe_residual_norm")
_INT_KEYS = ("probe", "probe_num_steps")


class Spectrum(SpectrumSummaries):
    r"""A stochastic Lanczos quadrature estimate of a curvature matrix's spectrum.

    With :math:`d` probes, probe :math:`j` giving Ritz values :math:`\theta^{(j)}_i` and Gauss
    weights :math:`\gamma^{(j)}_i` (summing to 1), the combined spectral measure is

    .. math::
        \hat\mu = \frac{1}{d} \sum_{j=1}^{d} \sum_i \gamma^{(j)}_i \, \delta_{\theta^{(j)}_i},

    whose moments estimate :math:`\operatorname{tr}(C^k)/P` (paper, appendix B.2).

    :meth:`save` writes every attribute below as a key of one ``.npz`` file, next to
    ``format``, ``format_version`` and ``meta`` (JSON).

    Attributes:
        ritz_values: float64 ``[n]``, the Ritz values of all probes, concatenated, ascending
            within each probe.
        weights: float64 ``[n]``, the combined measure's weights :math:`\gamma^{(j)}_i / d`;
            they sum to 1.
        residuals: float64 ``[n]``, residual bounds :math:`\|C u_i - \theta_i u_i\|`.
        probe: int64 ``[n]``, the probe each Ritz value belongs to.
        alpha: float64 ``[n]``, the tridiagonals' diagonals, concatenated per probe.
        beta: float64 ``[n - d]``, the tridiagonals' off-diagonals, concatenated per probe.
        probe_num_steps: int64 ``[d]``, steps taken per probe (fewer on breakdown or ``tol``).
        probe_residual_norm: float64 ``[d]``, the last :math:`\beta_m` per probe.
        ritz_vectors: ``[P, m_0]`` unit Ritz vectors of the first probe (columns in the order of
            ``probe_values(0)``), in the model's dtype, or ``None``.
        meta: Metadata: ``num_params``, ``curvature``, ``bn_mode``, ``lanczos_steps``,
            ``num_probes``, ``seed``, ``num_samples``, ``wall_time_s``, ``tol``, ``dtype``,
            ``param_hash`` (:func:`~diagnostics.results.provenance.parameter_hash` of the model),
            ``breakdown`` (per probe), ``versions`` (torch, numpy, lanczos_optim), and from
            the command line ``provenance`` (checkpoint, model, data set, subset, hashes).

    Example:
        >>> import tempfile, pathlib, torch
        >>> from lanczos_optim import lanczos
        >>> A = torch.tensor([[2.0, 1, 0], [1, 2, 1], [0, 1, 2]], dtype=torch.float64)
        >>> r = lanczos(A, 3, v0=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "spectrum.npz"
        >>> Spectrum.from_lanczos([r], num_params=3).save(path)
        >>> s = Spectrum.load(path)
        >>> bool(abs(s.ritz_values - torch.linalg.eigvalsh(A).numpy()).max() < 1e-12)
        True
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        ritz_vectors: np.ndarray | None = None,
    ) -> None:
        self.ritz_values = np.asarray(arrays["ritz_values"], dtype=np.float64)
        self.weights = np.asarray(arrays["weights"], dtype=np.float64)
        self.residuals = np.asarray(arrays["residuals"], dtype=np.float64)
        self.probe = np.asarray(arrays["probe"], dtype=np.int64)
        self.alpha = np.asarray(arrays["alpha"], dtype=np.float64)
        self.beta = np.asarray(arrays["beta"], dtype=np.float64)
        self.probe_num_steps = np.asarray(arrays["probe_num_steps"], dtype=np.int64)
        self.probe_residual_norm = np.asarray(arrays["probe_residual_norm"], dtype=np.float64)
        self.ritz_vectors = ritz_vectors
        self.meta = meta
        self._check()

    def _check(self) -> None:
        n, d = self.ritz_values.shape[0], self.probe_num_steps.shape[0]
        sizes = {k: getattr(self, k).shape for k in ("weights", "residuals", "probe", "alpha")}
        if d == 0 or n != int(self.probe_num_steps.sum()) or any(s != (n,) for s in sizes.values()):
            raise ValueError(f"Inconsistent spectrum arrays: {n} Ritz values, {sizes}, {d} probes.")
        if self.beta.shape != (n - d,) or self.probe_residual_norm.shape != (d,):
            raise ValueError(f"Inconsistent spectrum arrays: beta {self.beta.shape}, {d} probes.")
        if self.ritz_vectors is not None and self.ritz_vectors.shape != (
            self.num_params,
            int(self.probe_num_steps[0]),
        ):
            raise ValueError(
                f"ritz_vectors must have shape ({self.num_params}, {int(self.probe_num_steps[0])});"
                f" got {self.ritz_vectors.shape}."
            )

    def __repr__(self) -> str:
        return (
            f"Spectrum(curvature={self.meta.get('curvature')!r}, P={self.num_params}, "
            f"probes={self.num_probes}, steps={self.probe_num_steps.tolist()}, "
            f"lambda=[{self.lambda_min:.4g}, {self.lambda_max:.4g}], "
            f"ritz_vectors={self.ritz_vectors is not None})"
        )

    @property
    def num_params(self) -> int:
        """The parameter count :math:`P` (the matrix dimension)."""
        return int(self.meta["num_params"])

    @property
    def num_probes(self) -> int:
        """Number of probe vectors :math:`d`."""
        return int(self.probe_num_steps.shape[0])

    def probe_values(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values and weights (summing to 1) of probe ``j`` alone."""
        if not 0 <= j < self.num_probes:
            raise IndexError(f"probe must be in [0, {self.num_probes}); got {j}.")
        mask = self.probe == j
        return self.ritz_values[mask], self.weights[mask] * self.num_probes

    @classmethod
    def from_lanczos(
        cls, results: Sequence[LanczosResult], *, num_params: int, **meta: Any
    ) -> Spectrum:
        """Combine the Lanczos runs of several probes into one spectrum.

        Args:
            results: One :class:`~lanczos_optim.LanczosResult` per probe; the Ritz vectors of
                the first are kept if it has them.
            num_params: The matrix dimension :math:`P`.
            **meta: Further JSON-serialisable metadata (``curvature``, ``seed``, ...).

        Returns:
            A :class:`Spectrum`; ``meta`` also gets ``num_params``, ``num_probes``, ``dtype``,
            ``breakdown`` and ``versions``.

        Example:
            >>> import torch
            >>> from lanczos_optim import lanczos
            >>> A = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
            >>> r = lanczos(A, 3, v0=torch.ones(3, dtype=torch.float64))
            >>> s = Spectrum.from_lanczos([r], num_params=3)
            >>> round(s.negative_mass(), 6), round(s.trace()[0], 6)
            (0.333333, 4.0)
        """
        if not results:
            raise ValueError("results is empty; give one LanczosResult per probe.")
        d = len(results)
        arrays = {
            "ritz_values": torch.cat([r.ritz_values for r in results]).numpy(),
            "weights": torch.cat([r.weights for r in results]).numpy() / d,
            "residuals": torch.cat([r.residuals for r in results]).numpy(),
            "probe": np.concatenate([np.full(r.num_steps, j) for j, r in enumerate(results)]),
            "alpha": torch.cat([r.alpha for r in results]).numpy(),
            "beta": torch.cat([r.beta for r in results]).numpy(),
            "probe_num_steps": np.array([r.num_steps for r in results]),
            "probe_residual_norm": np.array([r.residual_norm for r in results]),
        }
        vecs = results[0].ritz_vectors
        info = {
            "num_params": int(num_params),
            "num_probes": d,
            "dtype": None if vecs is None else str(vecs.dtype).removeprefix("torch."),
            "breakdown": [bool(r.breakdown) for r in results],
            "versions": {
                "torch": torch.__version__,
                "numpy": np.__version__,
                "lanczos_optim": lanczos_optim.__version__,
            },
        }
        info.update(meta)
        return cls(arrays, info, None if vecs is None else vecs.detach().cpu().numpy())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the spectrum to one ``.npz`` file atomically (keys: see the class docstring)."""
        arrays = {k: getattr(self, k) for k in _FLOAT_KEYS + _INT_KEYS}
        if self.ritz_vectors is not None:
            arrays["ritz_vectors"] = self.ritz_vectors
        save_npz(path, _KIND, arrays, self.meta, version=_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Spectrum:
        """Read a spectrum written by :meth:`save`.

        Raises:
            ValueError: If the file is corrupt, not a spectrum file, of another format version
                or inconsistent.
        """
        arrays, meta = load_npz(path, _KIND, version=_VERSION)
        missing = [k for k in (*_FLOAT_KEYS, *_INT_KEYS) if k not in arrays] + [
            k for k in ("num_params",) if k not in meta
        ]
        if missing:
            raise ValueError(f"{str(path)!r} is a spectrum file without {missing}.")
        try:
            return cls(arrays, meta, arrays.get("ritz_vectors"))
        except ValueError as exc:
            raise ValueError(f"{str(path)!r}: {exc}") from exc


def _probe_progress(bar: Any, steps: int) -> Callable[[int], None]:
    """Lanczos callback moving ``bar`` over the steps of all probes, one probe after another.

    A probe's step 1 starts the next probe; a probe that stopped early counts as done then.
    """
    probe = [-1]

    def advance(step: int) -> None:
        if step == 1:
            probe[0] += 1
        bar.update(probe[0] * steps + step - bar.n)

    return advance


def _seeded_probes(seed: int, num_probes: int, dim: int) -> Tensor:
    """``[P, d]`` float64 probes: the first ``d`` draws of ``randn(P)`` from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    draws = [
        torch.randn(dim, generator=gen, dtype=torch.float64, device="cpu")
        for _ in range(num_probes)
    ]
    return torch.stack(draws, dim=1)


def compute_eigenspectrum(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: object,
    *,
    curvature: str = "hessian",
    lanczos_steps: int = SPECTRUM_LANCZOS_STEPS,
    num_probes: int = NUM_PROBES,
    bn_mode: str = "eval",
    save_eigvec: bool = False,
    seed: int | None = None,
    params: Iterable[Tensor] | None = None,
    tol: float | None = None,
    cache_graphs: bool | None = None,
    progress: bool = False,
    reduction: str | None = None,
    outputs: object = None,
    check_deterministic: bool = True,
) -> Spectrum:
    r"""Estimate the spectrum of the Hessian or GGN of a model's loss by Lanczos quadrature.

    Each of ``num_probes`` Gaussian probes runs ``lanczos_steps`` Lanczos steps with full
    reorthogonalisation on the full-data curvature operator, whose products weight batch
    :math:`b` by its share of the loss's normaliser (:math:`|b|/N`, or its class weights and
    non-ignored targets for a weighted cross-entropy; see
    :class:`~lanczos_optim.HessianOperator`). The Ritz values and weights of all probes form the
    combined measure of :class:`Spectrum`. The model, its buffers and its gradients are left
    untouched.

    Args:
        model: The network.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar.
        data: One ``(inputs, targets)`` batch or a re-iterable of batches (list, DataLoader).
        curvature: ``"hessian"`` or ``"ggn"``.
        lanczos_steps: Lanczos steps per probe, ``>= 1``; more than ``P`` are capped at ``P``
            (exact: the Krylov space is then the whole space), and ``meta["lanczos_steps"]``
            records the steps run.
        num_probes: Number of independent probes (the paper uses 1, section 8).
        bn_mode: ``"eval"`` (BatchNorm running statistics) or ``"train"`` (batch statistics).
        save_eigvec: Keep the Ritz vectors of the first probe (``[P, m]`` memory).
        seed: Seed of the probes: probe ``j`` is the ``j``-th draw of
            ``torch.randn(P, dtype=torch.float64)`` from ``torch.Generator().manual_seed(seed)``,
            cast to the model's dtype. ``None`` draws a seed (without touching torch's global
            generator) and records it in ``meta["seed"]``.
        params: Parameters to differentiate (default: all with ``requires_grad``).
        tol: Optional relative residual tolerance to stop a probe early on its extreme Ritz
            values.
        cache_graphs: Keep every batch's autograd graph across the Lanczos steps so that a
            product is one backward pass (see :class:`~lanczos_optim.HessianOperator`); costs
            the memory of all the batches' graphs. Default: only when ``data`` is one batch.
        progress: Show a progress bar of the Lanczos steps of all probes on stderr (only when
            it is a terminal).
        reduction: ``"mean"`` or ``"sum"`` for a loss that states no reduction (a lambda);
            ``None`` reads it from the loss or checks it (see the operators).
        outputs: Picks the tensor the loss takes from dict/tuple model outputs (a key, an
            index or a function; default: a mapping's ``"logits"``).
        check_deterministic: Refuse data that differ between passes (a shuffled DataLoader,
            random augmentation): every Lanczos step is one pass over ``data``.

    Returns:
        A :class:`Spectrum`.

    Raises:
        ValueError: On an unknown ``curvature`` or ``bn_mode``, ``lanczos_steps`` or
            ``num_probes`` not an int ``>= 1``, or empty ``data``.
        TypeError: On data that is not batches.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> x = torch.randn(16, 3, dtype=torch.float64)
        >>> y = torch.randn(16, 1, dtype=torch.float64)
        >>> s = compute_eigenspectrum(model, torch.nn.MSELoss(), (x, y), lanczos_steps=3, seed=0)
        >>> exact = torch.linalg.eigvalsh(2 * x.T @ x / 16).numpy()
        >>> bool(abs(s.ritz_values - exact).max() < 1e-10)
        True
    """
    check_lanczos_steps(lanczos_steps)
    probes = check_num_probes(num_probes)
    seed_value = int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)
    op = curvature_operator(
        curvature,
        model,
        loss_fn,
        data,
        params=params,
        bn_mode=bn_mode,
        cache_graphs=cache_graphs,
        reduction=reduction,
        outputs=outputs,  # type: ignore[arg-type]
        check_deterministic=check_deterministic,
    )
    steps = check_lanczos_steps(lanczos_steps, op.shape[0])
    start = time.perf_counter()
    with progress_bar(
        probes * steps, f"Lanczos ({curvature})", enabled=progress, unit="step"
    ) as bar:
        density = spectral_density(
            op,
            steps,
            probes,
            v0=_seeded_probes(seed_value, probes, op.shape[0]),
            tol=tol,
            compute_vectors=save_eigvec,
            batch_probes=False,
            callback=_probe_progress(bar, steps),
        )
        bar.update(probes * steps - bar.n)  # a last probe that stopped early counts as done
    wall = time.perf_counter() - start
    op.clear_cache()
    meta = {
        "curvature": curvature,
        "bn_mode": bn_mode,
        "lanczos_steps": steps,
        "num_probes": probes,
        "seed": seed_value,
        "num_samples": op.num_samples,
        "wall_time_s": wall,
        "tol": tol,
        "dtype": str(op.dtype).removeprefix("torch."),
        "param_hash": parameter_hash(model),
    }
    return Spectrum.from_lanczos(density.per_probe, num_params=op.shape[0], **meta)

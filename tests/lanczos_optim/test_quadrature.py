"""Stochastic Lanczos quadrature against closed forms and the random-matrix laws of section 6.

Exact checks use float64 matrices built explicitly (the global default dtype is never touched):
Rademacher probes of a diagonal matrix give its spectral moments exactly; the Hutchinson
estimate and its standard error are compared with their closed-form variances; Gaussian
smoothing adds sigma^2 to the second moment (paper, Theorem 5). The laws of section 6 (Wigner,
Marchenko-Pastur with q = 0.5 and q = 2, the section 6.4 synthetic spectrum) are checked with
the Wasserstein-1 distance between the Lanczos measure and the exact eigenvalues, relative to
the spectrum's span.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from diagnostics.analysis.random_matrices import marchenko_pastur, synthetic_spectrum, wigner
from lanczos_optim import lanczos, spectral_density

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rotated(eigvals: torch.Tensor, seed: int) -> torch.Tensor:
    gen = _gen(seed)
    q, r = torch.linalg.qr(torch.randn(len(eigvals), len(eigvals), generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    a = (q * eigvals) @ q.T
    return 0.5 * (a + a.T)


def _indefinite(p: int = 60, seed: int = 0) -> torch.Tensor:
    eig = torch.cat(
        [torch.linspace(-2.0, 3.0, p - 2, dtype=F64), torch.tensor([-6.0, 9.0], dtype=F64)]
    )
    return _rotated(eig, seed)


BATCH = pytest.mark.parametrize("batch_probes", [False, True], ids=["sequential", "lock-step"])


# ----------------------------------------------------------------------------- exact moments


@BATCH
def test_rademacher_probes_give_the_exact_moments_of_a_diagonal_matrix(batch_probes):
    # For z in {-1, 1}^P, z' D^k z / z'z = tr(D^k) / P whatever the draw.
    d = torch.cat([torch.linspace(-3.0, 5.0, 49, dtype=F64), torch.tensor([11.0], dtype=F64)])
    a = torch.diag(d)
    m, probes = 5, 3
    sd = spectral_density(
        a, m, probes, probe="rademacher", generator=_gen(0), batch_probes=batch_probes
    )
    scale = float(d.abs().max())
    exact = torch.stack([(d**k).mean() for k in range(2 * m)])
    torch.testing.assert_close(
        sd.moments(2 * m - 1),
        exact,
        rtol=0,
        atol=1e-10 * scale ** (2 * m - 1),
    )
    for k in range(2 * m):
        assert sd.moment(k) == pytest.approx(float(exact[k]), abs=1e-10 * scale**k)
    est, se = sd.trace()
    assert est == pytest.approx(float(d.sum()), abs=1e-10)
    assert se < 1e-10
    torch.testing.assert_close(
        sd.probe_traces(), torch.full((probes,), float(d.sum()), dtype=F64), rtol=0, atol=1e-10
    )
    # Gaussian probes are not exact for the same matrix: the probe argument is honoured.
    gauss = spectral_density(a, m, probes, probe="gaussian", generator=_gen(0))
    assert abs(gauss.moment(1) - float(d.mean())) > 1e-6


@BATCH
def test_per_probe_results_are_kept_and_combine_into_the_measure(batch_probes):
    a = _indefinite()
    m, probes = 8, 5
    sd = spectral_density(a, m, probes, generator=_gen(1), batch_probes=batch_probes)
    assert sd.num_probes == len(sd.per_probe) == probes
    assert sd.dim == 60
    for r in sd.per_probe:
        assert r.num_steps == m
        assert float(r.weights.sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(r.weights.min()) >= 0.0
    torch.testing.assert_close(sd.nodes, torch.cat([r.ritz_values for r in sd.per_probe]))
    torch.testing.assert_close(
        sd.weights, torch.cat([r.weights for r in sd.per_probe]) / probes, rtol=0, atol=1e-15
    )
    assert float(sd.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    for k in (1, 2, 5):
        per = [float((r.weights * r.ritz_values**k).sum()) for r in sd.per_probe]
        assert sd.moment(k) == pytest.approx(float(np.mean(per)), rel=1e-12)
    traces = torch.stack([60 * (r.weights * r.ritz_values).sum() for r in sd.per_probe])
    torch.testing.assert_close(sd.probe_traces(), traces)
    # The probes are independent draws, not copies of one.
    first = torch.stack([r.alpha[0] for r in sd.per_probe])
    assert len(set(first.tolist())) == probes
    # Each probe is a valid Gauss rule: nodes inside the spectrum's hull.
    lam = torch.linalg.eigvalsh(a)
    assert float(sd.nodes.min()) >= float(lam[0]) - 1e-10
    assert float(sd.nodes.max()) <= float(lam[-1]) + 1e-10


def test_lock_step_and_sequential_probes_agree():
    a = _indefinite(seed=2)
    one = spectral_density(a, 10, 4, generator=_gen(3), batch_probes=False)
    many = spectral_density(a, 10, 4, generator=_gen(3), batch_probes=True)
    torch.testing.assert_close(one.nodes, many.nodes, rtol=0, atol=1e-10)
    torch.testing.assert_close(one.weights, many.weights, rtol=0, atol=1e-12)


def test_probes_follow_the_generator():
    a = _indefinite()
    x = spectral_density(a, 6, 3, generator=_gen(4))
    y = spectral_density(a, 6, 3, generator=_gen(4))
    z = spectral_density(a, 6, 3, generator=_gen(5))
    assert torch.equal(x.nodes, y.nodes)
    assert torch.equal(x.weights, y.weights)
    assert float((x.nodes - z.nodes).abs().max()) > 1e-6


def test_single_probe_measure_is_the_lanczos_run_of_that_probe():
    a = _indefinite()
    sd = spectral_density(a, 12, 1, generator=_gen(6))
    (res,) = sd.per_probe
    assert torch.equal(sd.nodes, res.ritz_values)
    assert torch.equal(sd.weights, res.weights)
    est, se = sd.trace()
    assert est == pytest.approx(60 * float((res.weights * res.ritz_values).sum()))
    assert math.isnan(se)


# ----------------------------------------------------------------------------- Hutchinson trace


@pytest.fixture(scope="module")
def spd_200() -> torch.Tensor:
    eig = torch.cat([torch.linspace(0.5, 3.0, 195, dtype=F64), torch.arange(6.0, 11.0, dtype=F64)])
    return _rotated(eig, 7)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_trace_estimate_is_within_three_standard_errors_with_the_right_variance(spd_200, probe):
    a = spd_200
    p, probes = a.shape[0], 400
    sd = spectral_density(a, 4, probes, probe=probe, generator=_gen(8))
    est, se = sd.trace()
    exact = float(torch.trace(a))
    assert abs(est - exact) <= 3 * se
    # The standard error is the sample sd over sqrt(d); compare with the closed-form sd of one
    # probe's estimate P z'Az / z'z.
    lam = torch.linalg.eigvalsh(a)
    if probe == "gaussian":  # z / |z| uniform on the sphere
        var = 2 * p**2 / (p + 2) * float((lam**2).mean() - lam.mean() ** 2)
    else:  # Var z'Az = 2 sum_{i != j} A_ij^2
        var = 2 * float((a**2).sum() - (torch.diagonal(a) ** 2).sum())
    assert se * math.sqrt(probes) == pytest.approx(math.sqrt(var), rel=0.15)
    assert se < 0.02 * exact


# ----------------------------------------------------------------------------- smoothing


@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_smoothing_integrates_to_one_and_inflates_even_moments(sigma):
    """Paper, Theorem 5: a Gaussian kernel adds sigma^2 to the second moment (and more above)."""
    sd = spectral_density(_indefinite(), 10, 3, generator=_gen(9))
    lo, hi = float(sd.nodes.min()) - 12 * sigma, float(sd.nodes.max()) + 12 * sigma
    grid = torch.linspace(lo, hi, 40001, dtype=F64)
    dens = sd.smooth(grid, sigma)
    assert dens.dtype == F64
    assert dens.shape == grid.shape
    assert float(dens.min()) >= 0.0

    def integral(k: int) -> float:
        return float(torch.trapezoid(dens * grid**k, grid))

    m1, m2, m4 = sd.moment(1), sd.moment(2), sd.moment(4)
    assert integral(0) == pytest.approx(1.0, abs=1e-8)
    assert integral(1) == pytest.approx(m1, abs=1e-7)
    assert integral(2) > m2
    assert integral(2) == pytest.approx(m2 + sigma**2, rel=1e-7)
    assert integral(4) == pytest.approx(m4 + 6 * sigma**2 * m2 + 3 * sigma**4, rel=1e-7)


def test_smoothing_rejects_a_non_positive_width():
    sd = spectral_density(_indefinite(), 4, 1, generator=_gen(10))
    grid = torch.linspace(-1, 1, 5, dtype=F64)
    for sigma in (0.0, -0.1):
        with pytest.raises(ValueError, match=f"sigma must be positive; got {sigma}"):
            sd.smooth(grid, sigma)


# ----------------------------------------------------------------------------- section 6 laws

P_LAW = 1000


def _span(lam: np.ndarray) -> float:
    return float(lam.max() - lam.min())


def _w1(nodes, weights, lam: np.ndarray, lam_weights=None) -> float:
    """Wasserstein-1 distance between a weighted measure and the eigenvalues, over the span."""
    return wasserstein_distance(
        np.asarray(nodes), lam, u_weights=np.asarray(weights), v_weights=lam_weights
    ) / _span(lam)


ENSEMBLES = {
    # Paper 6.1: M / sqrt(P) with N(0, 1) entries, semicircle on [-2, 2].
    "wigner": lambda: wigner(P_LAW, generator=_gen(20)) / math.sqrt(P_LAW),
    # Paper 6.2: X X' / T with q = P / T.
    "mp_q0.5": lambda: marchenko_pastur(P_LAW, 2 * P_LAW, generator=_gen(21)),
    "mp_q2": lambda: marchenko_pastur(P_LAW, P_LAW // 2, generator=_gen(22)),
}


@functools.cache
def _ensemble(name: str) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    a = ENSEMBLES[name]()
    lam, vecs = torch.linalg.eigh(a)
    return a, lam.numpy(), vecs


@pytest.fixture(params=sorted(ENSEMBLES))
def ensemble(request):
    return (request.param, *_ensemble(request.param))


@pytest.fixture(scope="module")
def synthetic():
    h, lam = synthetic_spectrum(P_LAW, generator=_gen(23))
    _, vecs = torch.linalg.eigh(h)
    return h, lam.numpy(), vecs


def test_one_probe_thirty_steps_match_the_spectrum(ensemble):
    """Paper, figures 2-4: m = 30, d = 1 captures the support and the shape."""
    _, a, lam, _ = ensemble
    sd = spectral_density(a, 30, 1, generator=_gen(30))
    w1 = _w1(sd.nodes, sd.weights, lam)
    assert w1 < 0.04, w1  # observed <= 0.029 over 20 matrix/probe seeds
    # Negative control: the same nodes with equal weights (a wrong quadrature) are far off.
    equal = torch.full_like(sd.weights, 1.0 / len(sd.weights))
    assert _w1(sd.nodes, equal, lam) > 0.08
    # The extreme Ritz values reach the edges of the spectrum.
    assert abs(float(sd.nodes.max()) - lam.max()) < 0.02 * _span(lam)
    assert abs(float(sd.nodes.min()) - lam.min()) < 0.02 * _span(lam)


def test_gauss_quadrature_error_shrinks_like_one_over_m(ensemble):
    """Against the probe's own measure sum_i (q_i'v)^2 delta(lambda_i), free of probe noise."""
    _, a, lam, vecs = ensemble
    v0 = torch.randn(P_LAW, generator=_gen(31), dtype=F64)
    own = ((vecs.T @ v0) ** 2 / (v0 @ v0)).numpy()
    errors = []
    for m in (5, 15, 30):
        res = lanczos(a, m, v0=v0)
        errors.append(_w1(res.ritz_values, res.weights, lam, own))
        assert errors[-1] < 0.4 / m, (m, errors[-1])  # observed <= 0.33 / m over 20 seeds
    assert errors[0] > errors[1] > errors[2]


def test_marchenko_pastur_q2_atom_at_zero_is_found_with_its_exact_weight():
    a, lam, vecs = _ensemble("mp_q2")
    v0 = torch.randn(P_LAW, generator=_gen(32), dtype=F64)
    res = lanczos(a, 30, v0=v0)
    i = int(torch.argmin(res.ritz_values.abs()))
    assert abs(float(res.ritz_values[i])) < 1e-8
    null = torch.from_numpy(np.abs(lam) < 1e-8)
    assert int(null.sum()) == P_LAW // 2
    proj = float(((vecs[:, null].T @ v0) ** 2).sum() / (v0 @ v0))
    assert float(res.weights[i]) == pytest.approx(proj, abs=1e-6)
    # ... which is the law's atom 1 - 1/q = 0.5 up to the probe's fluctuation (sd ~0.022).
    assert float(res.weights[i]) == pytest.approx(0.5, abs=0.07)
    # Only that one Ritz value sits in the gap (0, lambda_-) of the law.
    lam_minus = (1 - math.sqrt(2)) ** 2
    others = torch.cat([res.ritz_values[:i], res.ritz_values[i + 1 :]])
    assert float(others.min()) > 0.5 * lam_minus


@pytest.mark.parametrize(("m", "bound"), [(5, 0.06), (15, 0.03), (30, 0.02)])
def test_synthetic_spectrum_is_resolved_as_steps_grow(synthetic, m, bound):
    """Paper, section 6.4 and figure 6: 5, 15 and 30 steps on the same probe."""
    h, lam, _ = synthetic
    span = _span(lam)
    v0 = torch.randn(P_LAW, generator=_gen(33), dtype=F64)
    res = lanczos(h, m, v0=v0)
    w1 = _w1(res.ritz_values, res.weights, lam)
    # Observed over 30 matrix/probe seeds: <= 0.038, 0.018, 0.014.
    assert w1 < bound, w1
    theta = res.ritz_values
    lowest_error = float(theta.min()) - float(lam.min())
    negative = int((theta < -0.5).sum())
    if m == 5:
        # Five steps miss the negative outliers: at most one Ritz value stands for all ten,
        # and it is far from lambda_min (observed >= 0.049 of the span).
        assert negative <= 1
        assert lowest_error > 0.03 * span
    if m == 30:
        # Thirty steps find lambda_min and lambda_max and several negative outliers
        # (observed: >= 6 Ritz values below -0.5, extremes to 1e-5 of the span).
        assert negative >= 4
        assert lowest_error < 1e-4 * span
        assert float(theta.max()) == pytest.approx(lam.max(), abs=1e-8 * span)


def test_synthetic_spectrum_spike_at_zero_carries_half_the_mass(synthetic):
    h, lam, _ = synthetic
    v0 = torch.randn(P_LAW, generator=_gen(34), dtype=F64)
    res = lanczos(h, 30, v0=v0)
    # Half the eigenvalues are exactly zero: about half the weight sits within 0.5 of zero
    # (observed 0.47-0.57 over 30 seeds; the probe's own mass there is ~0.52).
    near_zero = float(res.weights[res.ritz_values.abs() < 0.5].sum())
    assert near_zero == pytest.approx(0.5, abs=0.1)
    # No Ritz value is placed in a region without eigenvalues: below lambda_min or above
    # lambda_max (interlacing), so the spike does not leak below the negative outliers.
    assert float(res.ritz_values.min()) >= float(lam.min()) - 1e-10
    assert float(res.ritz_values.max()) <= float(lam.max()) + 1e-10


def test_without_reorthogonalisation_the_synthetic_basis_loses_orthogonality(synthetic):
    """Same quadrature at first, but ghosts of the top outlier appear once it converges."""
    h, lam, _ = synthetic
    v0 = torch.randn(P_LAW, generator=_gen(35), dtype=F64)
    eye = torch.eye(60, dtype=F64)
    good = lanczos(h, 60, v0=v0, keep_basis=True)
    bad = lanczos(h, 60, v0=v0, keep_basis=True, reorthogonalize=False)
    assert float((good.basis @ good.basis.T - eye).abs().max()) < 1e-12
    assert float((bad.basis @ bad.basis.T - eye).abs().max()) > 0.1
    top = float(lam.max())
    assert int(((good.ritz_values - top).abs() < 1e-6).sum()) == 1
    assert int(((bad.ritz_values - top).abs() < 1e-6).sum()) >= 2


# ----------------------------------------------------------------------------- bad input


def _diag(p: int = 5) -> torch.Tensor:
    return torch.diag(torch.arange(1.0, p + 1.0, dtype=F64))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"num_probes": 0}, ValueError, r"Invalid num_probes value: 0 \(must be an int >= 1\)"),
        ({"num_probes": -2}, ValueError, "num_probes value: -2"),
        ({"num_probes": 2.0}, ValueError, "num_probes value: 2.0"),
        ({"num_probes": True}, ValueError, "num_probes value: True"),
        ({"probe": "uniform"}, ValueError, "probe must be one of.*'rademacher'.*got 'uniform'"),
        ({"num_steps": 0, "num_probes": 1}, ValueError, "Invalid num_steps value: 0"),
        ({"v0": torch.ones(5, 1, dtype=F64)}, ValueError, r"v0 .*\(5, 2\); got \(5, 1\)"),
        ({"tol": 1e-6, "batch_probes": True}, ValueError, "batch_probes=True cannot"),
        ({"operator": torch.ones(2, 3, dtype=F64)}, ValueError, r"\(2, 3\)"),
        ({"operator": lambda v: v}, ValueError, "dim="),
    ],
)
def test_bad_input_raises_and_names_the_value(kwargs, exc, match):
    args = {"operator": _diag(), "num_steps": 3, "num_probes": 2} | kwargs
    with pytest.raises(exc, match=match):
        spectral_density(args.pop("operator"), args.pop("num_steps"), **args)


@pytest.mark.parametrize(
    ("num_steps", "exc", "match"),
    [
        (0, ValueError, "num_steps value: 0"),
        (-1, ValueError, "num_steps value: -1"),
        (2.5, ValueError, "num_steps value: 2.5"),
    ],
)
def test_lock_step_path_validates_num_steps(num_steps, exc, match):
    with pytest.raises(exc, match=match):
        spectral_density(_diag(), num_steps, 2)


class _WrongMatmat:
    """A symmetric operator whose matmat drops columns (a bug in a user's operator)."""

    shape = (5, 5)
    dtype = F64

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return _diag() @ v

    def matmat(self, m: torch.Tensor) -> torch.Tensor:
        return (_diag() @ m)[:, :1]


def test_lock_step_path_rejects_a_wrong_shaped_matmat():
    with pytest.raises(ValueError, match="shape"):
        spectral_density(_WrongMatmat(), 3, 2, generator=_gen(0))


class _NanMatmat(_WrongMatmat):
    def matmat(self, m: torch.Tensor) -> torch.Tensor:
        return torch.full_like(m, float("nan"))


def test_lock_step_path_raises_floating_point_error_on_non_finite_products():
    with pytest.raises(FloatingPointError, match="non-finite"):
        spectral_density(_NanMatmat(), 3, 2, generator=_gen(0))


def test_dense_operator_with_nan_is_refused_up_front():
    a = _diag()
    a[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        spectral_density(a, 3, 2, generator=_gen(0))


def _random_spd(p: int = 30, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=F64))
    eig = torch.cat([torch.linspace(-1.0, 1.0, p - 1, dtype=F64), torch.tensor([10.0], dtype=F64)])
    return q @ torch.diag(eig) @ q.T  # an outlier at 10: the largest Ritz value converges fast


def test_given_start_vectors_tol_and_vectors_match_lanczos_probe_by_probe():
    """v0, tol and compute_vectors give exactly the per-probe lanczos runs (one spectrum path)."""
    a = _random_spd()
    v0 = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    sd = spectral_density(a, 25, 3, v0=v0, tol=1e-10, stop_on="largest", compute_vectors=True)
    for j, r in enumerate(sd.per_probe):
        ref = lanczos(a, 25, v0=v0[:, j], tol=1e-10, stop_on="largest", compute_vectors=j == 0)
        assert r.num_steps == ref.num_steps < 25  # tol stopped early
        assert torch.equal(r.alpha, ref.alpha)
        assert torch.equal(r.beta, ref.beta)
        assert (r.ritz_vectors is None) == (j > 0)
    assert torch.equal(sd.ritz_vectors, sd.per_probe[0].ritz_vectors)
    u, theta = sd.ritz_vectors, sd.per_probe[0].ritz_values
    top = int(theta.argmax())  # the converged largest Ritz pair is an eigenpair of A
    assert float(torch.linalg.vector_norm(a @ u[:, top] - theta[top] * u[:, top])) < 1e-6
    torch.testing.assert_close(theta[top], torch.linalg.eigvalsh(a)[-1], rtol=0, atol=1e-8)


def test_steps_above_the_dimension_are_capped_at_the_exact_spectrum():
    a = _random_spd(p=6)
    g = torch.Generator().manual_seed(0)
    sd = spectral_density(a, 50, 2, generator=g)
    assert [r.num_steps for r in sd.per_probe] == [6, 6]
    exact = torch.linalg.eigvalsh(a)
    for r in sd.per_probe:
        torch.testing.assert_close(r.ritz_values, exact, rtol=0, atol=1e-10)
    assert sd.ritz_vectors is None

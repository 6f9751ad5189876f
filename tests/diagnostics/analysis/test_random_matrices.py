"""Random-matrix generators against their analytic laws (paper, section 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diagnostics.analysis import random_matrices
from diagnostics.analysis.random_matrices import (
    marchenko_pastur,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_support,
    semicircle_cdf,
    semicircle_density,
    synthetic_spectrum,
    wigner,
)

F64 = torch.float64
P = 1000  # large enough for the limit laws, small enough for a fast eigvalsh


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _w1_to_law(samples: np.ndarray, cdf, lo: float, hi: float, n: int = 40001) -> float:
    """Wasserstein-1 distance int |F_emp - F| dx between samples and a law given by its CDF."""
    x = np.linspace(lo, hi, n)
    emp = np.searchsorted(np.sort(samples), x, side="right") / len(samples)
    return float(np.trapezoid(np.abs(emp - cdf(x)), x))


def _semicircle_cdf_np(radius: float = 2.0):
    return lambda x: semicircle_cdf(torch.as_tensor(x, dtype=F64), radius).numpy()


def _mp_cdf_np(q: float, sigma: float = 1.0):
    return lambda x: marchenko_pastur_cdf(torch.as_tensor(x, dtype=F64), q, sigma).numpy()


# ----------------------------------------------------------------------------- generators


GENERATORS = {
    "wigner": lambda gen, dtype: wigner(60, generator=gen, dtype=dtype),
    "marchenko_pastur_q0.5": lambda gen, dtype: marchenko_pastur(
        60, 120, generator=gen, dtype=dtype
    ),
    "marchenko_pastur_q2": lambda gen, dtype: marchenko_pastur(60, 30, generator=gen, dtype=dtype),
    "synthetic": lambda gen, dtype: synthetic_spectrum(100, generator=gen, dtype=dtype)[0],
}


@pytest.fixture(params=sorted(GENERATORS))
def make_matrix(request):
    return GENERATORS[request.param]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_generators_return_exactly_symmetric_matrices_of_the_dtype(make_matrix, dtype):
    m = make_matrix(_gen(0), dtype)
    assert m.dtype == dtype
    assert m.ndim == 2
    assert m.shape[0] == m.shape[1]
    assert torch.equal(m, m.T)
    assert torch.isfinite(m).all()


def test_generators_reproduce_with_a_seed_and_differ_across_seeds(make_matrix):
    a = make_matrix(_gen(3), F64)
    b = make_matrix(_gen(3), F64)
    c = make_matrix(_gen(4), F64)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_generators_accept_the_global_generator(make_matrix):
    torch.manual_seed(11)
    a = make_matrix(None, F64)
    torch.manual_seed(11)
    b = make_matrix(None, F64)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- Wigner


def test_wigner_entries_are_standard_normal():
    m = wigner(400, generator=_gen(1))
    iu = torch.triu_indices(400, 400, offset=1)
    off = m[iu[0], iu[1]]
    diag = torch.diagonal(m)
    # 79,800 off-diagonal draws: the sample variance is within ~0.005 of 1 (1 sd).
    assert abs(float(off.mean())) < 0.02
    assert abs(float(off.var()) - 1.0) < 0.03
    assert abs(float(diag.var()) - 1.0) < 0.3
    # Upper and lower triangles are the same draws, not independent ones.
    assert torch.equal(m[iu[0], iu[1]], m[iu[1], iu[0]])


@pytest.fixture(scope="module")
def wigner_eigs() -> np.ndarray:
    return torch.linalg.eigvalsh(wigner(P, generator=_gen(2))).numpy()


def test_wigner_spectrum_follows_the_semicircle_on_minus_two_two(wigner_eigs):
    lam = wigner_eigs / math.sqrt(P)
    cdf = _semicircle_cdf_np()
    w1 = _w1_to_law(lam, cdf, -2.5, 2.5)
    ks = stats.kstest(lam, cdf).statistic
    assert w1 < 0.01, w1  # observed ~0.003
    assert ks < 0.01, ks  # observed ~0.003
    assert abs(lam.max() - 2.0) < 0.1
    assert abs(lam.min() + 2.0) < 0.1
    assert abs(np.mean(lam**2) - 1.0) < 0.02  # variance R^2 / 4 = 1
    # Negative control: the same distance to a semicircle 5 % too wide is well above the bound.
    assert _w1_to_law(lam, _semicircle_cdf_np(2.1), -2.5, 2.5) > 0.03


def test_unscaled_wigner_follows_the_semicircle_of_radius_two_sqrt_p(wigner_eigs):
    radius = 2 * math.sqrt(P)
    w1 = _w1_to_law(wigner_eigs, _semicircle_cdf_np(radius), -1.2 * radius, 1.2 * radius)
    assert w1 / radius < 0.005


def test_semicircle_density_is_normalised_with_variance_r2_over_4():
    for radius in (0.5, 2.0, 7.0):

        def dens(x: float, r: float = radius) -> float:
            return float(semicircle_density(x, r))

        total, _ = integrate.quad(dens, -radius, radius)
        var, _ = integrate.quad(lambda x, d=dens: x * x * d(x), -radius, radius)
        assert total == pytest.approx(1.0, abs=1e-8)
        assert var == pytest.approx(radius**2 / 4, rel=1e-8)
    x = torch.tensor([-3.0, -2.0, 0.0, 2.0, 2.5], dtype=F64)
    dens = semicircle_density(x)
    assert dens.dtype == F64
    assert dens.tolist() == pytest.approx([0.0, 0.0, 1 / math.pi, 0.0, 0.0])


def test_semicircle_cdf_is_the_integral_of_the_density():
    radius = 3.0
    for x in (-3.5, -2.9, -1.0, 0.0, 0.4, 2.99, 4.0):
        lo = -radius
        expected = (
            integrate.quad(lambda t: float(semicircle_density(t, radius)), lo, min(x, radius))[0]
            if x > lo
            else 0.0
        )
        assert float(semicircle_cdf(x, radius)) == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- Marchenko-Pastur


@pytest.mark.parametrize(
    ("q", "sigma"), [(0.25, 1.0), (0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (4.0, 1.5)]
)
def test_marchenko_pastur_law_is_normalised_with_mean_sigma2_and_variance_sigma4_q(q, sigma):
    lo, hi = marchenko_pastur_support(q, sigma)
    dens = lambda x: float(marchenko_pastur_density(x, q, sigma))  # noqa: E731
    mass, _ = integrate.quad(dens, lo, hi, limit=200)
    mean, _ = integrate.quad(lambda x: x * dens(x), lo, hi, limit=200)
    second, _ = integrate.quad(lambda x: x * x * dens(x), lo, hi, limit=200)
    atom = marchenko_pastur_atom(q)
    # The density holds only the continuous part, min(1, 1/q); the atom (at 0) holds the rest.
    assert mass == pytest.approx(min(1.0, 1.0 / q), abs=1e-6)
    assert atom + mass == pytest.approx(1.0, abs=1e-6)
    assert mean == pytest.approx(sigma**2, rel=1e-6)  # the atom adds nothing to the mean
    assert second - mean**2 == pytest.approx(sigma**4 * q, rel=1e-5)


@pytest.mark.parametrize(("q", "sigma"), [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 0.7)])
def test_marchenko_pastur_cdf_is_atom_plus_integral_of_density(q, sigma):
    lo, hi = marchenko_pastur_support(q, sigma)
    atom = marchenko_pastur_atom(q)
    dens = lambda x: float(marchenko_pastur_density(x, q, sigma))  # noqa: E731
    for frac in (0.0, 0.01, 0.2, 0.5, 0.8, 0.999, 1.0):
        x = lo + frac * (hi - lo)
        expected = atom + (integrate.quad(dens, lo, x, limit=200)[0] if x > lo else 0.0)
        assert float(marchenko_pastur_cdf(x, q, sigma)) == pytest.approx(expected, abs=1e-7)
    assert float(marchenko_pastur_cdf(-1e-9, q, sigma)) == 0.0
    assert float(marchenko_pastur_cdf(0.0, q, sigma)) == pytest.approx(atom, abs=1e-12)
    assert float(marchenko_pastur_cdf(hi + 1.0, q, sigma)) == pytest.approx(1.0, abs=1e-12)


def test_marchenko_pastur_support_and_atom_closed_forms():
    lo, hi = marchenko_pastur_support(0.5)
    assert lo == pytest.approx(1.5 - math.sqrt(2))
    assert hi == pytest.approx(1.5 + math.sqrt(2))
    lo, hi = marchenko_pastur_support(2.0, sigma=2.0)
    assert (lo, hi) == pytest.approx((4 * (1 - math.sqrt(2)) ** 2, 4 * (1 + math.sqrt(2)) ** 2))
    assert marchenko_pastur_atom(2.0) == 0.5
    assert marchenko_pastur_atom(4.0) == 0.75
    assert marchenko_pastur_atom(1.0) == 0.0
    assert marchenko_pastur_atom(0.5) == 0.0
    x = torch.tensor([0.0, lo - 1e-3, hi + 1e-3], dtype=F64)
    assert marchenko_pastur_density(x, 2.0, sigma=2.0).tolist() == [0.0, 0.0, 0.0]


@pytest.fixture(scope="module", params=[0.5, 2.0], ids=["q0.5", "q2"])
def mp_case(request):
    q = request.param
    y = marchenko_pastur(P, round(P / q), generator=_gen(5))
    return q, y, torch.linalg.eigvalsh(y).numpy()


def test_marchenko_pastur_spectrum_follows_the_law(mp_case):
    q, _, lam = mp_case
    lo, hi = marchenko_pastur_support(q)
    cdf = _mp_cdf_np(q)
    w1 = _w1_to_law(lam, cdf, -0.5, hi + 1.0)
    assert w1 / hi < 0.005, w1  # observed ~0.001 of the span
    assert lam.max() == pytest.approx(hi, abs=0.15)
    assert lam.mean() == pytest.approx(1.0, abs=0.01)  # trace / P = mean of X^2 ~ sigma^2
    bulk = lam[lam > 1e-8]
    assert bulk.min() == pytest.approx(lo, abs=0.03)
    # Kolmogorov-Smirnov on the continuous part, against the conditional law G / (1/q).
    mass = min(1.0, 1.0 / q)
    ks = stats.kstest(bulk, lambda x: (cdf(x) - marchenko_pastur_atom(q)) / mass).statistic
    assert ks < 0.015, ks  # observed ~0.004
    # Negative control: a 10 % wrong ratio is far outside the bound.
    assert _w1_to_law(lam, _mp_cdf_np(1.1 * q), -0.5, hi + 2.0) / hi > 0.005


def test_marchenko_pastur_q2_has_half_of_its_eigenvalues_at_zero(mp_case):
    q, _, lam = mp_case
    frac_zero = float(np.mean(np.abs(lam) < 1e-8))
    if q > 1:
        # rank T = P / 2: exactly P - T zero eigenvalues, the atom 1 - 1/q = 0.5.
        assert frac_zero == marchenko_pastur_atom(q) == 0.5
        assert float(marchenko_pastur_cdf(0.0, q)) == pytest.approx(0.5)
    else:
        assert frac_zero == marchenko_pastur_atom(q) == 0.0


def test_marchenko_pastur_sigma_is_the_entry_standard_deviation():
    y1 = marchenko_pastur(50, 80, generator=_gen(9))
    y2 = marchenko_pastur(50, 80, sigma=2.0, generator=_gen(9))
    torch.testing.assert_close(y2, 4.0 * y1, rtol=1e-12, atol=1e-12)


def test_marchenko_pastur_is_positive_semidefinite():
    lam = torch.linalg.eigvalsh(marchenko_pastur(80, 40, generator=_gen(10)))
    assert float(lam.min()) > -1e-10


# ----------------------------------------------------------------------------- section 6.4


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_spectrum(P, generator=_gen(6))


def test_synthetic_spectrum_has_the_paper_composition(synthetic):
    _, lam = synthetic
    assert lam.dtype == F64
    assert lam.shape == (P,)
    assert torch.equal(lam, torch.sort(lam).values)
    assert int((lam == 0).sum()) == 500  # the spike at zero
    assert int((lam < 0).sum()) == 10  # negative outliers in [-10, 0)
    assert float(lam.min()) >= -10.0
    assert int((lam > 0).sum()) == 490  # 470 bulk + 20 outliers
    assert int((lam > 15).sum()) <= 20  # only the U[0, 60] group can exceed 15
    assert int((lam > 15).sum()) >= 5  # Binomial(20, 0.75): below 5 has probability ~1e-6
    assert float(lam.max()) <= 60.0
    # Right-skewed: mean above median of the non-zero part.
    pos = lam[lam > 0]
    assert float(pos.mean()) > float(pos.median())


def test_synthetic_matrix_has_the_returned_eigenvalues(synthetic):
    h, lam = synthetic
    torch.testing.assert_close(torch.linalg.eigvalsh(h), lam, rtol=0, atol=1e-10 * 60)


def test_synthetic_matrix_is_rotated_so_its_diagonal_hides_the_spectrum(synthetic):
    h, lam = synthetic
    diag = torch.diagonal(h)
    # Haar rotation: diag_i = sum_j U_ij^2 lambda_j ~ mean(lambda) (the paper: 3.3 to 5.3).
    assert float(diag.mean()) == pytest.approx(float(lam.mean()), rel=1e-10)
    assert float(diag.min()) > 2.0
    assert float(diag.max()) < 7.0
    # The diagonal barely varies while the eigenvalues span [-10, 60].
    assert float(diag.std()) < 0.1 * float(lam.std())


def test_synthetic_spectrum_scales_its_composition_with_p():
    h, lam = synthetic_spectrum(200, generator=_gen(7))
    assert h.shape == (200, 200)
    assert int((lam == 0).sum()) == 100
    assert int((lam < 0).sum()) == 2
    assert int((lam > 0).sum()) == 98


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: wigner(0), ValueError, "P must be a positive int; got 0"),
        (lambda: wigner(2.5), TypeError, "got 2.5"),
        (lambda: wigner(True), TypeError, "got True"),
        (lambda: wigner(5, dtype=torch.int64), TypeError, "torch.int64"),
        (lambda: marchenko_pastur(5, 0), ValueError, "T must be a positive int; got 0"),
        (lambda: marchenko_pastur(-1, 5), ValueError, "got -1"),
        (lambda: marchenko_pastur(5, 5, sigma=0.0), ValueError, "sigma.*got 0.0"),
        (lambda: marchenko_pastur(5, 5, sigma=float("nan")), ValueError, "sigma.*got nan"),
        (lambda: marchenko_pastur_density(1.0, q=-0.5), ValueError, "q.*got -0.5"),
        (lambda: marchenko_pastur_cdf(1.0, q=0.0), ValueError, "q.*got 0.0"),
        (lambda: marchenko_pastur_atom(0), ValueError, "q.*got 0"),
        (lambda: marchenko_pastur_support(1.0, sigma=-2), ValueError, "sigma.*got -2"),
        (lambda: semicircle_density(0.0, radius=0.0), ValueError, "radius.*got 0.0"),
        (lambda: semicircle_cdf(0.0, radius="2"), TypeError, "radius.*'2'"),
        (lambda: synthetic_spectrum(50), ValueError, "at least 100; got 50"),
        (lambda: synthetic_spectrum(1000, dtype=torch.complex128), TypeError, "complex128"),
    ],
)
def test_bad_input_is_rejected_with_the_value_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- API


def test_public_names_have_docstrings():
    assert sorted(random_matrices.__all__) == sorted(
        [
            "wigner",
            "semicircle_density",
            "semicircle_cdf",
            "marchenko_pastur",
            "marchenko_pastur_density",
            "marchenko_pastur_cdf",
            "marchenko_pastur_atom",
            "marchenko_pastur_support",
            "synthetic_spectrum",
        ]
    )
    for name in random_matrices.__all__:
        assert getattr(random_matrices, name).__doc__

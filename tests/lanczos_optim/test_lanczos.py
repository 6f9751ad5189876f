"""lanczos() against dense float64 ground truth: exact Gauss quadrature, Theorem 1, bad input.

Every matrix is built in float64 explicitly (the global default dtype is never touched) and
compared with ``torch.linalg.eigh``/``eigvalsh``. Cases: SPD with a 1e4 condition number,
indefinite with well separated outliers, repeated eigenvalues and rank-deficient.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lanczos_optim import lanczos

F64 = torch.float64
P = 40


def _haar(p: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _rotated(eigvals: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    q = _haar(eigvals.numel(), gen)
    a = (q * eigvals) @ q.T
    return 0.5 * (a + a.T)  # exactly symmetric


# Eigenvalue factories; each case is rotated by a seeded Haar matrix.
CASES = {
    "spd": lambda: torch.logspace(-2, 2, P, dtype=F64),
    "indefinite": lambda: torch.cat(
        [torch.linspace(-1, 1, P - 4, dtype=F64), torch.tensor([-8.0, -5.0, 6.0, 12.0], dtype=F64)]
    ),
    "repeated": lambda: torch.tensor([-3.0] * 5 + [1.0] * 10 + [2.0] * 15 + [7.0] * 10, dtype=F64),
    "rank_deficient": lambda: torch.cat(
        [torch.zeros(30, dtype=F64), torch.linspace(0.5, 5.0, 10, dtype=F64)]
    ),
}
NUM_DISTINCT = {"spd": P, "indefinite": P, "repeated": 4, "rank_deficient": 11}


@dataclass
class Case:
    name: str
    matrix: torch.Tensor
    v0: torch.Tensor
    eigvals: torch.Tensor  # eigvalsh, ascending
    distinct: torch.Tensor  # distinct eigenvalues, ascending
    projections: torch.Tensor  # ||Pi_k v0||^2 / ||v0||^2 per distinct eigenvalue
    scale: float  # max |lambda|


def _ground_truth(a: torch.Tensor, v0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Distinct eigenvalues of ``a`` and v0's squared projection onto each eigenspace."""
    lam, vecs = torch.linalg.eigh(a)
    coef = (vecs.T @ v0) ** 2 / float(v0 @ v0)
    tol = 1e-8 * float(lam.abs().max())
    values, weights = [float(lam[0])], [float(coef[0])]
    for lam_i, c_i in zip(lam[1:].tolist(), coef[1:].tolist(), strict=True):
        if lam_i - values[-1] > tol:
            values.append(lam_i)
            weights.append(c_i)
        else:
            weights[-1] += c_i  # basis-independent: sum over the eigenspace
    return lam, torch.tensor(values, dtype=F64), torch.tensor(weights, dtype=F64)


def _make_case(name: str, seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    a = _rotated(CASES[name](), gen)
    v0 = torch.randn(P, generator=gen, dtype=F64)
    lam, distinct, proj = _ground_truth(a, v0)
    assert len(distinct) == NUM_DISTINCT[name]  # the factory does what it says
    return Case(name, a, v0, lam, distinct, proj, float(lam.abs().max()))


@pytest.fixture(params=sorted(CASES))
def case(request) -> Case:
    return _make_case(request.param)


def _moment(a: torch.Tensor, v0: torch.Tensor, k: int) -> float:
    """v0' A^k v0 / v0'v0 by repeated products."""
    u = v0 / torch.linalg.vector_norm(v0)
    x = u.clone()
    for _ in range(k):
        x = a @ x
    return float(u @ x)


# ----------------------------------------------------------------------------- full runs


def test_full_run_recovers_each_distinct_eigenvalue_with_its_eigenspace_weight(case):
    res = lanczos(case.matrix, P, v0=case.v0)
    n = len(case.distinct)
    # The Krylov space has as many dimensions as distinct eigenvalues in v0's support.
    assert res.num_steps == n
    assert res.ritz_values.shape == res.weights.shape == (n,)
    if n < P:
        assert res.breakdown
    torch.testing.assert_close(res.ritz_values, case.distinct, rtol=0, atol=1e-10 * case.scale)
    # Exact Gauss quadrature: weight_k = ||projection of v0 onto eigenspace k||^2 / ||v0||^2.
    torch.testing.assert_close(res.weights, case.projections, rtol=0, atol=1e-10)
    assert res.residual_norm <= 1e-8 * case.scale
    assert float(res.residuals.max()) <= 1e-8 * case.scale
    assert torch.isfinite(res.alpha).all()
    assert torch.isfinite(res.beta).all()


def test_full_run_equals_eigvalsh_on_distinct_spectra():
    for name in ("spd", "indefinite"):
        c = _make_case(name, seed=1)
        res = lanczos(c.matrix, P, v0=c.v0)
        torch.testing.assert_close(
            res.ritz_values, torch.linalg.eigvalsh(c.matrix), rtol=0, atol=1e-10 * c.scale
        )


@pytest.mark.parametrize("name", ["spd", "indefinite"])
def test_without_reorthogonalisation_the_full_run_misses_eigenvalues(name):
    """Evidence that the 1e-10 bound above catches a broken reorthogonalisation."""
    c = _make_case(name)
    good = lanczos(c.matrix, P, v0=c.v0)
    bad = lanczos(c.matrix, P, v0=c.v0, reorthogonalize=False)
    assert float((good.ritz_values - c.eigvals).abs().max()) < 1e-10 * c.scale
    # Ghost copies of the outliers take the place of interior eigenvalues.
    assert bad.num_steps == P
    assert float((bad.ritz_values - c.eigvals).abs().max()) > 1e-2 * c.scale


def test_reorthogonalisation_keeps_the_basis_orthonormal_and_prevents_ghosts():
    gen = torch.Generator().manual_seed(1)
    p = 400
    outliers = torch.tensor([5.0, 10.0, 20.0], dtype=F64)
    a = _rotated(torch.cat([torch.rand(p - 3, generator=gen, dtype=F64), outliers]), gen)
    v0 = torch.randn(p, generator=gen, dtype=F64)
    eye = torch.eye(40, dtype=F64)

    good = lanczos(a, 40, v0=v0, keep_basis=True)
    bad = lanczos(a, 40, v0=v0, keep_basis=True, reorthogonalize=False)

    assert float((good.basis @ good.basis.T - eye).abs().max()) < 1e-12
    assert float((bad.basis @ bad.basis.T - eye).abs().max()) > 0.1
    for lam in outliers.tolist():
        assert int(((good.ritz_values - lam).abs() < 1e-8).sum()) == 1
    # Without it, converged outliers come back as ghost copies.
    assert int(((bad.ritz_values - 20.0).abs() < 1e-6).sum()) >= 2
    # The converged outlier carries exactly v0's projection onto its eigenvector.
    _, vecs = torch.linalg.eigh(a)
    proj_top = float((vecs[:, -1] @ v0) ** 2 / (v0 @ v0))
    top = int(torch.argmin((good.ritz_values - 20.0).abs()))
    assert float(good.weights[top]) == pytest.approx(proj_top, rel=1e-8)


# ----------------------------------------------------------------------------- quadrature


@pytest.mark.parametrize("m", [1, 3, 8])
def test_weights_form_a_probability_vector_on_the_spectrum_hull(case, m):
    res = lanczos(case.matrix, m, v0=case.v0)
    n = min(m, len(case.distinct))
    assert res.num_steps == n
    assert res.weights.dtype == res.ritz_values.dtype == F64
    assert float(res.weights.min()) >= 0.0
    assert float(res.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.all(res.ritz_values[1:] >= res.ritz_values[:-1])
    tol = 1e-10 * case.scale
    assert float(res.ritz_values.min()) >= float(case.eigvals[0]) - tol
    assert float(res.ritz_values.max()) <= float(case.eigvals[-1]) + tol


@pytest.mark.parametrize("size", ["small", "large"])
def test_quadrature_reproduces_moments_up_to_degree_2m_minus_1(case, size):
    n = len(case.distinct)
    m = 2 if size == "small" else min(7, n - 1)
    res = lanczos(case.matrix, m, v0=case.v0)
    assert res.num_steps == m
    for k in range(2 * m):
        quad = float((res.weights * res.ritz_values**k).sum())
        exact = _moment(case.matrix, case.v0, k)
        assert quad == pytest.approx(exact, abs=1e-10 * case.scale**k), k
    # Degree 2m is not integrated exactly: the Gauss remainder is ||pi_m(A) v0||^2 / ||v0||^2
    # = (beta_1 ... beta_m)^2 > 0, so the degree 2m - 1 above is sharp.
    exact = _moment(case.matrix, case.v0, 2 * m)
    gap = exact - float((res.weights * res.ritz_values ** (2 * m)).sum())
    remainder = float(torch.prod(res.beta**2)) * res.residual_norm**2
    assert remainder > 1e-10 * exact  # well above rounding of the moments
    assert gap == pytest.approx(remainder, rel=1e-5)


@pytest.mark.parametrize(("sign", "mu"), [(-1.0, 0.0), (-1.0, 3.5), (-1.0, -10.0), (1.0, 7.0)])
def test_theorem_1_negating_and_shifting_maps_ritz_values_and_keeps_weights(case, sign, mu):
    """Paper, Theorem 1: H -> -H + mu I maps theta -> -theta + mu; nothing new is learned."""
    m = min(6, len(case.distinct))
    eye = torch.eye(P, dtype=F64)
    res = lanczos(case.matrix, m, v0=case.v0)
    shifted = lanczos(sign * case.matrix + mu * eye, m, v0=case.v0)
    tol = 1e-10 * (case.scale + abs(mu))
    assert shifted.num_steps == res.num_steps == m

    def order(x: torch.Tensor) -> torch.Tensor:
        return x.flip(0) if sign < 0 else x

    torch.testing.assert_close(
        shifted.ritz_values, order(sign * res.ritz_values + mu), rtol=0, atol=tol
    )
    torch.testing.assert_close(shifted.weights, order(res.weights), rtol=0, atol=1e-10)
    torch.testing.assert_close(shifted.alpha, sign * res.alpha + mu, rtol=0, atol=tol)
    torch.testing.assert_close(shifted.beta, res.beta, rtol=0, atol=tol)


# ----------------------------------------------------------------------------- Ritz pairs


@pytest.mark.parametrize("name", ["spd", "indefinite", "rank_deficient"])
def test_ritz_vectors_basis_and_residual_bounds(name):
    c = _make_case(name)
    m = 10
    res = lanczos(c.matrix, m, v0=c.v0, compute_vectors=True, keep_basis=True)
    u, v = res.ritz_vectors, res.basis
    assert u.shape == (P, m)
    assert v.shape == (m, P)
    assert u.dtype == v.dtype == F64
    eye = torch.eye(m, dtype=F64)
    torch.testing.assert_close(v @ v.T, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(v @ c.matrix @ v.T, res.tridiagonal(), rtol=0, atol=1e-10 * c.scale)
    torch.testing.assert_close(v[0], c.v0 / torch.linalg.vector_norm(c.v0), rtol=0, atol=1e-14)
    torch.testing.assert_close(u.T @ u, eye, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        u.T @ c.matrix @ u, torch.diag(res.ritz_values), rtol=0, atol=1e-10 * c.scale
    )
    # With full reorthogonalisation the bound |beta_m s_mi| is the true residual norm ...
    true_res = torch.linalg.vector_norm(c.matrix @ u - u * res.ritz_values, dim=0)
    torch.testing.assert_close(res.residuals, true_res, rtol=0, atol=1e-9 * c.scale)
    # ... and each Ritz value lies within its residual of an eigenvalue.
    dist = (res.ritz_values[:, None] - c.eigvals[None, :]).abs().min(dim=1).values
    assert torch.all(dist <= res.residuals + 1e-10 * c.scale)


def test_one_step_gives_the_rayleigh_quotient():
    c = _make_case("indefinite")
    res = lanczos(c.matrix, 1, v0=c.v0)
    u = c.v0 / torch.linalg.vector_norm(c.v0)
    theta = float(u @ c.matrix @ u)
    assert res.num_steps == 1
    assert res.beta.shape == (0,)
    assert float(res.ritz_values[0]) == pytest.approx(theta, abs=1e-12 * c.scale)
    assert res.weights.tolist() == pytest.approx([1.0], abs=1e-15)
    residual = float(torch.linalg.vector_norm(c.matrix @ u - theta * u))
    assert res.residual_norm == pytest.approx(residual, rel=1e-10)


def test_start_on_an_eigenvector_breaks_down_after_one_step():
    c = _make_case("indefinite")
    lam, vecs = torch.linalg.eigh(c.matrix)
    res = lanczos(c.matrix, 10, v0=3.0 * vecs[:, -2], compute_vectors=True)
    assert res.breakdown
    assert res.num_steps == 1
    assert float(res.ritz_values[0]) == pytest.approx(float(lam[-2]), abs=1e-12 * c.scale)
    assert res.weights.tolist() == pytest.approx([1.0])
    assert torch.isfinite(res.ritz_vectors).all()
    assert abs(float(res.ritz_vectors[:, 0] @ vecs[:, -2])) == pytest.approx(1.0, abs=1e-12)


def test_a_tiny_component_is_not_mistaken_for_breakdown():
    """beta ~ 1e-7 ||A|| is a real direction: the breakdown threshold is eps^(2/3) ||T||."""
    a = _rotated(torch.arange(1.0, P + 1.0, dtype=F64), torch.Generator().manual_seed(4))
    lam, vecs = torch.linalg.eigh(a)
    eps = 1e-7
    v0 = vecs[:, 3] + eps * vecs[:, 10]
    res = lanczos(a, P, v0=v0)
    assert torch.isfinite(res.ritz_values).all()
    i = int(torch.argmin((res.ritz_values - lam[10]).abs()))
    assert float(res.ritz_values[i]) == pytest.approx(float(lam[10]), abs=1e-8)
    assert float(res.weights[i]) == pytest.approx(eps**2 / (1 + eps**2), rel=1e-6)
    j = int(torch.argmin((res.ritz_values - lam[3]).abs()))
    assert float(res.weights[j]) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- early stop


@pytest.fixture(scope="module")
def outlier_operator() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    p = 300
    eigs = torch.cat(
        [2.0 * torch.rand(p - 2, generator=gen, dtype=F64), torch.tensor([-4.0, 10.0], dtype=F64)]
    )
    a = _rotated(eigs, gen)
    v0 = torch.randn(p, generator=gen, dtype=F64)
    return a, torch.linalg.eigvalsh(a), v0


@pytest.mark.parametrize("stop_on", ["largest", "smallest", "extremes"])
@pytest.mark.parametrize("tol", [1e-4, 1e-10])
def test_tol_stops_early_at_the_requested_accuracy(outlier_operator, stop_on, tol):
    a, lam, v0 = outlier_operator
    full = lanczos(a, 60, v0=v0)
    res = lanczos(a, 60, v0=v0, tol=tol, stop_on=stop_on)
    assert full.num_steps == 60
    assert res.num_steps < 30
    assert not res.breakdown
    scale = float(res.ritz_values.abs().max())
    ends = {"largest": [-1], "smallest": [0], "extremes": [0, -1]}[stop_on]
    for i in ends:
        assert float(res.residuals[i]) <= tol * scale
        assert abs(float(res.ritz_values[i] - lam[i])) <= tol * float(lam.abs().max())
    # It stops at the first step that meets the tolerance: one step fewer did not.
    shorter = lanczos(a, res.num_steps - 1, v0=v0)
    short_scale = float(shorter.ritz_values.abs().max())
    assert any(float(shorter.residuals[i]) > tol * short_scale for i in ends)
    # The early-stopped run is the prefix of the full one.
    torch.testing.assert_close(res.alpha, full.alpha[: res.num_steps], rtol=0, atol=1e-12)


def test_tol_all_past_the_first_buffer_of_the_stopping_test():
    """``stop_on="all"``, 80 spread eigenvalues and a tight cluster: past the 64-step buffer."""
    gen = torch.Generator().manual_seed(11)
    spread = torch.linspace(1.0, 3.0, 80, dtype=F64) ** 3
    lam = torch.cat([spread, 1e-9 * torch.rand(220, generator=gen, dtype=F64)])
    a, v0 = _rotated(lam, gen), torch.randn(300, generator=gen, dtype=F64)
    res = lanczos(a, 300, v0=v0, tol=1e-6, stop_on="all")
    assert 64 < res.num_steps < 100
    scale = float(res.ritz_values.abs().max())
    assert float(res.residuals.max()) <= 1e-6 * scale
    shorter = lanczos(a, res.num_steps - 1, v0=v0)
    assert float(shorter.residuals.max()) > 1e-6 * float(shorter.ritz_values.abs().max())


def test_looser_tol_takes_fewer_steps(outlier_operator):
    a, _, v0 = outlier_operator
    steps = [lanczos(a, 60, v0=v0, tol=t, stop_on="largest").num_steps for t in (1e-3, 1e-7, 1e-11)]
    assert steps[0] < steps[1] < steps[2] < 60


# ----------------------------------------------------------------------------- operator kinds


class _CountingOperator:
    """An operator object with shape, dtype and matvec that counts its products."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a
        self.shape = tuple(a.shape)
        self.dtype = a.dtype
        self.device = a.device
        self.calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.a @ v


class _MatmulOnly:
    def __init__(self, a: torch.Tensor) -> None:
        self.a = a
        self.shape = tuple(a.shape)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.a @ v


def _assert_same_run(res, ref, scale: float) -> None:
    assert res.num_steps == ref.num_steps
    torch.testing.assert_close(res.alpha, ref.alpha, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(res.beta, ref.beta, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(res.weights, ref.weights, rtol=0, atol=1e-12)


def test_callable_operator_with_dim_matches_the_dense_run():
    c = _make_case("indefinite")
    ref = lanczos(c.matrix, 12, v0=c.v0)
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(v.dtype)
        return c.matrix @ v

    res = lanczos(matvec, 12, v0=c.v0, dim=P)
    _assert_same_run(res, ref, c.scale)
    assert calls == [F64] * 12  # one product per step, in v0's dtype


def test_callable_operator_uses_the_explicit_dtype_for_its_random_start():
    c = _make_case("spd")
    runs = [
        lanczos(
            lambda v: c.matrix @ v,
            8,
            dim=P,
            dtype=F64,
            generator=torch.Generator().manual_seed(s),
            keep_basis=True,
        )
        for s in (5, 5, 6)
    ]
    assert runs[0].basis.dtype == F64
    torch.testing.assert_close(runs[0].alpha, runs[1].alpha, rtol=0, atol=0)
    assert float((runs[0].alpha - runs[2].alpha).abs().max()) > 1e-6


def test_object_operators_match_the_dense_run():
    c = _make_case("rank_deficient")
    ref = lanczos(c.matrix, 8, v0=c.v0)
    counting = _CountingOperator(c.matrix)
    _assert_same_run(lanczos(counting, 8, v0=c.v0), ref, c.scale)
    assert counting.calls == 8
    _assert_same_run(lanczos(_MatmulOnly(c.matrix), 8, v0=c.v0), ref, c.scale)


def test_default_start_vector_follows_the_generator():
    c = _make_case("spd")
    a = lanczos(c.matrix, 6, generator=torch.Generator().manual_seed(0))
    b = lanczos(c.matrix, 6, generator=torch.Generator().manual_seed(0))
    d = lanczos(c.matrix, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.ritz_values, b.ritz_values)
    assert torch.equal(a.weights, b.weights)
    assert float((a.weights - d.weights).abs().max()) > 1e-6


def test_float32_operator_keeps_its_dtype_and_float64_tridiagonal():
    c = _make_case("indefinite")
    res = lanczos(c.matrix.to(torch.float32), 10, v0=c.v0.to(torch.float32), compute_vectors=True)
    ref = lanczos(c.matrix, 10, v0=c.v0)
    assert res.ritz_vectors.dtype == torch.float32
    assert res.alpha.dtype == res.ritz_values.dtype == res.weights.dtype == F64
    torch.testing.assert_close(res.ritz_values, ref.ritz_values, rtol=0, atol=1e-4 * c.scale)


# ----------------------------------------------------------------------------- bad input


def _spd(p: int = 4) -> torch.Tensor:
    return torch.diag(torch.arange(1.0, p + 1.0, dtype=F64))


def _nonsym() -> torch.Tensor:
    a = _spd()
    a[0, 1] = 1.0
    return a


class _NonSquare:
    shape = (3, 4)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return v


def _ones(p: int = 4) -> torch.Tensor:
    return torch.ones(p, dtype=F64)


BAD_INPUT = {
    "non-square": (lambda: lanczos(torch.ones(3, 4, dtype=F64), 2), ValueError, r"\(3, 4\)"),
    "one-dimensional": (lambda: lanczos(_ones(), 2), ValueError, r"square.*\(4,\)"),
    "non-symmetric": (lambda: lanczos(_nonsym(), 2), ValueError, "symmetric.*1.000e\\+00"),
    "integer matrix": (
        lambda: lanczos(torch.eye(3, dtype=torch.int64), 2),
        TypeError,
        "torch.int64",
    ),
    "non-square object": (lambda: lanczos(_NonSquare(), 2), ValueError, r"\(3, 4\)"),
    "not an operator": (lambda: lanczos(5, 2), TypeError, "got int"),
    "zero steps": (lambda: lanczos(_spd(), 0), ValueError, r"Invalid num_steps value: 0 \(must"),
    "negative steps": (lambda: lanczos(_spd(), -3), ValueError, "num_steps value: -3"),
    "float steps": (lambda: lanczos(_spd(), 2.0), ValueError, "num_steps value: 2.0"),
    "bool steps": (lambda: lanczos(_spd(), True), ValueError, "num_steps value: True"),
    "v0 wrong shape": (lambda: lanczos(_spd(), 2, v0=_ones(5)), ValueError, r"\(4,\).*\(5,\)"),
    "v0 matrix": (
        lambda: lanczos(_spd(), 2, v0=torch.ones(4, 1, dtype=F64)),
        ValueError,
        r"\(4, 1\)",
    ),
    "v0 zero": (lambda: lanczos(_spd(), 2, v0=0 * _ones()), ValueError, "norm 0.0"),
    "v0 nan": (
        lambda: lanczos(_spd(), 2, v0=torch.full((4,), float("nan"), dtype=F64)),
        ValueError,
        "norm nan",
    ),
    "v0 list": (lambda: lanczos(_spd(), 2, v0=[1.0, 0, 0, 0]), TypeError, "got list"),
    "callable without dim": (
        lambda: lanczos(lambda v: v, 2, v0=_ones()),
        ValueError,
        "dim=.*got dim=None",
    ),
    "callable with zero dim": (lambda: lanczos(lambda v: v, 2, dim=0), ValueError, "got dim=0"),
    "zero tol": (lambda: lanczos(_spd(), 2, tol=0.0), ValueError, "tol.*got 0.0"),
    "negative tol": (lambda: lanczos(_spd(), 2, tol=-1e-3), ValueError, "tol.*got -0.001"),
    "nan tol": (lambda: lanczos(_spd(), 2, tol=float("nan")), ValueError, "tol.*got nan"),
    "bad stop_on": (
        lambda: lanczos(_spd(), 2, tol=1e-6, stop_on="middle"),
        ValueError,
        "stop_on.*'largest'.*got 'middle'",
    ),
    "operator returns wrong shape": (
        lambda: lanczos(lambda v: v[:-1], 2, dim=4, dtype=F64),
        ValueError,
        r"returned shape \(3,\).*\(4,\)",
    ),
    "operator returns nan": (
        lambda: lanczos(lambda v: v * float("nan"), 2, dim=4, dtype=F64),
        FloatingPointError,
        "non-finite",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_raises_and_names_the_value(name):
    call, exc, match = BAD_INPUT[name]
    with pytest.raises(exc, match=match):
        call()


def test_steps_above_the_dimension_are_capped_which_is_exact():
    """m > P runs P steps (the Krylov space is the whole space): the exact spectrum."""
    a = _spd()
    res = lanczos(a, 5, v0=_ones())
    assert res.num_steps == 4
    torch.testing.assert_close(res.ritz_values, torch.linalg.eigvalsh(a), rtol=0, atol=1e-12)
    same = lanczos(a, 4, v0=_ones())
    assert torch.equal(res.alpha, same.alpha)
    assert torch.equal(res.beta, same.beta)


class _Asymmetric:
    """A non-symmetric operator object (a dense tensor would be refused up front)."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a @ v


def test_non_symmetric_operator_object_or_callable_warns() -> None:
    import warnings

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    sym = a + a.T
    for op, kw in ((_Asymmetric(a), {}), (lambda v: a @ v, {"dim": 8, "dtype": torch.float64})):
        with pytest.warns(RuntimeWarning, match="not symmetric"):
            lanczos(op, 4, generator=torch.Generator().manual_seed(1), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a symmetric operator never warns
        lanczos(_Asymmetric(sym), 8, generator=torch.Generator().manual_seed(1))
        lanczos(_Asymmetric(sym.float()), 8, generator=torch.Generator().manual_seed(1))

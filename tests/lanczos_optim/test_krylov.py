"""krylov_solve against dense float64 closed forms, plus its error table."""

from __future__ import annotations

import math

import pytest
import torch

from lanczos_optim import HessianOperator, krylov_solve
from lanczos_optim.krylov import KrylovSolveInfo, _spectral_factors

F64 = torch.float64


def _sym(p: int, seed: int, eigs: list[float] | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=F64))
    if eigs is None:
        eigs = torch.linspace(-3.0, 5.0, p, dtype=F64).tolist()
    return q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ q.T


def _vec(p: int, seed: int) -> torch.Tensor:
    return torch.randn(p, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _dense_solve(c: torch.Tensor, v: torch.Tensor, delta: float, transform: str) -> torch.Tensor:
    lam, vecs = torch.linalg.eigh(c)
    if transform == "abs":
        f = 1.0 / (lam.abs() + delta)
    else:
        f = 1.0 / (torch.where(lam <= -delta, torch.zeros_like(lam), lam) + delta)
    return vecs @ (f * (vecs.T @ v))


# Explicit cases: (eigenvalues, damping, transform, expected number of clipped values).
FULL_CASES = {
    "newton-indefinite-unclipped": ([-0.4, -0.1, 0.5, 1.0, 2.0, 7.0], 0.5, "newton", 0),
    "newton-clipped": ([-3.0, -1.0, -0.2, 0.5, 2.0, 7.0], 0.5, "newton", 2),
    "newton-clip-just-below": ([-0.51, 0.1, 0.5, 1.0, 2.0, 7.0], 0.5, "newton", 1),
    "abs-indefinite": ([-3.0, -1.0, -0.2, 0.5, 2.0, 7.0], 0.5, "abs", 0),
    "abs-psd": ([0.0, 0.1, 0.5, 1.0, 2.0, 7.0], 1e-3, "abs", 0),
}


@pytest.mark.parametrize("case", FULL_CASES, ids=list(FULL_CASES))
def test_full_krylov_space_matches_dense_eigendecomposition(case: str) -> None:
    eigs, delta, transform, clipped = FULL_CASES[case]
    c = _sym(len(eigs), 0, eigs)
    v = _vec(len(eigs), 1)
    d, info = krylov_solve(c, v, len(eigs), delta, transform, return_info=True)
    torch.testing.assert_close(d, _dense_solve(c, v, delta, transform), rtol=1e-10, atol=1e-10)
    assert info.num_clipped == clipped
    assert info.num_products == len(eigs)
    torch.testing.assert_close(info.ritz_values, torch.tensor(eigs, dtype=F64), atol=1e-10, rtol=0)
    assert info.krylov_fraction == pytest.approx(1.0, abs=1e-12)
    # The quadratic model's decrease v'd - d'Cd/2, computed densely.
    expected = float(v @ d - 0.5 * d @ c @ d)
    assert info.predicted_decrease() == pytest.approx(expected, rel=1e-9)
    expected_lr = float(0.3 * v @ d - 0.5 * 0.09 * d @ c @ d)
    assert info.predicted_decrease(0.3) == pytest.approx(expected_lr, rel=1e-9)


def test_clipping_rule_at_exactly_minus_damping() -> None:
    theta = torch.tensor([-2.0, -0.5, -0.25, 0.0, 3.0], dtype=F64)
    f, clipped = _spectral_factors(theta, 0.5, "newton")
    torch.testing.assert_close(f, torch.tensor([2.0, 2.0, 4.0, 2.0, 1 / 3.5], dtype=F64))
    assert clipped == 2
    f_abs, clipped_abs = _spectral_factors(theta, 0.5, "abs")
    torch.testing.assert_close(f_abs, 1 / (theta.abs() + 0.5))
    assert clipped_abs == 0


def test_newton_full_space_equals_damped_solve() -> None:
    c = _sym(8, 3, [-0.3, -0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 9.0])
    v = _vec(8, 4)
    d = krylov_solve(c, v, 8, 0.4, "newton")
    expected = torch.linalg.solve(c + 0.4 * torch.eye(8, dtype=F64), v)
    torch.testing.assert_close(d, expected, rtol=1e-10, atol=1e-10)


def test_partial_krylov_space_is_the_galerkin_solution() -> None:
    # From v, m < P steps give d in K_m(C, v) with Q'(C + delta I) d = Q'v (conjugate gradients).
    p, m, delta = 12, 4, 0.3
    c = _sym(p, 5, torch.linspace(0.1, 10.0, p).tolist())
    v = _vec(p, 6)
    krylov = torch.stack([torch.linalg.matrix_power(c, k) @ v for k in range(m)], dim=1)
    q, _ = torch.linalg.qr(krylov)
    small = q.T @ (c + delta * torch.eye(p, dtype=F64)) @ q
    expected = q @ torch.linalg.solve(small, q.T @ v)
    d, info = krylov_solve(c, v, m, delta, "newton", return_info=True)
    torch.testing.assert_close(d, expected, rtol=1e-8, atol=1e-10)
    assert info.num_products == m
    assert not info.breakdown


def test_random_start_adds_the_damped_complement() -> None:
    p, m, delta = 10, 3, 0.7
    c = _sym(p, 7)
    v = _vec(p, 8)
    gen = torch.Generator().manual_seed(11)
    d, info = krylov_solve(c, v, m, delta, "abs", v0="random", generator=gen, return_info=True)
    u = info.ritz_vectors
    assert u.shape == (p, m)
    torch.testing.assert_close(u.T @ u, torch.eye(m, dtype=F64), atol=1e-12, rtol=0)
    # U really holds Ritz vectors: U'CU = diag(theta).
    torch.testing.assert_close(u.T @ c @ u, torch.diag(info.ritz_values), atol=1e-10, rtol=0)
    coeffs = u.T @ v
    expected = u @ (coeffs / (info.ritz_values.abs() + delta)) + (v - u @ coeffs) / delta
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)
    assert 0.0 < info.krylov_fraction < 1.0
    assert info.krylov_fraction == pytest.approx(float(coeffs @ coeffs / (v @ v)), rel=1e-12)
    # Same seed, same draw, same result; apply() reuses the basis for another vector.
    again = krylov_solve(
        c, v, m, delta, "abs", v0="random", generator=torch.Generator().manual_seed(11)
    )
    assert torch.equal(d, again)
    w = _vec(p, 9)
    cw = u.T @ w
    expected_w = u @ (cw / (info.ritz_values.abs() + delta)) + (w - u @ cw) / delta
    torch.testing.assert_close(info.apply(w), expected_w, rtol=1e-12, atol=1e-12)


def test_explicit_start_vector() -> None:
    c = _sym(6, 12)
    v = _vec(6, 13)
    d = krylov_solve(c, v, 6, 0.5, "abs", v0=_vec(6, 14))
    torch.testing.assert_close(d, _dense_solve(c, v, 0.5, "abs"), rtol=1e-9, atol=1e-9)


def test_operator_kinds_agree() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.double()
    x, y = torch.randn(16, 3, dtype=F64), torch.randn(16, 1, dtype=F64)
    op = HessianOperator(model, torch.nn.MSELoss(), (x, y))
    dense = op @ torch.eye(op.shape[0], dtype=F64)
    dense = 0.5 * (dense + dense.T)
    v = _vec(op.shape[0], 15)
    d_op = krylov_solve(op, v, 5, 0.2, "abs")
    d_dense = krylov_solve(dense, v, 5, 0.2, "abs")
    d_call = krylov_solve(lambda w: dense @ w, v, 5, 0.2, "abs")
    torch.testing.assert_close(d_op, d_dense, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(d_call, d_dense, rtol=1e-12, atol=1e-12)


def test_invariant_subspace_breakdown_is_exact() -> None:
    # v lies in a 2-dimensional eigenspace: Lanczos stops after 2 steps and d is exact.
    c = torch.diag(torch.tensor([1.0, 1.0, 3.0, 3.0, 5.0], dtype=F64))
    v = torch.tensor([1.0, 2.0, 0.0, -1.0, 0.0], dtype=F64)
    d, info = krylov_solve(c, v, 5, 0.5, "newton", return_info=True)
    assert info.breakdown
    assert info.num_products == 2
    torch.testing.assert_close(d, v / (torch.diagonal(c) + 0.5), rtol=1e-12, atol=1e-12)


def test_steps_capped_at_dimension_and_zero_vector() -> None:
    c = _sym(4, 16)
    v = _vec(4, 17)
    d, info = krylov_solve(c, v, 50, 0.5, "abs", return_info=True)
    assert info.num_products == 4
    torch.testing.assert_close(d, _dense_solve(c, v, 0.5, "abs"), rtol=1e-10, atol=1e-10)
    z, zinfo = krylov_solve(c, torch.zeros(4, dtype=F64), 3, 0.5, return_info=True)
    assert torch.equal(z, torch.zeros(4, dtype=F64))
    assert zinfo.num_products == 0
    assert isinstance(zinfo, KrylovSolveInfo)


def test_float32_preserved() -> None:
    c = _sym(6, 18).float()
    v = _vec(6, 19).float()
    d, info = krylov_solve(c, v, 6, 0.5, "abs", return_info=True)
    assert d.dtype == torch.float32
    assert info.ritz_vectors.dtype == torch.float32
    assert info.ritz_values.dtype == F64
    torch.testing.assert_close(
        d.double(), _dense_solve(c.double(), v.double(), 0.5, "abs"), rtol=1e-4, atol=1e-5
    )


def test_non_finite_operator_raises_floating_point_error() -> None:
    def bad(w: torch.Tensor) -> torch.Tensor:
        return w * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite"):
        krylov_solve(bad, _vec(5, 0), 3, 1.0)


_C = torch.eye(4, dtype=F64)
_V = torch.ones(4, dtype=F64)

ERROR_CASES = {
    "v-not-tensor": (dict(v=[1.0, 2.0, 3.0, 4.0]), TypeError, "v must be a tensor"),
    "v-2d": (dict(v=torch.ones(4, 1, dtype=F64)), ValueError, "1-D floating-point"),
    "v-int": (dict(v=torch.ones(4, dtype=torch.int64)), ValueError, "1-D floating-point"),
    "v-wrong-size": (dict(v=torch.ones(3, dtype=F64)), ValueError, r"shape \(4,\)"),
    "v-wrong-dtype": (dict(v=torch.ones(4)), ValueError, "dtype"),
    "v-nan": (dict(v=torch.tensor([1.0, math.nan, 0.0, 0.0], dtype=F64)), ValueError, "non-finite"),
    "steps-float": (dict(lanczos_steps=2.0), ValueError, "Invalid lanczos_steps value: 2.0"),
    "steps-bool": (dict(lanczos_steps=True), ValueError, "Invalid lanczos_steps value: True"),
    "steps-zero": (dict(lanczos_steps=0), ValueError, "Invalid lanczos_steps value: 0"),
    "damping-zero": (dict(damping=0.0), ValueError, "Invalid damping value: 0.0"),
    "damping-negative": (dict(damping=-1.0), ValueError, "Invalid damping value: -1.0"),
    "damping-nan": (dict(damping=math.nan), ValueError, "Invalid damping value: nan"),
    "damping-inf": (dict(damping=math.inf), ValueError, "Invalid damping value: inf"),
    "transform": (dict(transform="cubic"), ValueError, "Invalid transform: 'cubic'"),
    "v0-string": (dict(v0="gaussian"), ValueError, "v0 must be None, 'random' or a tensor"),
    "operator-non-symmetric": (
        dict(operator=torch.triu(torch.ones(4, 4, dtype=F64))),
        ValueError,
        "symmetric",
    ),
    "operator-kind": (dict(operator="C"), TypeError, "operator must be"),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_error_table(case: str) -> None:
    override, exc, pattern = ERROR_CASES[case]
    kwargs = dict(operator=_C, v=_V, lanczos_steps=2, damping=1.0, transform="newton")
    kwargs.update(override)
    with pytest.raises(exc, match=pattern):
        krylov_solve(**kwargs)

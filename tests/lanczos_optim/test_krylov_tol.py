"""krylov_solve(tol=...): early stopping on the damped solve's residual, against dense float64."""

from __future__ import annotations

import math

import pytest
import torch

from lanczos_optim import krylov_solve

F64 = torch.float64


def _sym(eigs: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=F64))
    return q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ q.T


def _vec(p: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(p, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _true_residual(c: torch.Tensor, d: torch.Tensor, v: torch.Tensor, delta: float) -> float:
    eye = torch.eye(len(v), dtype=F64)
    return float(torch.linalg.vector_norm((c + delta * eye) @ d - v) / torch.linalg.vector_norm(v))


@pytest.mark.parametrize(
    ("eigs", "delta"),
    [
        (torch.linspace(0.01, 10.0, 40).tolist(), 0.5),  # SPD, many distinct eigenvalues
        (torch.linspace(-0.4, 6.0, 40).tolist(), 0.5),  # indefinite, nothing clipped
    ],
)
def test_residual_estimate_equals_dense_residual_for_newton(
    eigs: list[float], delta: float
) -> None:
    c, v = _sym(eigs), _vec(len(eigs))
    for k in range(1, 16):
        d, info = krylov_solve(c, v, k, delta, return_info=True)
        assert info.num_clipped == 0
        assert info.relative_residual == pytest.approx(_true_residual(c, d, v, delta), abs=1e-8)


def test_stops_exactly_when_the_residual_first_drops_below_tol() -> None:
    # An SPD quadratic with four distinct eigenvalues: Lanczos from v is exact after 4 steps.
    eigs = [0.5] * 5 + [2.0] * 5 + [7.0] * 5 + [30.0] * 5
    c, v, delta = _sym(eigs), _vec(20), 0.1
    fixed = [krylov_solve(c, v, k, delta, return_info=True) for k in range(1, 5)]
    res = [_true_residual(c, d, v, delta) for d, _ in fixed]
    assert res == sorted(res, reverse=True)
    assert res[-1] < 1e-10
    for k in range(1, 4):  # tol between the residuals after k and k - 1 steps: stop at k
        above = res[k - 2] if k > 1 else 2.0 * res[0]
        tol = math.sqrt(res[k - 1] * above)
        d, info = krylov_solve(c, v, 20, delta, return_info=True, tol=tol)
        assert info.num_products == k
        assert info.relative_residual <= tol < above
        torch.testing.assert_close(d, fixed[k - 1][0], rtol=0, atol=1e-13)
        assert info.relative_residual == pytest.approx(fixed[k - 1][1].relative_residual)
    # The exact solve: closed form (C + delta I)^{-1} v.
    d, info = krylov_solve(c, v, 20, delta, return_info=True, tol=1e-8)
    assert info.num_products == 4
    expected = torch.linalg.solve(c + delta * torch.eye(20, dtype=F64), v)
    torch.testing.assert_close(d, expected, rtol=1e-10, atol=1e-10)


def test_tol_none_and_an_unreached_tol_are_bit_identical() -> None:
    c, v = _sym(torch.linspace(-2.0, 5.0, 30).tolist()), _vec(30)
    for transform in ("newton", "abs"):
        d0, i0 = krylov_solve(c, v, 12, 0.3, transform, return_info=True)
        d1, i1 = krylov_solve(c, v, 12, 0.3, transform, return_info=True, tol=1e-300)
        assert torch.equal(d0, d1)
        assert torch.equal(i0.ritz_values, i1.ritz_values)
        assert i0.num_products == i1.num_products == 12
        assert i0.relative_residual == i1.relative_residual


def test_abs_transform_stops_on_the_weighted_ritz_bounds() -> None:
    # Three tight clusters of eigenvalues, one of them negative.
    eigs = [-2 + 0.01 * i for i in range(10)] + [1 + 0.01 * i for i in range(10)]
    c, v, delta, tol = _sym(eigs + [5 + 0.01 * i for i in range(20)]), _vec(40), 0.5, 0.1
    _, full = krylov_solve(c, v, 40, delta, "abs", return_info=True)
    assert full.relative_residual < 1e-8  # the Krylov space is the whole space
    _, info = krylov_solve(c, v, 40, delta, "abs", return_info=True, tol=tol)
    assert 1 <= info.num_products < 40
    assert info.relative_residual <= tol
    # The bound sum_i f_i |s_1i| r_i, recomputed from the reported Ritz data.
    f = 1.0 / (info.ritz_values.abs() + delta)
    bound = float((f * info.weights.sqrt() * info.residuals).sum())
    assert info.relative_residual == pytest.approx(bound, rel=1e-12)
    # One step fewer had not reached it.
    _, before = krylov_solve(c, v, info.num_products - 1, delta, "abs", return_info=True)
    assert before.relative_residual > tol


def test_block_lanczos_residual_is_a_bound_of_the_dense_residual() -> None:
    c, v, delta = _sym(torch.linspace(0.01, 10.0, 30).tolist()), _vec(30), 0.5
    gen = torch.Generator().manual_seed(3)
    d, info = krylov_solve(c, v, 8, delta, return_info=True, block_size=2, generator=gen)
    assert info.relative_residual >= _true_residual(c, d, v, delta) - 1e-12


def test_random_start_has_no_residual() -> None:
    c, v = _sym(torch.linspace(0.01, 10.0, 10).tolist()), _vec(10)
    gen = torch.Generator().manual_seed(0)
    _, info = krylov_solve(c, v, 4, 0.5, v0="random", generator=gen, return_info=True)
    assert math.isnan(info.relative_residual)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tol": 0.0}, r"Invalid tol value: 0\.0"),
        ({"tol": -1e-3}, r"Invalid tol value: -0\.001"),
        ({"tol": math.nan}, r"Invalid tol value: nan"),
        ({"tol": math.inf}, r"Invalid tol value: inf"),
        ({"tol": "1e-2"}, r"Invalid tol value: '1e-2'"),
        ({"tol": True}, r"Invalid tol value: True"),
        ({"tol": 1e-2, "v0": "random"}, r"tol needs the Krylov space started from v"),
        ({"tol": 1e-2, "block_size": 2}, r"block_size=2"),
    ],
)
def test_bad_tol_is_refused(kwargs: dict[str, object], match: str) -> None:
    c, v = _sym([1.0, 2.0, 3.0]), _vec(3)
    with pytest.raises(ValueError, match=match):
        krylov_solve(c, v, 3, 0.5, **kwargs)  # type: ignore[arg-type]

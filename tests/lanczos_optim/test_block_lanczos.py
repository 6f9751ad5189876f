"""Block Lanczos (``block_size > 1``): exact on the whole space, honest residual bounds."""

from __future__ import annotations

import pytest
import torch

from lanczos_optim import krylov_solve
from lanczos_optim._block_lanczos import block_lanczos

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(p: int) -> torch.Tensor:
    a = torch.randn(p, p, generator=_gen(1), dtype=F64)
    return a @ a.T / p + 0.1 * torch.eye(p, dtype=F64)


def _indefinite(p: int) -> torch.Tensor:
    a = torch.randn(p, p, generator=_gen(2), dtype=F64)
    return a + a.T


def _low_rank(p: int) -> torch.Tensor:
    a = torch.randn(p, 3, generator=_gen(3), dtype=F64)
    return a @ a.T


MATRICES = {"spd": _spd, "indefinite": _indefinite}


@pytest.fixture(params=sorted(MATRICES))
def matrix(request: pytest.FixtureRequest) -> torch.Tensor:
    return MATRICES[request.param](13)


@pytest.fixture(params=[2, 3, 5])
def block(request: pytest.FixtureRequest) -> int:
    return request.param


def test_whole_space_gives_the_exact_spectrum_and_weights(matrix, block):
    p = matrix.shape[0]
    start = torch.randn(p, block, generator=_gen(4), dtype=F64)
    calls: list[int] = []

    def matmat(m: torch.Tensor) -> torch.Tensor:
        calls.append(m.shape[1])
        return matrix @ m

    res = block_lanczos(matmat, start, p)
    lam, vec = torch.linalg.eigh(matrix)
    torch.testing.assert_close(res.ritz_values, lam, rtol=0, atol=1e-10)
    first = start[:, 0] / start[:, 0].norm()
    torch.testing.assert_close(res.weights, (vec.T @ first) ** 2, rtol=0, atol=1e-10)
    assert sum(calls) == res.num_products == p
    assert max(calls) == block  # whole blocks, the last one cut to the budget
    assert not res.breakdown
    assert res.ritz_values.device.type == "cpu"
    u = res.ritz_vectors
    torch.testing.assert_close(u.T @ u, torch.eye(p, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("m", [4, 7, 10])
def test_residual_bounds_hold_for_partial_spaces(matrix, block, m):
    start = torch.randn(matrix.shape[0], block, generator=_gen(5), dtype=F64)
    res = block_lanczos(lambda x: matrix @ x, start, m)
    u, theta = res.ritz_vectors, res.ritz_values
    true = torch.linalg.vector_norm(matrix @ u - u * theta, dim=0)
    assert res.num_products == m
    assert torch.all(true <= res.residuals + 1e-10)
    assert float(res.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    # Rayleigh-Ritz: every Ritz value lies inside the spectrum.
    lam = torch.linalg.eigvalsh(matrix)
    assert float(theta.min()) >= float(lam.min()) - 1e-10
    assert float(theta.max()) <= float(lam.max()) + 1e-10


def test_invariant_space_breaks_down_without_nan():
    a = _low_rank(12)
    res = block_lanczos(lambda x: a @ x, torch.randn(12, 2, generator=_gen(6), dtype=F64), 12)
    assert res.breakdown
    assert res.num_products < 12
    top = torch.linalg.eigvalsh(a)[-3:]
    torch.testing.assert_close(res.ritz_values[-3:], top, rtol=0, atol=1e-9)
    assert bool(torch.isfinite(res.ritz_vectors).all())


@pytest.mark.parametrize("transform", ["newton", "abs"])
def test_krylov_solve_with_blocks_is_exact_on_the_whole_space(matrix, block, transform):
    p = matrix.shape[0]
    v = torch.randn(p, generator=_gen(7), dtype=F64)
    d, info = krylov_solve(
        matrix, v, p, 0.5, transform, block_size=block, generator=_gen(8), return_info=True
    )
    lam, vec = torch.linalg.eigh(matrix)
    if transform == "abs":
        f = 1 / (lam.abs() + 0.5)
    else:
        f = 1 / (torch.where(lam <= -0.5, torch.zeros_like(lam), lam) + 0.5)
    torch.testing.assert_close(d, vec @ (f * (vec.T @ v)), rtol=1e-9, atol=1e-10)
    assert info.num_products == p
    assert info.krylov_fraction == pytest.approx(1.0, abs=1e-12)
    # The start vector v is the first column: its quadrature weights are reported.
    torch.testing.assert_close(info.weights, (vec.T @ v / v.norm()) ** 2, rtol=0, atol=1e-10)


def test_krylov_solve_uses_the_operators_matmat_once_per_block():
    a = _spd(10)

    class Op:
        shape, dtype, device = (10, 10), F64, torch.device("cpu")

        def __init__(self):
            self.widths: list[int] = []

        def matvec(self, v):
            raise AssertionError("a block run must use matmat")

        def matmat(self, m):
            self.widths.append(m.shape[1])
            return a @ m

    op = Op()
    v = torch.ones(10, dtype=F64)
    krylov_solve(op, v, 7, 1.0, block_size=3, generator=_gen(9))
    assert op.widths == [3, 3, 1]
    # Plain Lanczos and a block run agree where both are exact.
    d1 = krylov_solve(a, v, 10, 1.0)
    d3 = krylov_solve(a, v, 10, 1.0, block_size=3, generator=_gen(9))
    torch.testing.assert_close(d1, d3, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_block_size_is_validated(bad):
    with pytest.raises(ValueError, match=r"Invalid block_size value"):
        krylov_solve(_spd(4), torch.ones(4, dtype=F64), 3, 1.0, block_size=bad)


@pytest.mark.parametrize(
    ("v0", "message"),
    [
        (torch.zeros(6, dtype=F64), "finite, non-zero norm"),
        (torch.ones(6, 1, dtype=F64), r"shape \(6,\)"),
        (torch.full((6,), float("nan"), dtype=F64), "finite, non-zero norm"),
    ],
)
def test_block_start_vector_is_checked_like_plain_lanczos(v0, message):
    for block in (1, 3):
        with pytest.raises(ValueError, match=message):
            krylov_solve(_spd(6), torch.ones(6, dtype=F64), 4, 1.0, v0=v0, block_size=block)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_blocks(dtype):
    a = _spd(8)
    v = torch.ones(8, dtype=F64)
    exact = krylov_solve(a, v, 8, 1.0)
    low = krylov_solve(a.to(dtype), v.to(dtype), 8, 1.0, block_size=3, generator=_gen(1))
    assert low.dtype == dtype
    assert float((low.double() - exact).norm() / exact.norm()) < 0.1

"""A basis read block by block of columns gives the values of whole-matrix arithmetic."""

from __future__ import annotations

import pytest
import torch

import lanczos_optim._basis
from lanczos_optim._augmented import _augmented_solve
from lanczos_optim._basis import LanczosBasis

P, M = 1000, 6


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanczos_optim._basis, "_BLOCK", 64)  # many blocks over P = 1000


def _basis(storage: torch.dtype) -> tuple[LanczosBasis, torch.Tensor]:
    """An orthonormal float64 ``[M, P]`` basis stored in ``storage``; its stored values (f64)."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(P, M, generator=gen, dtype=torch.float64))
    basis = LanczosBasis(
        M, P, dtype=torch.float64, device=torch.device("cpu"), storage_dtype=storage
    )
    for row in q.T:
        basis.append(row)
    return basis, basis.tensor().double()


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("storage", [torch.float64, torch.bfloat16])
def test_blocks_give_the_dense_projection_coordinates_and_combination(storage) -> None:
    basis, v = _basis(storage)  # v: the stored rows, exactly as float64
    w = torch.randn(P, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = torch.randn(M, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(basis.coordinates(w), v @ w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(basis.combine(c[:, None])[:, 0], v.T @ c, rtol=1e-12, atol=1e-12)
    projected = w.clone()
    basis._project_once(projected)
    torch.testing.assert_close(projected, w - v.T @ (v @ w), rtol=1e-12, atol=1e-12)
    out = w.clone()
    basis.add_combination(out, c)
    assert torch.equal(out, w + basis.combine(c[:, None])[:, 0])


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("storage", [torch.float64, torch.bfloat16])
def test_one_row_read_block_by_block_gives_the_dense_dot_update_and_complement(storage) -> None:
    basis, v = _basis(storage)
    w = torch.randn(P, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert basis.row_dot(2, w) == pytest.approx(float(v[2] @ w), rel=1e-12)
    updated = w.clone()
    basis.sub_row(updated, 0.7, 2)
    assert torch.equal(updated, w - 0.7 * v[2])  # elementwise: the same values to the bit
    c = torch.randn(M, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(basis.complement(w, c), w - v.T @ c, rtol=1e-12, atol=1e-12)


def test_augmented_solve_without_its_vector_gives_the_same_step_and_cannot_be_applied() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(P, P, generator=gen, dtype=torch.float64)
    a = a @ a.T / P
    basis, q = _basis(torch.float64)
    theta, s = torch.linalg.eigh(q @ a @ q.T)
    v = torch.randn(P, generator=gen, dtype=torch.float64)
    args = (theta, basis.tensor(), s, 0.5, "newton", v, lambda x: a @ x)
    d, info = _augmented_solve(*args)
    d2, info2 = _augmented_solve(*args, keep_vector=False)
    assert torch.equal(d, d2)
    assert info2.predicted_decrease(0.7) == info.predicted_decrease(0.7)
    with pytest.raises(RuntimeError, match="not kept"):
        info2.apply(v)
    with pytest.raises(RuntimeError, match="not kept"):
        _ = info2.ritz_vectors

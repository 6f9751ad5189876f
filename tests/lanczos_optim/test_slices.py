"""Slice-by-slice elementwise work gives the values of the whole-vector arithmetic."""

from __future__ import annotations

import pytest
import torch

from lanczos_optim._slices import (
    FINITE_SLICE,
    SLICE,
    add_scaled,
    all_finite,
    dot64,
    norm64,
    squared_norm,
    sub_scaled,
)

LENGTHS = [1, SLICE - 1, SLICE, 3 * SLICE + 5]


@pytest.fixture(params=LENGTHS, ids=lambda n: f"n{n}")
def vectors(request: pytest.FixtureRequest) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(request.param)
    n = request.param
    return torch.randn(n, generator=gen), torch.randn(n, generator=gen)


def test_sub_scaled_equals_the_whole_vector_update(vectors) -> None:
    w, x = vectors
    expected = w - 0.37 * x
    sub_scaled(w, 0.37, x)
    assert torch.equal(w, expected)


def test_add_scaled_equals_the_whole_vector_update(vectors) -> None:
    d, x = vectors
    scale = torch.tensor(-1.25, dtype=torch.float64).to(d.dtype)
    expected = d + scale * x
    add_scaled(d, scale, x)
    assert torch.equal(d, expected)


def test_all_finite_finds_a_non_finite_entry_in_any_slice() -> None:
    x = torch.zeros(3 * FINITE_SLICE + 5)
    assert all_finite(x)
    for index, value in [(0, float("inf")), (FINITE_SLICE + 7, float("nan")), (-1, -float("inf"))]:
        y = x.clone()
        y[index] = value
        assert not all_finite(y)


def test_dot64_of_a_short_vector_is_the_whole_float64_dot_to_the_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(SLICE, generator=gen), torch.randn(SLICE, generator=gen)
    assert dot64(a, b) == float(torch.dot(a.double(), b.double()))
    assert norm64(a) == float(torch.linalg.vector_norm(a.double()))


def test_dot64_of_a_long_vector_sums_the_slices_in_float64() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(3 * SLICE + 5, generator=gen), torch.randn(3 * SLICE + 5, generator=gen)
    exact = float(torch.dot(a.double(), b.double()))
    assert dot64(a, b) == pytest.approx(exact, rel=1e-12, abs=1e-9)
    assert squared_norm(a) == pytest.approx(float(a.double() @ a.double()), rel=1e-13)
    assert norm64(a) == pytest.approx(float(torch.linalg.vector_norm(a.double())), rel=1e-13)

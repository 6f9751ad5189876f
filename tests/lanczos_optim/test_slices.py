"""Slice-by-slice elementwise work gives the values of the whole-vector arithmetic."""

from __future__ import annotations

import pytest
import torch

from lanczos_optim._slices import FINITE_SLICE, SLICE, add_scaled, all_finite, sub_scaled

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

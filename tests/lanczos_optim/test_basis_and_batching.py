"""Basis storage options and lock-step probes give the same spectra as the plain runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lanczos_optim import (
    HessianOperator,
    flatten_tensors,
    lanczos,
    spectral_density,
    unflatten_vector,
)


@pytest.fixture
def indefinite() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(400, 400, generator=gen, dtype=torch.float64))
    eig = torch.cat([torch.linspace(-1, 4, 390, dtype=torch.float64), torch.arange(10.0, 20.0)])
    a = q @ torch.diag(eig.double()) @ q.T
    return (a + a.T) / 2


@pytest.mark.parametrize(
    ("storage", "tol"),
    [
        ({}, 1e-10),
        ({"basis_device": "cpu", "basis_dtype": torch.float32}, 1e-8),
        ({"basis_dtype": torch.bfloat16}, 1e-2),
    ],
)
def test_basis_storage_keeps_ritz_values_accurate(indefinite, storage, tol):
    exact = torch.linalg.eigvalsh(indefinite)
    gen = torch.Generator().manual_seed(1)
    res = lanczos(indefinite, 80, generator=gen, keep_basis=True, compute_vectors=True, **storage)
    ref = lanczos(indefinite, 80, generator=torch.Generator().manual_seed(1))
    assert res.basis.dtype == storage.get("basis_dtype", torch.float64)
    # Extreme Ritz values converge to the extreme eigenvalues to the storage precision.
    assert abs(float(res.ritz_values[-1] - exact[-1])) < tol * float(exact.abs().max())
    assert float((res.ritz_values - ref.ritz_values).abs().max()) < tol * 20
    # Ritz vectors stay unit-norm and in the compute dtype.
    assert res.ritz_vectors.dtype == torch.float64
    assert torch.allclose(res.ritz_vectors.norm(dim=0), torch.ones(80, dtype=torch.float64))
    basis = res.basis.double()
    orth = (basis @ basis.T - torch.eye(80, dtype=torch.float64)).abs().max()
    assert float(orth) < 50 * torch.finfo(res.basis.dtype).eps


def test_lock_step_probes_equal_sequential_probes(indefinite):
    a = spectral_density(indefinite, 25, 4, generator=torch.Generator().manual_seed(2))
    b = spectral_density(
        indefinite, 25, 4, generator=torch.Generator().manual_seed(2), batch_probes=False
    )
    assert torch.allclose(a.nodes, b.nodes, atol=1e-10, rtol=0)
    assert torch.allclose(a.weights, b.weights, atol=1e-12, rtol=0)


def test_lock_step_probes_with_independent_breakdowns():
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([1.0] * 10 + [2.0] * 10 + [0.0] * 10)).double() @ q.T
    a = (a + a.T) / 2
    starts = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    starts[:, 1] = q[:, 0] + q[:, 12]  # only two distinct eigenvalues: breaks down after 2
    from lanczos_optim._lanczos_many import lanczos_many

    many = lanczos_many(a.__matmul__, starts, 10)
    assert [r.num_steps for r in many] == [3, 2, 3]
    for col, res in enumerate(many):
        single = lanczos(a, 10, v0=starts[:, col])
        assert single.num_steps == res.num_steps
        assert torch.allclose(single.ritz_values, res.ritz_values, atol=1e-12)
        assert torch.allclose(single.weights, res.weights, atol=1e-12)
        assert not torch.isnan(res.ritz_values).any()


def test_lock_step_probes_on_hessian_operator():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(x[:25], y[:25]), (x[25:], y[25:])])
    a = spectral_density(op, 12, 3, generator=torch.Generator().manual_seed(5))
    b = spectral_density(op, 12, 3, generator=torch.Generator().manual_seed(5), batch_probes=False)
    assert torch.allclose(a.nodes, b.nodes, atol=1e-10, rtol=0)
    assert torch.allclose(a.weights, b.weights, atol=1e-10, rtol=0)


def _dense_mlp_hessian() -> torch.Tensor:
    """The float64 Hessian (torch.func) of a tanh MLP's cross-entropy: P = 136, indefinite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 4, (40,))
    names, params = [n for n, _ in model.named_parameters()], list(model.parameters())
    flat = flatten_tensors([p.detach() for p in params])

    def loss(w: torch.Tensor) -> torch.Tensor:
        weights = dict(zip(names, unflatten_vector(w, params), strict=True))
        return nn.functional.cross_entropy(functional_call(model, weights, x), y)

    return torch.func.hessian(loss)(flat)


@pytest.mark.parametrize("steps", [20, 60])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_basis_ritz_values_and_moments_match_the_dense_hessian(steps, seed):
    # With a bfloat16 basis the recurrence subtracts the stored (rounded) previous vector and
    # leaves the rest to the full reorthogonalisation; the extreme Ritz values stay within
    # 1e-3 ||H|| (bfloat16's unit roundoff is 3.9e-3) of where float64 storage puts them, and
    # the quadrature moments u^T H^k u (k <= 6) within 1e-4 ||H||^k of the dense ones.
    h = _dense_mlp_hessian()
    exact = torch.linalg.eigvalsh(h)
    norm = float(exact.abs().max())
    v0 = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(seed), dtype=h.dtype)
    low = lanczos(h, steps, v0=v0, basis_dtype=torch.bfloat16)
    full = lanczos(h, steps, v0=v0)
    assert low.num_steps == steps
    for k in (0, -1):
        full_error = abs(float(full.ritz_values[k] - exact[k]))
        assert abs(float(low.ritz_values[k] - exact[k])) <= full_error + 1e-3 * norm
    u = v0 / v0.norm()
    for k in range(1, 7):
        moment = float(u @ torch.linalg.matrix_power(h, k) @ u)
        quadrature = float((low.weights * low.ritz_values**k).sum())
        assert abs(quadrature - moment) <= 1e-4 * norm**k

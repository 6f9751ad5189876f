"""The optimisers' Krylov basis: stored once, stepped in its coordinates, in any storage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, krylov_solve
from lanczos_optim.flatten import flatten_tensors

F64 = torch.float64


def _model(dtype: torch.dtype = F64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _batch(dtype: torch.dtype = F64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=gen, dtype=dtype), torch.randint(0, 3, (32,), generator=gen)


def _closure(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    return closure


def _params(model: nn.Module) -> torch.Tensor:
    return flatten_tensors([p.detach().clone() for p in model.parameters()])


def test_reused_basis_is_stored_once_and_steps_as_the_ritz_formula() -> None:
    model = _model()
    damping = 0.5
    opt = LanczosNewton(
        model.parameters(), lr=1.0, damping=damping, lanczos_steps=5, update_every=3,
        max_step_norm=None, reuse_complement="damped",
    )  # fmt: skip
    opt.step(_closure(model, _batch(seed=1)))
    state = opt.state[next(iter(model.parameters()))]
    q = state["krylov_basis"]
    n = sum(p.numel() for p in model.parameters())
    assert q.shape == (5, n)  # the basis, once: no [P, m] Ritz vectors beside it
    assert "ritz_vectors" not in state
    s = torch.tensor(state["ritz_coordinates"], dtype=F64)
    theta = torch.tensor(state["ritz_values"], dtype=F64)
    torch.testing.assert_close(q @ q.T, torch.eye(5, dtype=F64), atol=1e-12, rtol=0)
    before = _params(model)
    opt.step(_closure(model, _batch(seed=2)))  # reuses the basis on a new gradient
    assert opt.last_info.num_products == 0
    g = flatten_tensors([p.grad for p in model.parameters()])
    u = q.T @ s  # the Ritz vectors, formed here only to check the step against them
    c = u.T @ g
    expected = u @ (c / (theta + damping)) + (g - u @ c) / damping
    torch.testing.assert_close(before - _params(model), expected, rtol=1e-10, atol=1e-12)


def test_bfloat16_basis_gives_a_step_close_to_the_float32_one() -> None:
    steps = {}
    for dtype in (None, torch.bfloat16):
        model = _model(torch.float32)
        opt = LanczosNewton(model.parameters(), lanczos_steps=8, basis_dtype=dtype, update_every=2)
        before = _params(model)
        opt.step(_closure(model, _batch(torch.float32)))
        steps[dtype] = before - _params(model)
        assert opt.state[next(iter(model.parameters()))]["krylov_basis"].dtype == (
            dtype or torch.float32
        )
    ref, low = steps[None], steps[torch.bfloat16]
    assert not torch.equal(ref, low)  # the storage really was rounded
    rel = float(torch.linalg.vector_norm(low - ref) / torch.linalg.vector_norm(ref))
    assert rel < 0.05


def test_basis_on_the_cpu_steps_as_the_default() -> None:
    updates = []
    for device in (None, "cpu", torch.device("cpu")):
        model = _model()
        opt = LanczosNewton(
            model.parameters(), lanczos_steps=4, update_every=2, basis_device=device
        )
        before = _params(model)
        for seed in (1, 2):
            opt.step(_closure(model, _batch(seed=seed)))
        updates.append(before - _params(model))
        assert opt.state[next(iter(model.parameters()))]["krylov_basis"].device.type == "cpu"
    assert torch.equal(updates[0], updates[1])
    assert torch.equal(updates[0], updates[2])


def test_a_state_dict_with_cached_ritz_vectors_refreshes_the_basis() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4, update_every=3)
    opt.step(_closure(model, _batch(seed=1)))
    saved = opt.state_dict()
    legacy = saved["state"][0]
    n = legacy.pop("krylov_basis").shape[1]
    legacy.pop("ritz_coordinates")
    legacy["ritz_vectors"] = torch.zeros(n, 4, dtype=F64)  # the cache before the basis was kept
    opt2 = LanczosNewton(model.parameters(), lanczos_steps=4, update_every=3)
    opt2.load_state_dict(saved)
    opt2.step(_closure(model, _batch(seed=2)))
    assert opt2.last_info.num_products == 4
    state = opt2.state[next(iter(model.parameters()))]
    assert "ritz_vectors" not in state
    assert state["krylov_basis"].shape == (4, n)


@pytest.mark.parametrize("block_size", [1, 3])
def test_krylov_solve_with_a_bfloat16_basis(block_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=gen, dtype=F64)
    c = a @ a.T / 30
    v = torch.randn(30, generator=gen, dtype=F64)
    kw = dict(block_size=block_size, generator=torch.Generator().manual_seed(1), return_info=True)
    d, info = krylov_solve(c, v, 10, 0.5, **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    d16, info16 = krylov_solve(c, v, 10, 0.5, basis_dtype=torch.bfloat16, **kw)
    assert info16.basis.dtype == torch.bfloat16
    assert d16.dtype == F64
    assert info16.ritz_vectors.dtype == F64
    assert info.basis.dtype == F64
    rel = float(torch.linalg.vector_norm(d16 - d) / torch.linalg.vector_norm(d))
    assert 0 < rel < 0.05


def test_a_loaded_bfloat16_basis_goes_back_to_its_storage_dtype() -> None:
    model = _model()
    kw = dict(lanczos_steps=4, update_every=3, basis_dtype=torch.bfloat16)
    kw["reuse_complement"] = "damped"  # the old reuse step: no product
    opt = LanczosNewton(model.parameters(), **kw)
    opt.step(_closure(model, _batch(seed=1)))
    opt2 = LanczosNewton(model.parameters(), **kw)
    opt2.load_state_dict(opt.state_dict())
    state = opt2.state[next(iter(model.parameters()))]
    assert state["krylov_basis"].dtype == F64  # torch's load_state_dict casts to the parameters'
    opt2.step(_closure(model, _batch(seed=2)))
    assert opt2.last_info.num_products == 0
    assert state["krylov_basis"].dtype == torch.bfloat16

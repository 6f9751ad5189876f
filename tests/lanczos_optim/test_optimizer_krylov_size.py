"""krylov_tol on the optimisers: the step is krylov_solve(tol) on the dense GGN; validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton, krylov_solve
from lanczos_optim.flatten import flatten_tensors

F64 = torch.float64


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(F64)


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)


def dense_ggn_and_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy GGN J^T H J and the gradient of the batch, dense float64."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w0 = flatten_tensors([p.detach() for p in model.parameters()])

    def outputs(w: torch.Tensor) -> torch.Tensor:
        parts, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            parts[name] = w[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return torch.func.functional_call(model, parts, (x,))

    def loss(out: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y)

    out0 = outputs(w0)
    jac = torch.func.jacrev(outputs)(w0).reshape(out0.numel(), -1)
    h = torch.func.hessian(loss)(out0).reshape(out0.numel(), out0.numel())
    g = jac.T @ torch.func.grad(loss)(out0).reshape(-1)
    return jac.T @ h @ jac, g


def _closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def closure() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        return nn.functional.cross_entropy(out, y), out

    return closure


@pytest.mark.parametrize("tol", [None, 0.3, 1e-2, 1e-6])
def test_step_is_krylov_solve_with_tol_on_the_dense_ggn(tol: float | None) -> None:
    model, (x, y) = _model(), _batch()
    ggn, g = dense_ggn_and_gradient(model, x, y)
    w0 = flatten_tensors([p.detach() for p in model.parameters()])
    opt = LanczosNewton(
        model.parameters(), lanczos_steps=20, damping=0.1, max_step_norm=None, krylov_tol=tol
    )
    opt.step(_closure(model, x, y))
    d, kinfo = krylov_solve(ggn, g, 20, 0.1, return_info=True, tol=tol)
    w1 = flatten_tensors([p.detach() for p in model.parameters()])
    torch.testing.assert_close(w0 - w1, d, rtol=1e-8, atol=1e-10)
    info = opt.last_info
    assert info.num_products == kinfo.num_products
    if tol is not None:
        assert info.krylov_residual <= tol
        assert info.num_products < 20 or tol == 1e-6
    # The recorded residual is the true one of the damped system, computed densely.
    true = torch.linalg.vector_norm((ggn + 0.1 * torch.eye(len(g), dtype=F64)) @ d - g)
    relative = float(true / torch.linalg.vector_norm(g))
    assert info.krylov_residual == pytest.approx(relative, abs=1e-8)


def test_krylov_tol_none_is_the_default_step_bit_for_bit() -> None:
    x, y = _batch()
    runs = []
    for kwargs in ({}, {"krylov_tol": None}, {"krylov_tol": 1e-300}):
        model = _model()
        opt = LanczosNewton(model.parameters(), lanczos_steps=6, **kwargs)
        for _ in range(3):
            opt.step(_closure(model, x, y))
        runs.append([p.detach().clone() for p in model.parameters()])
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_residual_is_nan_on_a_reused_basis_and_a_random_start() -> None:
    model, (x, y) = _model(), _batch()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4, update_every=2, krylov_tol=1e-3)
    opt.step(_closure(model, x, y))
    assert math.isfinite(opt.last_info.krylov_residual)
    opt.step(_closure(model, x, y))
    assert opt.last_info.basis_age == 1
    assert math.isnan(opt.last_info.krylov_residual)
    opt = LanczosSaddleFreeNewton(model.parameters(), lanczos_steps=4, curvature="ggn")
    opt.step(_closure(model, x, y))  # krylov_start="random": no residual from the tridiagonal
    assert math.isnan(opt.last_info.krylov_residual)


def test_saddle_free_stops_on_the_weighted_bound() -> None:
    model, (x, y) = _model(), _batch()
    opt = LanczosSaddleFreeNewton(
        model.parameters(), lanczos_steps=30, krylov_start="gradient", krylov_tol=0.05
    )
    opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    assert 1 <= opt.last_info.num_products < 30
    assert opt.last_info.krylov_residual <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"krylov_tol": 0.0}, r"Invalid krylov_tol value: 0\.0 \(must be None or a finite"),
        ({"krylov_tol": -0.1}, r"Invalid krylov_tol value: -0\.1"),
        ({"krylov_tol": math.nan}, r"Invalid krylov_tol value: nan"),
        ({"krylov_tol": math.inf}, r"Invalid krylov_tol value: inf"),
        ({"krylov_tol": "0.1"}, r"Invalid krylov_tol value: '0\.1'"),
        ({"krylov_tol": True}, r"Invalid krylov_tol value: True"),
        ({"krylov_tol": 0.1, "krylov_start": "random"}, r"needs krylov_start='gradient'"),
        ({"krylov_tol": 0.1, "block_size": 2}, r"block_size=2 \(krylov_tol needs"),
    ],
)
def test_bad_krylov_tol_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LanczosNewton(_model().parameters(), **kwargs)  # type: ignore[arg-type]


def test_krylov_tol_is_shared_by_the_parameter_groups() -> None:
    model = _model()
    opt = LanczosNewton(model[0].parameters(), krylov_tol=0.1)
    with pytest.raises(ValueError, match=r"krylov_tol=0\.01 but group 0 has 0\.1"):
        opt.add_param_group({"params": model[2].parameters(), "krylov_tol": 0.01})


def test_old_state_dict_without_krylov_tol_loads() -> None:
    model, (x, y) = _model(), _batch()
    opt = LanczosNewton(model.parameters(), lanczos_steps=3)
    opt.step(_closure(model, x, y))
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        del group["krylov_tol"]
    opt2 = LanczosNewton(model.parameters(), lanczos_steps=3)
    opt2.load_state_dict(sd)
    opt2.__setstate__(opt2.__getstate__())
    assert opt2.param_groups[0]["krylov_tol"] is None
    opt2.step(_closure(model, x, y))

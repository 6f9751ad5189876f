"""A reused basis (``update_every > 1``): the gradient's complement and the warm start.

Ground truth is the dense Galerkin solve of ``(A + delta I) d = g`` on ``span(Q, r)`` for a
quadratic ``0.5 w^T A w - b^T w`` (its Hessian is ``A`` everywhere), in float64.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim._augmented import _augmented_solve
from lanczos_optim.krylov import _solve_in_basis, krylov_solve

P, DAMPING = 12, 0.5


def _problem(seed: int = 0, dim: int = P) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    eig = torch.logspace(-2, 2, dim, dtype=torch.float64)
    q = torch.linalg.qr(x)[0]
    return (q * eig) @ q.T, torch.randn(dim, generator=gen, dtype=torch.float64)


def _quadratic_opt(w: nn.Parameter, **kwargs: Any) -> LanczosNewton:
    options = {"lr": 1.0, "damping": DAMPING, "lanczos_steps": 3, "update_every": 3}
    options |= {"curvature": "hessian", "max_step_norm": None}
    return LanczosNewton([w], **(options | kwargs))


def _closure(w: Tensor, a: Tensor, b: Tensor):
    return lambda: 0.5 * w @ a @ w - b @ w


def _galerkin(a: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """The exact solve of (A + delta I) d = g on span(rows of Q, g)."""
    r = g - q.T @ (q @ g)
    v = torch.cat([q, (r / torch.linalg.vector_norm(r))[None]]).T  # [P, m + 1]
    small = v.T @ (a + DAMPING * torch.eye(a.shape[0], dtype=a.dtype)) @ v
    return v @ torch.linalg.solve(small, v.T @ g)


def _reuse_step(mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor, LanczosNewton]:
    """Two steps on the quadratic; returns A, the cached Q, the second gradient, its d, opt."""
    a, b = _problem()
    w = nn.Parameter(torch.zeros(P, dtype=torch.float64))
    opt = _quadratic_opt(w, reuse_complement=mode)
    opt.step(_closure(w, a, b))
    q = opt.state[w]["krylov_basis"].clone()
    g = (a @ w - b).detach()
    before = w.detach().clone()
    opt.step(_closure(w, a, b))
    return a, q, g, before - w.detach(), opt


def test_augmented_reuse_step_is_the_galerkin_solve_on_span_q_r() -> None:
    a, q, g, d, opt = _reuse_step("augment")
    r = g - q.T @ (q @ g)
    assert float(r.norm() / g.norm()) > 0.1  # the complement matters here
    torch.testing.assert_close(d, _galerkin(a, q, g), rtol=1e-9, atol=1e-11)
    info = opt.last_info
    assert info is not None
    assert info.basis_age == 1
    assert info.num_products == 1
    assert info.krylov_fraction == pytest.approx(float((q @ g).norm() ** 2 / g.norm() ** 2))
    assert info.ritz_values.numel() == 4  # m + 1 Ritz values of the augmented space
    # The predicted decrease is the quadratic model's in that space, exact for a quadratic.
    assert info.predicted_decrease == pytest.approx(float(g @ d - 0.5 * d @ a @ d), rel=1e-9)


def test_damped_reuse_step_is_the_old_step_and_takes_no_product() -> None:
    a, q, g, d, opt = _reuse_step("damped")
    u, theta = q.T @ torch.linalg.eigh(q @ a @ q.T)[1], torch.linalg.eigh(q @ a @ q.T)[0]
    expected = u @ ((u.T @ g) / (theta + DAMPING)) + (g - q.T @ (q @ g)) / DAMPING
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=1e-11)
    assert opt.last_info is not None
    assert opt.last_info.num_products == 0


def test_rayleigh_reuse_step_scales_the_complement_by_its_rayleigh_quotient() -> None:
    a, q, g, d, opt = _reuse_step("rayleigh")
    theta, s = torch.linalg.eigh(q @ a @ q.T)
    u = q.T @ s
    r = g - q.T @ (q @ g)
    rho = float(r @ a @ r / (r @ r))
    expected = u @ ((u.T @ g) / (theta + DAMPING)) + r / (rho + DAMPING)
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=1e-11)
    assert opt.last_info is not None
    assert opt.last_info.num_products == 1


def test_augment_beats_damped_on_the_quadratic_model() -> None:
    # The Galerkin step on the larger space lowers the damped quadratic model more.
    results = {mode: _reuse_step(mode) for mode in ("damped", "rayleigh", "augment")}

    def model(mode: str) -> float:
        a, _, g, d, _ = results[mode]
        return float(-g @ d + 0.5 * d @ (a + DAMPING * torch.eye(P, dtype=a.dtype)) @ d)

    assert model("augment") < model("rayleigh") < model("damped")


def _cached(a: Tensor, g0: Tensor, steps: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    _, info = krylov_solve(a, g0, steps, DAMPING, return_info=True)
    return info.ritz_values, info.basis, info.coordinates


def test_gradient_inside_the_basis_gives_the_cached_step_without_a_product() -> None:
    a, b = _problem()
    theta, q, s = _cached(a, b)
    v = q.T @ torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    calls: list[Tensor] = []

    def matvec(x: Tensor) -> Tensor:
        calls.append(x)
        return a @ x

    d, info = _augmented_solve(theta, q, s, DAMPING, "newton", v, matvec)
    old, _ = _solve_in_basis(theta, q, s, DAMPING, "newton", v)
    assert calls == []
    assert info.num_products == 0
    assert torch.equal(d, old)


def test_augmented_solve_takes_one_product_and_its_info_applies_the_same_solve() -> None:
    a, b = _problem()
    theta, q, s = _cached(a, b)
    v = torch.randn(P, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls: list[Tensor] = []

    def matvec(x: Tensor) -> Tensor:
        calls.append(x)
        return a @ x

    d, info = _augmented_solve(theta, q, s, DAMPING, "newton", v, matvec)
    assert len(calls) == 1
    assert info.num_products == 1
    torch.testing.assert_close(info.apply(v), d, rtol=1e-10, atol=1e-12)
    u = info.ritz_vectors  # Ritz pairs of the augmented space: A u = phi u projected
    torch.testing.assert_close(u.T @ a @ u, torch.diag(info.ritz_values), atol=1e-9, rtol=0)


def test_abs_transform_clips_nothing_and_newton_clips_negative_curvature() -> None:
    a, b = _problem()
    a = a - 50.0 * torch.eye(P, dtype=torch.float64)  # indefinite
    theta, q, s = _cached(a, b)
    v = torch.randn(P, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, newton = _augmented_solve(theta, q, s, DAMPING, "newton", v, lambda x: a @ x)
    d_abs, saddle = _augmented_solve(theta, q, s, DAMPING, "abs", v, lambda x: a @ x)
    assert newton.num_clipped == int((newton.ritz_values <= -DAMPING).sum()) > 0
    assert saddle.num_clipped == 0
    assert float(v @ d_abs) > 0  # (|A| + delta I)^-1 on the space: a descent direction


def _mlp_run(steps: int, backward: bool, state: dict[str, Any] | None = None, **kwargs: Any):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,)))
        for _ in range(steps)
    ]
    opt = LanczosNewton(model.parameters(), lanczos_steps=4, update_every=3, **kwargs)
    opt.attach(model)
    infos = []
    for x, y in batches:
        if backward:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=True)
            opt.step()
            opt.zero_grad()
        else:

            def closure(x: Tensor = x, y: Tensor = y) -> Any:
                out = model(x)
                return nn.functional.cross_entropy(out, y), out

            opt.step(closure)
        infos.append(opt.last_info)
    return model, opt, infos, batches


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("warm", [False, True])
def test_backward_protocol_equals_closure_protocol(warm: bool) -> None:
    options = {"reuse_complement": "augment", "warm_start": warm}
    closure_model, _, infos, _ = _mlp_run(7, backward=False, **options)
    backward_model, _, back_infos, _ = _mlp_run(7, backward=True, **options)
    assert [i.num_products for i in infos] == [4, 1, 1, 4, 1, 1, 4]
    assert [i.num_products for i in back_infos] == [4, 1, 1, 4, 1, 1, 4]
    for p, q in zip(closure_model.parameters(), backward_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["augment", "rayleigh"])
def test_state_dict_round_trip_continues_bit_for_bit(mode: str) -> None:
    options = {"reuse_complement": mode, "warm_start": True}
    model, opt, _, batches = _mlp_run(4, backward=False, **options)  # mid-reuse after step 4
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    twin = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    twin.load_state_dict(saved["model"])
    twin_opt = LanczosNewton(twin.parameters(), lanczos_steps=4, update_every=3, **options)
    twin_opt.load_state_dict(saved["opt"])
    assert twin_opt.param_groups[0]["reuse_complement"] == mode
    assert twin_opt.param_groups[0]["warm_start"] is True
    for m, o in ((model, opt), (twin, twin_opt)):
        for x, y in batches[:3]:

            def closure(m: nn.Module = m, x: Tensor = x, y: Tensor = y) -> Any:
                out = m(x)
                return nn.functional.cross_entropy(out, y), out

            o.step(closure)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_warm_start_refresh_starts_from_the_previous_ritz_vectors() -> None:
    # On a fixed quadratic the warm space contains the previous top Ritz vector u, so its top
    # Ritz value is at least u^T A u = the previous top Ritz value: it never gets worse, and
    # after a few refreshes it is closer to the top eigenvalue than a cold start's.
    a, b = _problem(3, dim=40)
    top = float(torch.linalg.eigvalsh(a)[-1])
    tops = {}
    for warm in (False, True):
        w = nn.Parameter(torch.zeros(40, dtype=torch.float64))
        opt = _quadratic_opt(w, lanczos_steps=4, update_every=2, warm_start=warm, lr=0.3)
        values = []
        for _ in range(10):
            opt.step(_closure(w, a, b))
            info = opt.last_info
            assert info is not None
            if info.basis_age == 0:
                assert info.num_products == 4
                values.append(float(info.ritz_values[-1]))
        tops[warm] = values
    warm_values = tops[True]
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(warm_values))
    assert top - warm_values[-1] < 0.5 * (top - tops[False][-1])


def test_warm_start_without_a_cached_basis_is_the_cold_run() -> None:
    a, b = _problem()
    runs = []
    for warm in (False, True):
        w = nn.Parameter(torch.zeros(P, dtype=torch.float64))
        _quadratic_opt(w, update_every=1, warm_start=warm).step(_closure(w, a, b))
        runs.append(w.detach().clone())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("reuse_complement", "blind", "Invalid reuse_complement: 'blind'"),
        ("warm_start", 1, "Invalid warm_start value: 1"),
    ],
)
def test_invalid_options_raise_a_one_line_error(option: str, value: Any, message: str) -> None:
    w = nn.Parameter(torch.zeros(2))
    for cls in (LanczosNewton, LanczosSaddleFreeNewton):
        with pytest.raises(ValueError, match=message):
            cls([w], **{option: value})


def test_a_state_dict_from_before_the_options_continues_with_the_damped_step() -> None:
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    saved = LanczosNewton([w], update_every=2).state_dict()
    for group in saved["param_groups"]:
        del group["reuse_complement"], group["warm_start"]
    opt = LanczosNewton([w], update_every=2)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["reuse_complement"] == "damped"
    assert opt.param_groups[0]["warm_start"] is False

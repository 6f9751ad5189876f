"""``subspace_momentum``: the previous direction joins the Krylov space of the step.

Ground truth is the dense Galerkin solve of ``(A + delta I) d = g`` on
``span(K_m(A, g), d_prev)`` for a quadratic ``0.5 w^T A w - b^T w`` (Hessian ``A``), float64.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lanczos_optim import LanczosNewton
from lanczos_optim._augmented import _augmented_solve
from lanczos_optim.krylov import krylov_solve

P, DAMPING, M = 12, 0.5, 3
F64 = torch.float64


@pytest.fixture(params=[0, 1, 2], ids=lambda s: f"seed{s}")
def problem(request: pytest.FixtureRequest) -> tuple[Tensor, Tensor]:
    """A float64 quadratic with curvatures from 1e-2 to 1e2."""
    gen = torch.Generator().manual_seed(request.param)
    q = torch.linalg.qr(torch.randn(P, P, generator=gen, dtype=F64))[0]
    a = (q * torch.logspace(-2, 2, P, dtype=F64)) @ q.T
    return a, torch.randn(P, generator=gen, dtype=F64)


def _opt(w: nn.Parameter, **kwargs: Any) -> LanczosNewton:
    options = {"lr": 1.0, "damping": DAMPING, "lanczos_steps": M, "curvature": "hessian"}
    return LanczosNewton([w], **(options | {"max_step_norm": None} | kwargs))


def _closure(w: Tensor, a: Tensor, b: Tensor):
    return lambda: 0.5 * w @ a @ w - b @ w


def _krylov(a: Tensor, g: Tensor, m: int) -> Tensor:
    """An orthonormal basis of K_m(A, g), columns [P, m]."""
    cols = [g]
    for _ in range(m - 1):
        cols.append(a @ cols[-1])
    return torch.linalg.qr(torch.stack(cols, dim=1))[0]


def _galerkin(a: Tensor, v: Tensor, g: Tensor) -> Tensor:
    """The exact solve of (A + delta I) d = g on the span of v's columns."""
    v = torch.linalg.qr(v)[0]
    small = v.T @ (a + DAMPING * torch.eye(P, dtype=F64)) @ v
    return v @ torch.linalg.solve(small, v.T @ g)


def _steps(a: Tensor, b: Tensor, n: int, **kwargs: Any) -> tuple[list[Tensor], LanczosNewton]:
    """The iterates w_0 .. w_n of n steps from zero."""
    w = nn.Parameter(torch.zeros(P, dtype=F64))
    opt = _opt(w, **kwargs)
    iterates = [w.detach().clone()]
    for _ in range(n):
        opt.step(_closure(w, a, b))
        iterates.append(w.detach().clone())
    return iterates, opt


def test_second_step_is_the_galerkin_solve_on_the_krylov_space_and_the_previous_step(
    problem: tuple[Tensor, Tensor],
) -> None:
    a, b = problem
    (w0, w1, w2), opt = _steps(a, b, 2, subspace_momentum=True)
    d1, g2 = w0 - w1, a @ w1 - b
    expected = _galerkin(a, torch.cat([_krylov(a, g2, M), d1[:, None]], dim=1), g2)
    torch.testing.assert_close(w1 - w2, expected, rtol=1e-8, atol=1e-10)
    info = opt.last_info
    assert info is not None
    assert info.num_products == M + 1  # the Lanczos run and the previous direction's product
    assert info.ritz_values.numel() == M + 1
    d2 = w1 - w2  # the quadratic model's decrease in that space, exact for a quadratic
    assert info.predicted_decrease == pytest.approx(float(g2 @ d2 - 0.5 * d2 @ a @ d2), rel=1e-8)


def test_first_step_is_the_plain_step_and_off_keeps_no_state(
    problem: tuple[Tensor, Tensor],
) -> None:
    a, b = problem
    (_, on1), opt_on = _steps(a, b, 1, subspace_momentum=True)
    (_, off1), opt_off = _steps(a, b, 1)
    assert torch.equal(on1, off1)
    state_on = next(iter(opt_on.state.values()))
    state_off = next(iter(opt_off.state.values()))
    assert torch.equal(state_on["subspace_direction"], -on1)  # d_1 = w_0 - w_1, w_0 = 0
    assert "subspace_direction" not in state_off
    assert opt_off.defaults["subspace_momentum"] is False


def test_it_lowers_the_quadratic_faster_than_the_plain_and_heavy_ball_steps(
    problem: tuple[Tensor, Tensor],
) -> None:
    # One Lanczos step per step: the plain method is a damped gradient method; with the
    # previous direction in the space, the steps accumulate low-curvature progress.
    a, b = problem

    def gap(**kwargs: Any) -> float:
        w = _steps(a, b, 15, lanczos_steps=1, damping=1e-2, **kwargs)[0][-1]
        w_star = torch.linalg.solve(a, b)
        return float((w - w_star) @ a @ (w - w_star))

    plain, heavy, subspace = gap(), gap(momentum=0.5), gap(subspace_momentum=True)
    assert subspace < 0.5 * plain
    assert subspace < heavy


def test_extra_vector_outside_the_span_of_a_random_start_gets_the_dense_answer() -> None:
    # The augmented solve with an extra vector for an operator whose basis does not contain v
    # (a random start): V = [Q, r], the transform on V^T A V, and the rest of v over delta.
    gen = torch.Generator().manual_seed(7)
    q0 = torch.linalg.qr(torch.randn(P, P, generator=gen, dtype=F64))[0]
    a = (q0 * torch.linspace(-3.0, 5.0, P, dtype=F64)) @ q0.T  # indefinite
    start = torch.randn(P, generator=gen, dtype=F64)
    _, kinfo = krylov_solve(a, start, M, DAMPING, "abs", return_info=True)
    g, prev = torch.randn(P, generator=gen, dtype=F64), torch.randn(P, generator=gen, dtype=F64)
    d, info = _augmented_solve(
        kinfo.ritz_values, kinfo.basis, kinfo.coordinates, DAMPING, "abs", g,
        lambda x: a @ x, extra=prev, in_span=False,
    )  # fmt: skip
    v = torch.linalg.qr(torch.cat([kinfo.basis.T, prev[:, None]], dim=1))[0]
    phi, w = torch.linalg.eigh(v.T @ a @ v)
    u = v @ w
    expected = u @ ((u.T @ g) / (phi.abs() + DAMPING)) + (g - v @ (v.T @ g)) / DAMPING
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=1e-11)
    assert info.num_products == 1
    assert info.v_dot_d == pytest.approx(float(g @ expected), rel=1e-9)


def test_previous_direction_inside_the_krylov_space_takes_no_product() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.diag(torch.logspace(-1, 1, P, dtype=F64))
    g = torch.randn(P, generator=gen, dtype=F64)
    _, kinfo = krylov_solve(a, g, M, DAMPING, return_info=True)
    calls: list[Tensor] = []
    inside = kinfo.basis.T @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    _augmented_solve(
        kinfo.ritz_values, kinfo.basis, kinfo.coordinates, DAMPING, "newton", g,
        lambda x: calls.append(x) or a @ x, extra=inside, in_span=True,
    )  # fmt: skip
    assert calls == []


def test_a_skipped_step_keeps_the_previous_direction() -> None:
    a = torch.diag(torch.logspace(-1, 1, P, dtype=F64))
    b = torch.ones(P, dtype=F64)
    w = nn.Parameter(torch.zeros(P, dtype=F64))
    opt = _opt(w, subspace_momentum=True)
    opt.step(_closure(w, a, b))
    before = w.detach().clone()
    prev = next(iter(opt.state.values()))["subspace_direction"].clone()
    bad = a.clone()
    bad[0, 0] = torch.inf
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(lambda: 0.5 * w @ bad @ w - b @ w + 0.0 * w.sum())
    assert torch.equal(w.detach(), before)
    assert torch.equal(next(iter(opt.state.values()))["subspace_direction"], prev)

"""LanczosNewton and LanczosSaddleFreeNewton against dense float64 closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim.flatten import flatten_tensors, unflatten_vector

F64 = torch.float64


class _Problem:
    """A tiny tanh MLP with cross-entropy on fixed data, as functions of the flat parameters."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(F64)
        self.x = torch.randn(12, 3, generator=gen, dtype=F64)
        self.y = torch.randint(0, 3, (12,), generator=gen)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = list(self.model.parameters())
        self.w0 = flatten_tensors([p.detach() for p in self.params]).clone()

    def outputs_of(self, w: torch.Tensor) -> torch.Tensor:
        state = dict(zip(self.names, unflatten_vector(w, self.params), strict=True))
        return functional_call(self.model, state, (self.x,))

    def loss_of(self, w: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.outputs_of(w), self.y)

    def closure(self) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(self.x)
        return nn.functional.cross_entropy(outputs, self.y), outputs

    def flat(self) -> torch.Tensor:
        return flatten_tensors([p.detach() for p in self.params])

    def curvature(self, w: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "hessian":
            return hessian(self.loss_of)(w)
        jac = jacrev(self.outputs_of)(w).reshape(-1, w.numel())
        out = self.outputs_of(w).detach()
        h_out = hessian(lambda o: nn.functional.cross_entropy(o.reshape(out.shape), self.y))(
            out.reshape(-1)
        )
        return jac.T @ h_out @ jac


def _expected_direction(c: torch.Tensor, g: torch.Tensor, delta: float, transform: str):
    lam, v = torch.linalg.eigh(c)
    if transform == "abs":
        f = 1.0 / (lam.abs() + delta)
        clipped = 0
    else:
        mask = lam <= -delta
        f = 1.0 / (torch.where(mask, torch.zeros_like(lam), lam) + delta)
        clipped = int(mask.sum())
    return v @ (f * (v.T @ g)), clipped


# Explicit cases: optimiser, curvature, lr, damping, weight decay.
ONE_STEP_CASES = {
    "newton-ggn": (LanczosNewton, "ggn", 0.8, 0.5, 0.0),
    "newton-hessian": (LanczosNewton, "hessian", 0.8, 0.5, 0.0),
    "newton-hessian-tiny-damping-clips": (LanczosNewton, "hessian", 0.5, 1e-3, 0.0),
    "newton-ggn-weight-decay": (LanczosNewton, "ggn", 1.0, 0.3, 0.1),
    "saddle-free-hessian": (LanczosSaddleFreeNewton, "hessian", 0.8, 0.5, 0.0),
    "saddle-free-hessian-tiny-damping": (LanczosSaddleFreeNewton, "hessian", 0.1, 1e-3, 0.0),
    "saddle-free-ggn": (LanczosSaddleFreeNewton, "ggn", 0.8, 0.5, 0.0),
    "saddle-free-hessian-weight-decay": (LanczosSaddleFreeNewton, "hessian", 1.0, 0.3, 0.05),
}


@pytest.mark.parametrize("block_size", [1, 3], ids=["lanczos", "block-3"])
@pytest.mark.parametrize("case", ONE_STEP_CASES, ids=list(ONE_STEP_CASES))
def test_one_full_krylov_step_matches_dense_closed_form(case: str, block_size: int) -> None:
    cls, curvature, lr, delta, wd = ONE_STEP_CASES[case]
    prob = _Problem()
    w0 = prob.w0
    p = w0.numel()
    g = torch.func.grad(prob.loss_of)(w0) + wd * w0
    c = prob.curvature(w0, curvature) + wd * torch.eye(p, dtype=F64)
    transform = "abs" if cls is LanczosSaddleFreeNewton else "newton"
    d, clipped = _expected_direction(c, g, delta, transform)
    if transform == "newton" and clipped == 0:  # the textbook form, where it applies
        d_solve = torch.linalg.solve(c + delta * torch.eye(p, dtype=F64), g)
        torch.testing.assert_close(d, d_solve, rtol=1e-9, atol=1e-12)
    opt = cls(
        prob.params,
        lr=lr,
        damping=delta,
        lanczos_steps=p,
        curvature=curvature,
        weight_decay=wd,
        max_step_norm=None,
        krylov_start="gradient",  # the gradient lies in the Krylov space: exact with m = P
        block_size=block_size,
        seed=0,
    )
    opt.step(prob.closure)
    torch.testing.assert_close(prob.flat(), w0 - lr * d, rtol=0, atol=1e-8)
    info = opt.last_info
    assert info.num_clipped == clipped
    if "clips" in case:
        assert clipped > 0
    assert info.krylov_fraction == pytest.approx(1.0, abs=1e-9)
    assert 0 < info.num_products <= p  # fewer when the Krylov space became invariant
    step = lr * d
    assert info.predicted_decrease == pytest.approx(
        float(g @ step - 0.5 * step @ c @ step), rel=1e-6
    )
    # p.grad holds the closure's gradient, without weight decay.
    grad = flatten_tensors([q.grad for q in prob.params])
    torch.testing.assert_close(grad, g - wd * w0, rtol=1e-12, atol=1e-12)


def test_momentum_acts_on_the_newton_direction() -> None:
    prob = _Problem(1)
    p, lr, delta, mu = prob.w0.numel(), 0.5, 0.5, 0.7
    opt = LanczosNewton(
        prob.params, lr=lr, damping=delta, lanczos_steps=p, momentum=mu, max_step_norm=None
    )
    w = prob.w0
    buf = None
    for _ in range(3):
        g = torch.func.grad(prob.loss_of)(w)
        d, _ = _expected_direction(prob.curvature(w, "ggn"), g, delta, "newton")
        buf = d if buf is None else mu * buf + d
        w = w - lr * buf
        opt.step(prob.closure)
    torch.testing.assert_close(prob.flat(), w, rtol=0, atol=1e-8)


def test_least_squares_ggn_reaches_the_minimiser_in_one_step() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=gen, dtype=F64)
    y = torch.randn(40, 2, generator=gen, dtype=F64)
    model = nn.Linear(5, 2).to(F64)
    opt = LanczosNewton(
        model.parameters(), lr=1.0, damping=1e-9, lanczos_steps=12, max_step_norm=None
    )

    def closure():
        outputs = model(x)
        return nn.functional.mse_loss(outputs, y), outputs

    opt.step(closure)
    design = torch.cat([x, torch.ones(40, 1, dtype=F64)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution  # [6, 2]
    torch.testing.assert_close(model.weight.detach(), solution[:5].T, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias.detach(), solution[5], rtol=0, atol=1e-6)


def _saddle(w: torch.Tensor) -> torch.Tensor:
    # Strict saddle at the origin; minima at (0, +-sqrt(2)) with value -1.
    return w[0] ** 2 - w[1] ** 2 + w[1] ** 4 / 4


def test_saddle_free_escapes_a_saddle_that_newton_is_attracted_to() -> None:
    start = torch.tensor([1.0, 1e-3], dtype=F64)
    # Plain Newton (dense, undamped) converges to the saddle.
    w = start.clone()
    for _ in range(10):
        w = w - torch.linalg.solve(hessian(_saddle)(w), torch.func.grad(_saddle)(w))
    assert float(w.abs().max()) < 1e-12
    # The saddle-free variant leaves it for the minimum.
    p = nn.Parameter(start.clone())
    opt = LanczosSaddleFreeNewton(
        [p], lr=1.0, damping=1e-4, lanczos_steps=2, max_step_norm=None, krylov_start="gradient"
    )
    for _ in range(30):
        opt.step(lambda: _saddle(p))
    torch.testing.assert_close(
        p.detach(), torch.tensor([0.0, math.sqrt(2.0)], dtype=F64), rtol=0, atol=1e-6
    )
    assert float(_saddle(p.detach())) == pytest.approx(-1.0, abs=1e-10)


def test_saddle_free_defaults_escape_the_strict_saddle() -> None:
    # The defaults (lr 0.1, damping 1, Hessian, random start, trust region 1): with P = 2 the
    # Krylov space is the whole space, so y grows by 1 + 0.1 * 2 / 3 per step near the saddle.
    p = nn.Parameter(torch.tensor([1.0, 1e-3], dtype=F64))
    opt = LanczosSaddleFreeNewton([p], seed=0)
    for _ in range(400):
        opt.step(lambda: _saddle(p))
    torch.testing.assert_close(
        p.detach(), torch.tensor([0.0, math.sqrt(2.0)], dtype=F64), rtol=0, atol=1e-6
    )


def _rosenbrock(w: torch.Tensor) -> torch.Tensor:
    return (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


@pytest.mark.parametrize("cls", [LanczosNewton, LanczosSaddleFreeNewton])
@pytest.mark.parametrize("start", [(-1.2, 1.0), (0.0, 1.0)], ids=["classic", "indefinite"])
def test_rosenbrock_converges(cls: type, start: tuple[float, float]) -> None:
    # From (0, 1) LanczosNewton clips the curvature -398 to zero and would take a gradient
    # step of size lr/damping = 100: the trust-region bound keeps it in range.
    p = nn.Parameter(torch.tensor(start, dtype=F64))
    opt = cls([p], lr=1.0, damping=1e-2, lanczos_steps=2, curvature="hessian", max_step_norm=1.0)
    opt.step(lambda: _rosenbrock(p))
    if start == (0.0, 1.0):  # the Hessian there is diag(-398, 200)
        assert float(opt.last_info.ritz_values[0]) == pytest.approx(-398.0, rel=1e-10)
        assert opt.last_info.num_clipped == (1 if cls is LanczosNewton else 0)
    for _ in range(100):
        opt.step(lambda: _rosenbrock(p))
    torch.testing.assert_close(p.detach(), torch.ones(2, dtype=F64), rtol=0, atol=1e-6)


def test_logistic_regression_on_digits_beats_sgd() -> None:
    # Full batch, so the curvature is exact and a small damping is safe (the mini-batch
    # defaults damp more; see benchmarks/optimizers.py). SGD gets the best of four rates.
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1.0)
    y = torch.tensor(data.target)
    steps = 10

    def train(make_opt, lanczos: bool) -> float:
        torch.manual_seed(0)
        model = nn.Linear(64, 10)
        opt = make_opt(model.parameters())
        for _ in range(steps):

            def closure():
                outputs = model(x)
                loss = nn.functional.cross_entropy(outputs, y)
                if lanczos:
                    return loss, outputs
                opt.zero_grad()
                loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x), y))

    sgd = min(
        train(lambda ps, lr=lr: torch.optim.SGD(ps, lr=lr, momentum=0.9), False)
        for lr in (0.1, 0.3, 1.0, 3.0)
    )
    newton = train(lambda ps: LanczosNewton(ps, lr=1.0, damping=1e-2, lanczos_steps=5), True)
    saddle_free = train(
        lambda ps: LanczosSaddleFreeNewton(
            ps, lr=1.0, damping=1e-2, lanczos_steps=5, krylov_start="gradient"
        ),
        True,
    )
    assert newton < 0.5 * sgd
    assert saddle_free < 0.5 * sgd


def test_block_products_are_vmapped_and_equal_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from lanczos_optim import _graph_products

    real_many = _graph_products.BatchedProduct.many
    passes: list[tuple[int, bool]] = []

    def run(vmapped: bool) -> torch.Tensor:
        def many(self, columns):
            self.vmapped = self.vmapped and vmapped  # False: the column-by-column fallback
            out = real_many(self, columns)
            passes.append((len(columns), self.vmapped))
            return out

        monkeypatch.setattr(_graph_products.BatchedProduct, "many", many)
        prob = _Problem()
        opt = LanczosNewton(prob.params, lanczos_steps=8, block_size=3, seed=0)
        opt.step(prob.closure)
        assert opt.last_info.num_products == 8
        return prob.flat()

    batched = run(True)
    # One vmapped pass per block, the last cut to the budget.
    assert passes == [(3, True), (3, True), (2, True)]
    passes.clear()
    looped = run(False)
    assert passes == [(3, False), (3, False), (2, False)]
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)

"""Adaptive (Levenberg-Marquardt) damping: the reduction ratio against closed forms, the rule,
its bounds, state_dict, the second batch, BatchNorm, random streams, refusals and faults."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim.optimizers._damping import DAMPING_MAX, DAMPING_MIN, next_damping

F64 = torch.float64
CLASSES = [LanczosNewton, LanczosSaddleFreeNewton]
P = 5


def _quadratic() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(P, P, generator=gen, dtype=F64)
    return a @ a.T + torch.eye(P, dtype=F64), torch.randn(P, generator=gen, dtype=F64)


def _exact(cls: type, w: nn.Parameter, **kwargs) -> torch.optim.Optimizer:
    """m = P, lr = 1, no bound: the exact damped Newton step."""
    hp = dict(lr=1.0, lanczos_steps=P, curvature="hessian", max_step_norm=None)
    return cls([w], adaptive_damping=True, **hp, **kwargs)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 4, generator=gen, dtype=F64), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(n)
    ]


def _closure(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    return closure


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_on_a_quadratic_rho_is_one_and_the_damping_shrinks_by_two_thirds(cls, weight_decay):
    a, b = _quadratic()
    w = nn.Parameter(torch.zeros(P, dtype=F64))
    opt = _exact(cls, w, weight_decay=weight_decay)
    expected = 1.0
    for _ in range(6):
        opt.step(lambda: 0.5 * w @ a @ w - b @ w)
        info = opt.last_info
        # The undamped model of a quadratic (its weight decay included) is the loss itself.
        assert info.rho == pytest.approx(1.0, abs=1e-8)
        assert info.damping == expected
        expected = expected * (2.0 / 3.0)
        assert info.next_damping == expected == opt.param_groups[0]["damping"]


def _cubic(a: torch.Tensor, b: torch.Tensor, c: float):
    return lambda v: 0.5 * v @ a @ v - b @ v + c * (v**3).sum()


@pytest.mark.parametrize("cls", CLASSES)
def test_a_poor_quadratic_model_gives_the_closed_form_rho_and_boosts(cls):
    a, b = _quadratic()
    w0 = torch.zeros(P, dtype=F64)
    # The cubic term (no gradient or curvature at 0) with the sign that raises the loss along
    # the step d = (A + 0.5 I)^-1 b, so the step overshoots what the model promised.
    d0 = torch.linalg.solve(a + 0.5 * torch.eye(P, dtype=F64), b)
    f = _cubic(a, b, 20.0 * float(torch.sign((d0**3).sum())))
    w = nn.Parameter(w0.clone())
    opt = _exact(cls, w, damping=0.5)
    opt.step(lambda: f(w))
    # Ground truth: dense Hessian at w0 (= A, positive definite), the damped Newton step.
    g = torch.func.grad(f)(w0)
    h = torch.func.hessian(f)(w0)
    d = torch.linalg.solve(h + 0.5 * torch.eye(P, dtype=F64), g)  # w0 - d = d0
    predicted = float(g @ d - 0.5 * d @ h @ d)
    rho = float(f(w0) - f(w0 - d)) / predicted
    info = opt.last_info
    assert rho < 0.25
    assert info.predicted_decrease == pytest.approx(predicted, rel=1e-10)
    assert info.rho == pytest.approx(rho, rel=1e-8)
    assert info.next_damping == 0.5 * 1.5 == opt.param_groups[0]["damping"]


def test_the_rule_and_its_bounds():
    assert next_damping(2.0, 0.5, False) == 2.0  # 1/4 <= rho <= 3/4: unchanged
    assert next_damping(2.0, 0.25, False) == 2.0
    assert next_damping(2.0, 0.75, False) == 2.0
    assert next_damping(2.0, 0.2, False) == 3.0
    assert next_damping(3.0, 0.8, False) == 2.0
    assert next_damping(2.0, math.nan, False) == 2.0  # no predicted decrease, no increase
    assert next_damping(2.0, math.nan, True) == 3.0  # loss up or not finite: boost
    assert next_damping(DAMPING_MAX, 0.0, True) == DAMPING_MAX
    assert next_damping(DAMPING_MIN, 1.0, False) == DAMPING_MIN


def test_the_damping_stays_within_its_bounds_in_a_run():
    a, b = _quadratic()
    w = nn.Parameter(torch.zeros(P, dtype=F64))
    opt = _exact(LanczosNewton, w, damping=2 * DAMPING_MIN)
    for _ in range(3):  # rho = 1 every step: shrinks to the floor and stays
        opt.step(lambda: 0.5 * w @ a @ w - b @ w)
    assert opt.param_groups[0]["damping"] == DAMPING_MIN
    calls = iter(range(100))

    def worse():  # a second batch whose loss only goes up
        return torch.tensor(float(next(calls)), dtype=F64)

    w2 = nn.Parameter(torch.zeros(P, dtype=F64))
    opt = _exact(LanczosNewton, w2, damping=DAMPING_MAX / 1.2)
    for _ in range(2):
        opt.step(lambda: 0.5 * w2 @ a @ w2 - b @ w2, rho_closure=worse)
        assert opt.last_info.rho < 0
    assert opt.param_groups[0]["damping"] == DAMPING_MAX


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LanczosNewton, {}),
        (LanczosNewton, dict(update_every=2, lanczos_steps=4, weight_decay=1e-2)),
        (LanczosSaddleFreeNewton, dict(damping=0.3)),
    ],
)
def test_state_dict_round_trip_continues_bit_for_bit(cls, kwargs):
    batches = _batches()
    model = _model()
    opt = cls(model.parameters(), adaptive_damping=True, **kwargs)
    for batch in batches[:2]:
        opt.step(_closure(model, batch))
    assert opt.param_groups[0]["damping"] != opt.defaults["damping"]  # it did adapt
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _model(seed=123)
    model2.load_state_dict(saved["model"])
    opt2 = cls(model2.parameters(), adaptive_damping=True, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for batch in batches[2:]:
        assert torch.equal(opt.step(_closure(model, batch)), opt2.step(_closure(model2, batch)))
        assert opt.last_info.rho == opt2.last_info.rho
        for p, q in zip(model.parameters(), model2.parameters(), strict=True):
            assert torch.equal(p, q)
    assert opt.state_dict()["param_groups"] == opt2.state_dict()["param_groups"]


def test_off_records_no_rho_and_keeps_the_damping():
    model = _model()
    opt = LanczosNewton(model.parameters(), damping=0.7)
    opt.step(_closure(model, _batches()[0]))
    assert math.isnan(opt.last_info.rho)
    assert opt.last_info.next_damping == 0.7 == opt.param_groups[0]["damping"]


def test_groups_share_the_damping_and_a_new_group_gets_the_one_in_force():
    model = _model()
    opt = LanczosNewton(model[0].parameters(), adaptive_damping=True)
    opt.step(_closure(model, _batches()[0]))  # model[2] gets no update: not optimised
    now = opt.param_groups[0]["damping"]
    assert now != 1.0
    opt.add_param_group({"params": model[2].parameters()})
    assert opt.param_groups[1]["damping"] == now
    opt.step(_closure(model, _batches()[1]))
    assert opt.param_groups[0]["damping"] == opt.param_groups[1]["damping"] != now
    assert math.isfinite(opt.last_info.predicted_decrease)  # one lr: a scalar model


# ----------------------------------------------------------------------------- the extra forward
@pytest.mark.parametrize("cls", CLASSES)
def test_rho_closure_gives_the_closed_form_rho_of_the_second_quadratic(cls):
    a, b = _quadratic()  # the step's "batch": f_a, whose model the step minimises
    gen = torch.Generator().manual_seed(7)
    m = torch.randn(P, P, generator=gen, dtype=F64)
    a2, b2 = m @ m.T + torch.eye(P, dtype=F64), torch.randn(P, generator=gen, dtype=F64)

    def f_a(v):
        return 0.5 * v @ a @ v - b @ v

    def f_b(v):  # the second "batch": another quadratic
        return 0.5 * v @ a2 @ v - b2 @ v

    w0 = torch.zeros(P, dtype=F64)
    w = nn.Parameter(w0.clone())
    opt = _exact(cls, w, damping=0.5)
    opt.step(lambda: f_a(w), rho_closure=lambda: f_b(w))
    # Ground truth: the damped Newton step on f_a (dense gradient and Hessian), its undamped
    # model's decrease, and the actual decrease of f_b over that step.
    g, h = torch.func.grad(f_a)(w0), torch.func.hessian(f_a)(w0)
    d = torch.linalg.solve(h + 0.5 * torch.eye(P, dtype=F64), g)
    predicted = float(g @ d - 0.5 * d @ h @ d)
    rho = float(f_b(w0) - f_b(w0 - d)) / predicted
    info = opt.last_info
    assert torch.allclose(w.detach(), w0 - d, rtol=0, atol=1e-10)
    assert info.predicted_decrease == pytest.approx(predicted, rel=1e-10)
    assert info.rho == pytest.approx(rho, rel=1e-8)
    assert abs(rho - 1.0) > 0.1  # f_a's own ratio is 1 (its model is exact): f_b's was used
    assert info.next_damping == next_damping(0.5, rho, rho < 0)


def test_rho_closure_is_used_before_and_after_the_step_instead_of_the_closure():
    model = _model()
    first, second = _batches()[:2]
    calls = {"closure": 0, "rho": 0}
    train = _closure(model, first)

    def closure():
        calls["closure"] += 1
        return train()

    def rho_closure():
        calls["rho"] += 1
        x, y = second
        return nn.functional.cross_entropy(model(x), y)

    def loss_b() -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(second[0]), second[1]))

    opt = LanczosNewton(model.parameters(), adaptive_damping=True, max_step_norm=None)
    before = loss_b()
    opt.step(closure, rho_closure=rho_closure)
    info = opt.last_info
    assert calls == {"closure": 1, "rho": 2}
    assert info.rho == pytest.approx((before - loss_b()) / info.predicted_decrease, rel=1e-12)


def test_the_same_batch_rho_uses_one_extra_forward_of_the_closure():
    model = _model()
    count = [0]
    inner = _closure(model, _batches()[0])

    def closure():
        count[0] += 1
        return inner()

    opt = LanczosNewton(model.parameters(), adaptive_damping=True)
    loss = float(opt.step(closure))
    with torch.no_grad():
        after = float(inner()[0])
    assert count[0] == 2
    assert opt.last_info.rho == pytest.approx((loss - after) / opt.last_info.predicted_decrease)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).to(F64)


@pytest.mark.parametrize("attach", [True, False])
def test_batchnorm_statistics_are_those_of_one_forward_with_attach(attach):
    model = _bn_model()
    reference = copy.deepcopy(model)
    x, y = _batches()[0]
    reference(x)  # the one forward of a step, in train mode
    opt = LanczosNewton(model.parameters(), adaptive_damping=True)
    if attach:
        opt.attach(model)
    opt.step(_closure(model, (x, y)))
    bn, ref = model[1], reference[1]
    same = torch.equal(bn.running_mean, ref.running_mean)
    assert same == torch.equal(bn.running_var, ref.running_var) == attach
    assert int(bn.num_batches_tracked) == (1 if attach else 2)


def test_the_extra_forward_replays_the_random_draws_and_leaves_the_user_stream():
    def run(adaptive: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = _model()
        draws: list[torch.Tensor] = []
        inner = _closure(model, _batches()[0])

        def closure():
            draws.append(torch.rand(3, dtype=F64))  # what dropout would draw
            return inner()

        torch.manual_seed(5)
        LanczosNewton(model.parameters(), adaptive_damping=adaptive).step(closure)
        return draws, torch.rand(3, dtype=F64)

    draws, after = run(True)
    plain, plain_after = run(False)
    assert len(draws) == 2
    assert torch.equal(draws[0], draws[1])  # the same dropout masks
    assert torch.equal(draws[0], plain[0])
    assert torch.equal(after, plain_after)  # the user's stream goes on as without


# ----------------------------------------------------------------------------- faults
def test_a_non_finite_loss_after_the_step_undoes_it_and_boosts():
    a, b = _quadratic()
    w = nn.Parameter(torch.zeros(P, dtype=F64))
    opt = _exact(LanczosNewton, w)
    closure = lambda: 0.5 * w @ a @ w - b @ w  # noqa: E731
    opt.step(closure)
    before = w.detach().clone()
    damping = opt.param_groups[0]["damping"]
    opt.step(closure, rho_closure=lambda: torch.tensor(math.nan, dtype=F64))
    assert torch.equal(w.detach(), before)
    assert math.isnan(opt.last_info.rho)
    assert "undone" in opt.last_info.reason
    assert opt.param_groups[0]["damping"] == damping * 1.5


def test_a_skipped_step_leaves_the_damping_unchanged():
    w = nn.Parameter(torch.ones(P, dtype=F64))
    opt = _exact(LanczosNewton, w, damping=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(lambda: (w * math.nan).sum())
    assert opt.last_info.skipped
    assert opt.param_groups[0]["damping"] == 0.7 == opt.last_info.next_damping


# ----------------------------------------------------------------------------- refusals
ERRORS = {
    "not-a-bool": (dict(adaptive_damping="yes"), r"Invalid adaptive_damping value: 'yes'"),
    "below-the-floor": (
        dict(adaptive_damping=True, damping=1e-6),
        r"Invalid damping value: 1e-06 \(with adaptive_damping=True",
    ),
    "above-the-ceiling": (dict(adaptive_damping=True, damping=1e5), r"lie in \[0.0001, 10000"),
    "momentum": (dict(adaptive_damping=True, momentum=0.9), r"Invalid momentum value: 0.9"),
}


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_constructor_errors(cls, case):
    kwargs, pattern = ERRORS[case]
    with pytest.raises(ValueError, match=pattern):
        cls(_model().parameters(), **kwargs)


def _unchanged(model: nn.Module, fn) -> None:
    before = [p.detach().clone() for p in model.parameters()]
    fn()
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_the_backward_protocol_is_refused_in_one_line():
    model = _model()
    opt = LanczosNewton(model.parameters(), adaptive_damping=True).attach(model)
    closure = _closure(model, _batches()[0])

    def backward_only():
        closure()[0].backward(create_graph=True)
        opt.step()

    def lightning_closure():
        loss = closure()[0]
        loss.backward(create_graph=True)
        return loss

    for run in (backward_only, lambda: opt.step(lightning_closure)):
        with pytest.raises(RuntimeError, match=r"adaptive_damping=True needs the closure protocol"):
            _unchanged(model, run)


def test_step_errors_leave_the_parameters():
    model = _model()
    closure = _closure(model, _batches()[0])
    off = LanczosNewton(model.parameters())
    with pytest.raises(ValueError, match="rho_closure is only used with adaptive_damping=True"):
        _unchanged(model, lambda: off.step(closure, rho_closure=closure))
    on = LanczosNewton(model.parameters(), adaptive_damping=True)
    with pytest.raises(TypeError, match="rho_closure must be callable; got 3"):
        _unchanged(model, lambda: on.step(closure, rho_closure=3))
    on.param_groups[0]["momentum"] = 0.5  # e.g. a momentum schedule
    with pytest.raises(ValueError, match=r"Invalid momentum value: 0\.5"):
        _unchanged(model, lambda: on.step(closure))
    groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}]
    split = LanczosNewton(groups, adaptive_damping=True)
    with pytest.raises(ValueError, match=r"one lr in all parameter groups; got \[0.5, 1.0\]"):
        _unchanged(model, lambda: split.step(closure))

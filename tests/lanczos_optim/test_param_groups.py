"""Parameter groups: one eigenbasis, per-group lr and weight decay, against a closed form."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton

F64 = torch.float64


class _Quadratic:
    """``L(w) = 1/2 w^T A w - c^T w`` with ``w = (a, b)`` in two parameters."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        m = torch.randn(5, 5, generator=gen, dtype=F64)
        self.A = m @ m.T + 0.5 * torch.eye(5, dtype=F64)
        self.c = torch.randn(5, generator=gen, dtype=F64)
        self.a = nn.Parameter(torch.randn(3, generator=gen, dtype=F64))
        self.b = nn.Parameter(torch.randn(2, generator=gen, dtype=F64))
        self.w0 = self.flat().clone()

    def flat(self) -> torch.Tensor:
        return torch.cat([self.a.detach(), self.b.detach()])

    def loss(self) -> torch.Tensor:
        w = torch.cat([self.a, self.b])
        return 0.5 * w @ self.A @ w - self.c @ w

    def expected(self, lrs: tuple[float, float], wds: tuple[float, float], delta: float):
        lam = torch.tensor([wds[0]] * 3 + [wds[1]] * 2, dtype=F64)
        eta = torch.tensor([lrs[0]] * 3 + [lrs[1]] * 2, dtype=F64)
        w = self.w0
        g = self.A @ w - self.c + lam * w
        d = torch.linalg.solve(self.A + torch.diag(lam) + delta * torch.eye(5, dtype=F64), g)
        return w - eta * d


KW = dict(curvature="hessian", lanczos_steps=5, damping=0.3, max_step_norm=None)
GROUP_CASES = {
    "lr-and-decay-differ": ((0.5, 0.2), (0.1, 0.0)),
    "only-lr-differs": ((0.5, 0.2), (0.05, 0.05)),
    "only-decay-differs-hf-style": ((1.0, 1.0), (0.1, 0.0)),
}


@pytest.mark.parametrize("cls", [LanczosNewton, LanczosSaddleFreeNewton])
@pytest.mark.parametrize("protocol", ["closure", "backward"])
@pytest.mark.parametrize("case", GROUP_CASES, ids=list(GROUP_CASES))
def test_two_groups_match_the_closed_form(cls: type, protocol: str, case: str) -> None:
    lrs, wds = GROUP_CASES[case]
    q = _Quadratic()
    groups = [
        {"params": [q.a], "lr": lrs[0], "weight_decay": wds[0]},
        {"params": [q.b], "lr": lrs[1], "weight_decay": wds[1]},
    ]
    opt = cls(groups, **KW)  # A + Lambda is positive definite: saddle-free = Newton
    if protocol == "closure":
        opt.step(q.loss)
    else:
        q.loss().backward(create_graph=True)
        opt.step()
    torch.testing.assert_close(q.flat(), q.expected(lrs, wds, 0.3), rtol=0, atol=1e-10)
    if lrs[0] != lrs[1]:
        assert math.isnan(opt.last_info.predicted_decrease)
    else:
        assert math.isfinite(opt.last_info.predicted_decrease)


def test_add_param_group_equals_two_groups_at_construction() -> None:
    q = _Quadratic()
    opt = LanczosNewton([q.a], lr=0.5, weight_decay=0.1, **KW)
    opt.add_param_group({"params": [q.b], "lr": 0.2, "weight_decay": 0.0})
    opt.step(q.loss)
    torch.testing.assert_close(
        q.flat(), q.expected((0.5, 0.2), (0.1, 0.0), 0.3), atol=1e-10, rtol=0
    )


def test_per_group_scheduler_sets_each_groups_lr() -> None:
    q = _Quadratic()
    groups = [{"params": [q.a]}, {"params": [q.b]}]
    opt = LanczosNewton(groups, lr=1.0, **KW)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda k: 0.5, lambda k: 0.2])
    opt.step(q.loss)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.2]
    torch.testing.assert_close(
        q.flat(), q.expected((0.5, 0.2), (0.0, 0.0), 0.3), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("damping", 0.5),
        ("lanczos_steps", 3),
        ("curvature", "ggn"),
        ("momentum", 0.5),
        ("max_step_norm", 2.0),
        ("krylov_start", "random"),
    ],
)
def test_shared_options_are_refused_per_group(key: str, value: object) -> None:
    q = _Quadratic()
    with pytest.raises(ValueError, match=f"parameter group 1 sets {key}=") as err:
        LanczosNewton([{"params": [q.a]}, {"params": [q.b], key: value}], **KW)
    assert "only lr and weight_decay may differ per group" in str(err.value)


def test_a_group_changed_after_construction_is_refused_at_the_step() -> None:
    q = _Quadratic()
    opt = LanczosNewton([{"params": [q.a]}, {"params": [q.b]}], **KW)
    opt.param_groups[1]["damping"] = 2.0
    with pytest.raises(ValueError, match=r"group 1 sets damping=2\.0 but group 0 has 0\.3"):
        opt.step(q.loss)
    torch.testing.assert_close(q.flat(), q.w0, rtol=0, atol=0)


def test_state_dict_round_trip_with_two_groups() -> None:
    q = _Quadratic()
    groups = [{"params": [q.a], "lr": 0.5}, {"params": [q.b], "weight_decay": 0.1}]
    opt = LanczosNewton(groups, momentum=0.5, **KW)
    opt.step(q.loss)
    q2 = _Quadratic()
    opt2 = LanczosNewton([{"params": [q2.a]}, {"params": [q2.b]}], momentum=0.5, **KW)
    with torch.no_grad():
        q2.a.copy_(q.a)
        q2.b.copy_(q.b)
    opt2.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [0.5, 1.0]
    opt.step(q.loss)
    opt2.step(q2.loss)
    assert torch.equal(q.flat(), q2.flat())


def test_cycled_momentum_warns_once_and_is_applied() -> None:
    q = _Quadratic()
    opt = LanczosNewton([q.a, q.b], **KW)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.step(q.loss)
            sched.step()
    assert sum("cycle_momentum" in str(w.message) for w in record) == 1
    assert opt.param_groups[0]["momentum"] > 0.8
    assert "momentum_buffer" in opt.state[q.a]


def test_scheduler_without_momentum_cycle_is_silent() -> None:
    q = _Quadratic()
    opt = LanczosNewton([q.a, q.b], **KW)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.5, total_steps=10, cycle_momentum=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.step(q.loss)
            sched.step()
    assert opt.param_groups[0]["momentum"] == 0.0

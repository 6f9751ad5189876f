"""step(closure, curvature_closure=...): the gradient of the batch, the curvature of a sub-batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim.flatten import flatten_tensors
from tests.lanczos_optim.test_optimizer_krylov_size import _batch, _model, dense_ggn_and_gradient

F64 = torch.float64


def _closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, calls: list[int] | None = None):
    def closure() -> tuple[torch.Tensor, torch.Tensor]:
        if calls is not None:
            calls.append(len(x))
        out = model(x)
        return nn.functional.cross_entropy(out, y), out

    return closure


def _flat(model: nn.Module) -> torch.Tensor:
    return flatten_tensors([p.detach() for p in model.parameters()])


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_step_uses_the_sub_batch_curvature_and_the_full_gradient(curvature: str) -> None:
    model, (x, y) = _model(), _batch(16)
    xs, ys = x[:4], y[:4]
    ggn_sub, _ = dense_ggn_and_gradient(model, xs, ys)
    _, g_full = dense_ggn_and_gradient(model, x, y)
    if curvature == "hessian":  # the dense Hessian of the sub-batch's loss
        names = [n for n, _ in model.named_parameters()]
        shapes = [p.shape for p in model.parameters()]

        def sub_loss(w: torch.Tensor) -> torch.Tensor:
            parts, start = {}, 0
            for name, shape in zip(names, shapes, strict=True):
                parts[name] = w[start : start + shape.numel()].reshape(shape)
                start += shape.numel()
            out = torch.func.functional_call(model, parts, (xs,))
            return nn.functional.cross_entropy(out, ys)

        ggn_sub = torch.func.hessian(sub_loss)(_flat(model))
    p, delta = len(g_full), 2.0  # damping above |lambda_min|: nothing clipped in the Hessian
    w0 = _flat(model)
    opt = LanczosNewton(
        model.parameters(), lanczos_steps=p, damping=delta, max_step_norm=None, curvature=curvature
    )
    sub = _closure(model, xs, ys)
    loss_only = lambda: sub()[0]  # noqa: E731
    opt.step(_closure(model, x, y), curvature_closure=sub if curvature == "ggn" else loss_only)
    expected = w0 - torch.linalg.solve(ggn_sub + delta * torch.eye(p, dtype=F64), g_full)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-8, atol=1e-10)
    # p.grad holds the full batch's gradient, as without curvature_closure.
    torch.testing.assert_close(flatten_tensors([q.grad for q in model.parameters()]), g_full)


@pytest.mark.parametrize(
    ("complement", "calls", "products"),
    [("damped", 3, 4), ("augment", 5, 4)],  # augment: the reuse steps' complement product too
)
def test_sub_closure_runs_once_per_step_that_needs_curvature(
    complement: str, calls: int, products: int
) -> None:
    model, (x, y) = _model(), _batch(16)
    main, sub = [], []
    opt = LanczosNewton(
        model.parameters(), lanczos_steps=4, update_every=2, reuse_complement=complement
    )
    for _ in range(5):
        opt.step(_closure(model, x, y, main), curvature_closure=_closure(model, x[:4], y[:4], sub))
    assert len(main) == 5
    assert sub == [4] * calls  # steps 1, 3 and 5 compute a fresh basis
    assert opt.last_info.num_products == products


def test_same_batch_as_sub_closure_gives_the_ordinary_step() -> None:
    x, y = _batch(16)
    runs = []
    for use_sub in (False, True):
        model = _model()
        opt = LanczosNewton(model.parameters(), lanczos_steps=5)
        for _ in range(2):
            kw = {"curvature_closure": _closure(model, x, y)} if use_sub else {}
            opt.step(_closure(model, x, y), **kw)
        runs.append(_flat(model))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-10, atol=1e-12)


def test_backward_protocol_takes_the_sub_batch_curvature_too() -> None:
    x, y = _batch(16)
    results = []
    for protocol in ("closure", "backward"):
        model = _model()
        opt = LanczosNewton(model.parameters(), lanczos_steps=6).attach(model)
        sub = _closure(model, x[:5], y[:5])
        if protocol == "closure":
            opt.step(_closure(model, x, y), curvature_closure=sub)
        else:
            nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
            opt.step(curvature_closure=sub)
        results.append(_flat(model))
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).to(F64)


def test_attached_model_keeps_its_running_statistics() -> None:
    x, y = _batch(16)
    reference = _bn_model()
    reference(x)  # the step's one main forward pass in train mode
    expected = [b.clone() for b in reference.buffers()]
    for attach in (True, False):
        model = _bn_model()
        opt = LanczosNewton(model.parameters(), lanczos_steps=3)
        if attach:
            opt.attach(model)
        opt.step(_closure(model, x, y), curvature_closure=_closure(model, x[:6], y[:6]))
        same = all(torch.equal(a, b) for a, b in zip(model.buffers(), expected, strict=True))
        assert same == attach  # without attach the sub-batch's forward updates them as well


def test_attached_model_gives_the_sub_closure_outputs_for_the_ggn() -> None:
    x, y = _batch(16)
    steps = []
    for loss_only in (False, True):
        model = _model()
        opt = LanczosNewton(model.parameters(), lanczos_steps=5).attach(model)
        sub = _closure(model, x[:4], y[:4])

        def first(sub: Any = sub) -> torch.Tensor:
            return sub()[0]

        opt.step(_closure(model, x, y), curvature_closure=first if loss_only else sub)
        steps.append(_flat(model))
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-12, atol=1e-14)


def _backward_in_sub(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    def sub() -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return sub


@pytest.mark.parametrize(
    ("make_sub", "error", "match"),
    [
        (lambda m, x, y: 3, TypeError, r"curvature_closure must be None or a callable; got int"),
        (
            lambda m, x, y: lambda: nn.functional.cross_entropy(m(x), y),
            RuntimeError,
            r"curvature_closure: .*return \(loss, outputs\)",
        ),
        (_backward_in_sub, RuntimeError, r"curvature_closure: .*called backward\(\)"),
        (
            lambda m, x, y: lambda: nn.functional.cross_entropy(m(x), y).detach(),
            RuntimeError,
            r"curvature_closure: .*no autograd graph",
        ),
    ],
)
def test_bad_sub_closure_is_refused_and_nothing_changes(make_sub, error, match) -> None:
    model, (x, y) = _model(), _batch(16)
    w0 = _flat(model)
    opt = LanczosNewton(model.parameters(), lanczos_steps=3)
    with pytest.raises(error, match=match):
        opt.step(_closure(model, x, y), curvature_closure=make_sub(model, x[:4], y[:4]))
    assert torch.equal(_flat(model), w0)
    assert opt.state_dict()["state"].get(0, {}).get("step", 0) == 0
    if error is RuntimeError and "backward" not in match:
        assert all(q.grad is None for q in model.parameters())


def test_saddle_free_takes_a_curvature_closure() -> None:
    model, (x, y) = _model(), _batch(16)
    opt = LanczosSaddleFreeNewton(model.parameters(), lanczos_steps=4, seed=0)
    calls: list[int] = []
    sub = _closure(model, x[:4], y[:4], calls)
    opt.step(lambda: nn.functional.cross_entropy(model(x), y), curvature_closure=lambda: sub()[0])
    assert calls == [4]
    assert opt.last_info.num_products == 4

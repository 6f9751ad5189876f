"""The backward protocol: ``loss.backward(create_graph=True); optimizer.step()``.

Every case is compared with the closure protocol on the same batch (float64): the curvature from
the gradients' graph or from the recorded outputs must give the same step.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton

F64 = torch.float64
CLASSES = [LanczosNewton, LanczosSaddleFreeNewton]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)


def _batch(seed: int = 1, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _closure_run(cls: type, curvature: str, steps: int, **kw: object) -> torch.Tensor:
    model = _model()
    opt = cls(model.parameters(), curvature=curvature, **kw)
    for k in range(steps):
        x, y = _batch(k)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y):
            out = model(x)
            return nn.functional.cross_entropy(out, y), out

        opt.step(closure)
    return _flat(model)


def _backward_run(
    cls: type, curvature: str, steps: int, micro: int = 1, **kw: object
) -> torch.Tensor:
    model = _model()
    opt = cls(model.parameters(), curvature=curvature, **kw)
    if curvature == "ggn":
        opt.attach(model)
    for k in range(steps):
        x, y = _batch(k)
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            loss = nn.functional.cross_entropy(model(xs), ys) / micro
            loss.backward(create_graph=True)
        assert opt.step() is None
        opt.zero_grad()
    return _flat(model)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_backward_protocol_takes_the_closure_protocol_step(cls: type, curvature: str) -> None:
    kw = dict(lanczos_steps=6, damping=0.5, lr=0.5, weight_decay=1e-2, momentum=0.3)
    reference = _closure_run(cls, curvature, 20, **kw)
    backward = _backward_run(cls, curvature, 20, **kw)
    assert torch.equal(backward, reference)  # bit for bit: the same products on the same graph


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_accumulated_micro_batches_take_the_full_batch_step(curvature: str) -> None:
    kw = dict(lanczos_steps=8, damping=0.5, max_step_norm=None)
    reference = _closure_run(LanczosNewton, curvature, 3, **kw)
    accumulated = _backward_run(LanczosNewton, curvature, 3, micro=2, **kw)
    torch.testing.assert_close(accumulated, reference, rtol=0, atol=1e-8)


def test_clipping_scales_the_gradient_of_the_backward_protocol() -> None:
    # With m = P Lanczos steps the direction (C + delta I)^-1 g is linear in g: clipping the
    # gradient by c must scale the step by c.
    moves = []
    for clip in (None, 0.05):
        model = _model()
        w0 = _flat(model)
        opt = LanczosNewton(model.parameters(), curvature="hessian", lanczos_steps=43)
        opt.max_step_norm = None
        opt.param_groups[0]["max_step_norm"] = None
        x, y = _batch()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
        if clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        opt.step()
        moves.append(_flat(model) - w0)
    assert norm > 0.05
    torch.testing.assert_close(moves[1], moves[0] * (0.05 / norm), rtol=1e-5, atol=1e-9)


def test_a_closure_that_runs_backward_with_a_graph_works_like_lightning() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters(), lanczos_steps=6).attach(model)
    x, y = _batch()

    def lightning_like():  # training_step, zero_grad, backward; returns the detached loss
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward(create_graph=True)
        return loss.detach()

    first = opt.step(lightning_like)
    for _ in range(3):
        last = opt.step(lightning_like)
    assert float(last) < float(first)
    assert opt.last_info.loss == pytest.approx(float(last))
    assert all(p.grad is not None and p.grad.grad_fn is None for p in model.parameters())


def _before(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model: nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before, strict=True))


def test_plain_backward_then_step_names_create_graph() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters())
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    before = _before(model)
    with pytest.raises(RuntimeError, match=r"call loss.backward\(create_graph=True\)") as err:
        opt.step()
    assert "\n" not in str(err.value)
    assert _unchanged(model, before)


def test_ggn_without_outputs_names_attach() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters())
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    before = _before(model)
    with pytest.raises(RuntimeError, match=r"call optimizer.attach\(model\) once"):
        opt.step()
    assert _unchanged(model, before)


def test_attach_serves_a_closure_that_returns_only_the_loss() -> None:
    reference = _closure_run(LanczosNewton, "ggn", 3, lanczos_steps=5)
    model = _model()
    opt = LanczosNewton(model.parameters(), lanczos_steps=5).attach(model)
    for k in range(3):
        x, y = _batch(k)
        opt.step(lambda x=x, y=y: nn.functional.cross_entropy(model(x), y))
    torch.testing.assert_close(_flat(model), reference, rtol=0, atol=0)
    opt.detach()
    with pytest.raises(RuntimeError, match="needs the model outputs"):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))


def test_hf_style_outputs_give_their_logits() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.net(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    reference = _closure_run(LanczosNewton, "ggn", 2, lanczos_steps=5)
    model = Wrapped()
    opt = LanczosNewton(model.parameters(), lanczos_steps=5).attach(model)
    for k in range(2):
        x, y = _batch(k)
        model(x, labels=y)["loss"].backward(create_graph=True)
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close(_flat(model.net), reference, rtol=0, atol=1e-12)


def test_step_without_anything_still_asks_for_a_closure() -> None:
    with pytest.raises(RuntimeError, match="requires a closure"):
        LanczosNewton(_model().parameters()).step()


def test_no_warning_in_the_backward_protocol() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters(), lanczos_steps=3, curvature="hessian")
    x, y = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
        opt.step()

"""torch.compile'd models: compiled forward and gradient, eager curvature products.

``backend="aot_eager"`` has the same autograd limitation as inductor (no double backward) and
needs no C++ compiler, so the tests stay fast on any CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton

F64 = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(F64)


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(32, 6, generator=gen, dtype=F64), torch.randint(0, 3, (32,), generator=gen))
        for _ in range(n)
    ]


def _eager_reference() -> nn.Module:
    model = _model()
    opt = LanczosNewton(model.parameters(), lanczos_steps=8)
    for x, y in _batches():

        def closure(x: torch.Tensor = x, y: torch.Tensor = y):
            out = model(x)
            return nn.functional.cross_entropy(out, y), out

        opt.step(closure)
    return model


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]


@pytest.mark.parametrize("protocol", ["closure", "backward"])
def test_a_compiled_model_takes_the_eager_steps(protocol: str) -> None:
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model, backend="aot_eager")
    opt = LanczosNewton(model.parameters(), lanczos_steps=8).attach(compiled)
    for x, y in _batches():
        if protocol == "closure":

            def closure(x: torch.Tensor = x, y: torch.Tensor = y):
                out = compiled(x)
                return nn.functional.cross_entropy(out, y), out

            opt.step(closure)
        else:
            nn.functional.cross_entropy(compiled(x), y).backward(create_graph=True)
            opt.step()
            opt.zero_grad()
    # Same parameters and BatchNorm statistics (updated once per step, by the user's forward).
    for a, b in zip(_state(model), _state(_eager_reference()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_hessian_of_a_compiled_model_names_the_ggn() -> None:
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model, backend="aot_eager")
    opt = LanczosNewton(model.parameters(), curvature="hessian", lanczos_steps=4)
    x, y = _batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"use curvature='ggn' with optimizer.attach"):
        opt.step(lambda: nn.functional.cross_entropy(compiled(x), y))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))

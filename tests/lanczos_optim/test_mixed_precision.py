"""Mixed precision: the user's autocast stays in the closure; GradScaler divided out or refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    return model, x, y


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_the_optimisers_arithmetic_runs_outside_a_user_autocast() -> None:
    results, seen = [], []
    for around in (False, True):
        model, x, y = _setup()
        opt = LanczosNewton(model.parameters(), lanczos_steps=6)

        def closure(model: nn.Module = model, x: torch.Tensor = x, y: torch.Tensor = y):
            seen.append(torch.is_autocast_enabled("cpu"))
            with torch.autocast("cpu", enabled=False):  # a float32 graph either way
                out = model(x)
                return nn.functional.cross_entropy(out, y), out

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=around):
            for _ in range(3):
                opt.step(closure)
        results.append(_flat(model))
    assert seen == [False] * 3 + [True] * 3  # the closure still runs under the user's autocast
    assert torch.equal(results[0], results[1])


def test_bf16_autocast_with_outputs_cast_to_float32_trains() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4)

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).float()
        return nn.functional.cross_entropy(out, y), out

    first = float(opt.step(closure))
    for _ in range(4):
        last = float(opt.step(closure))
    assert last < first
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_outputs_cast_after_the_loss_give_the_ggn_of_the_uncast_outputs() -> None:
    # float64 model, outputs returned cast to float32: the GGN through the cast equals the GGN
    # of the outputs the loss used, up to float32 rounding of the products.
    results = []
    for cast in (False, True):
        model, x, y = _setup()
        model = model.double()
        opt = LanczosNewton(model.parameters(), lanczos_steps=8, max_step_norm=None)

        def closure(model: nn.Module = model, cast: bool = cast, x=x, y=y):
            out = model(x.double())
            loss = nn.functional.cross_entropy(out, y)
            return loss, (out.float() if cast else out)

        opt.step(closure)
        results.append(_flat(model))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_bf16_outputs_cast_after_the_loss_train() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4)

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
        return loss, out.float()

    first = float(opt.step(closure))
    for _ in range(4):
        last = float(opt.step(closure))
    assert last < first


def test_outputs_cast_from_another_tensor_name_the_fix() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4)

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = nn.functional.cross_entropy(model(x + 1), y)
        return loss, out.float()

    with pytest.raises(
        RuntimeError, match=r"cast before the loss \(outputs = model\(x\).float\(\)"
    ):
        opt.step(closure)


def test_a_closure_returning_a_scaled_loss_is_refused() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4)
    scaler = torch.amp.GradScaler("cpu")

    def closure():
        out = model(x)
        return scaler.scale(nn.functional.cross_entropy(out, y)), out

    before = _flat(model)
    with pytest.raises(RuntimeError, match=r"scaled by a GradScaler \(scale 65536.0\).*bf16"):
        opt.step(closure)
    assert torch.equal(_flat(model), before)


def _scaled_backward_steps(use_scaler: bool, steps: int = 3) -> torch.Tensor:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=6).attach(model)
    scaler = torch.amp.GradScaler("cpu", enabled=use_scaler)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward(create_graph=True)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    return _flat(model)


def test_grad_scaler_in_the_backward_protocol_is_divided_out() -> None:
    # Scaling by a power of two is exact in floating point: the same steps as without.
    torch.testing.assert_close(
        _scaled_backward_steps(True), _scaled_backward_steps(False), rtol=1e-6, atol=1e-7
    )


def test_grad_scaler_skips_a_step_with_inf_gradients_and_backs_off() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4).attach(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = _flat(model)
    loss = nn.functional.cross_entropy(model(x), y) * 1e36  # overflows once scaled
    scaler.scale(loss).backward(create_graph=True)
    scaler.step(opt)
    scaler.update()
    assert torch.equal(_flat(model), before)
    assert opt.last_info.skipped
    assert scaler.get_scale() == 2.0**15


def test_unscale_before_step_is_refused() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), curvature="hessian", lanczos_steps=4)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward(create_graph=True)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"unscale_.*max_step_norm.*bf16"):
        scaler.step(opt)


def test_grad_scaler_with_a_closure_names_bf16() -> None:
    model, x, y = _setup()
    opt = LanczosNewton(model.parameters(), lanczos_steps=4)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(x).sum()).backward()  # GradScaler checks p.grad before it calls step

    def closure():
        out = model(x)
        return nn.functional.cross_entropy(out, y), out

    with pytest.raises(RuntimeError, match=r"under a GradScaler: use bf16 autocast"):
        scaler.step(opt, closure)  # Accelerate passes the closure positionally

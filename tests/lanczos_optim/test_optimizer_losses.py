"""The optimisers' closure protocol with log-softmax + NLL, linear losses and dict outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lanczos_optim import GGNOperator, LanczosNewton


def _setup() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return model, torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))


def _opt(model: nn.Module) -> LanczosNewton:
    p = sum(q.numel() for q in model.parameters())
    return LanczosNewton(model.parameters(), lr=1.0, damping=1e-3, lanczos_steps=p)


def test_log_softmax_nll_gets_the_softmax_ggn() -> None:
    model, x, y = _setup()
    dense = GGNOperator(model, nn.CrossEntropyLoss(), (x, y)) @ torch.eye(43, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(dense)
    opt = _opt(model)

    def closure() -> tuple[Tensor, Tensor]:
        out = F.log_softmax(model(x), dim=1)
        return F.nll_loss(out, y), out

    opt.step(closure)
    ritz = opt.last_info.ritz_values  # type: ignore[union-attr]
    assert float(ritz.max()) == pytest.approx(float(exact.max()), rel=1e-8)
    assert float(ritz.max()) > 1e-3  # not the silent zero curvature of before


def test_zero_ggn_of_a_loss_linear_in_raw_outputs_warns() -> None:
    # The closure gives no loss function: a linear loss and a Huber loss past delta look alike,
    # and the zero GGN of the latter is true; the step is taken with a warning.
    model, x, y = _setup()
    opt = _opt(model)

    def closure() -> tuple[Tensor, Tensor]:
        out = model(x)
        return -out.gather(1, y[:, None]).mean(), out

    with pytest.warns(RuntimeWarning, match="linear in the model's outputs"):
        opt.step(closure)
    assert float(opt.last_info.ritz_values.abs().max()) == 0.0  # type: ignore[union-attr]


def test_dict_outputs_use_their_logits() -> None:
    steps = []
    for wrap in (lambda o: o, lambda o: {"logits": o, "hidden": o.detach()}):
        model, x, y = _setup()
        opt = _opt(model)

        def closure(model=model, x=x, y=y, wrap=wrap) -> tuple[Tensor, object]:
            out = model(x)
            return F.cross_entropy(out, y), wrap(out)

        opt.step(closure)
        steps.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.allclose(steps[0], steps[1], rtol=1e-12, atol=1e-14)


def test_tuple_outputs_are_refused_naming_the_fix() -> None:
    model, x, y = _setup()
    opt = _opt(model)

    def closure() -> tuple[Tensor, object]:
        out = model(x)
        return F.cross_entropy(out, y), (out, out)

    with pytest.raises(RuntimeError, match="logits") as info:
        opt.step(closure)
    message = str(info.value)
    assert "\n" not in message
    assert "outputs=" not in message  # the optimisers have no outputs= keyword to pass
    assert "Return (loss, logits)" in message


def test_loss_of_no_parameter_warns_once() -> None:
    model, _, _ = _setup()
    opt = LanczosNewton(
        model.parameters(), lr=1.0, damping=1.0, lanczos_steps=2, curvature="hessian"
    )
    free = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            opt.step(lambda: (free**2).sum())
    found = [w for w in caught if "depends on none" in str(w.message)]
    assert len(found) == 1
    assert opt.last_info.reason == "no parameter received a gradient"  # type: ignore[union-attr]

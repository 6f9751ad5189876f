"""Learning-rate schedules: equation 11 by hand, the LambdaLR wrapping, names, state_dict."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from diagnostics.training.schedules import SCHEDULES, build_schedule, cosine_factor, linear_factor


def _optimizer(lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr, momentum=0.9)


def _lrs(name: str, epochs: int, lr: float = 0.05, **kwargs: float) -> list[float]:
    """The learning rate used during each epoch 0..epochs-1 (scheduler stepped once per epoch)."""
    opt = _optimizer(lr)
    sched = build_schedule(name, opt, epochs=epochs, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step()  # no optimiser step needed to read the schedule
    return out


# Equation 11 with T = 300, r = 0.01, alpha0 = 0.05, worked by hand:
#   t = 150: t/T = 0.5            -> alpha0                               = 0.05
#   t = 151: t/T = 0.50333...     -> 1 - 0.99 * 0.00333.../0.4 = 0.99175  -> 0.0495875
#   t = 210: t/T = 0.7            -> 1 - 0.99 * 0.5 = 0.505               -> 0.02525
#   t = 270: t/T = 0.9            -> 1 - 0.99 * 1.0 = 0.01                -> 0.0005
#   t = 271: t/T > 0.9            -> r                                    -> 0.0005
_HAND = {0: 0.05, 100: 0.05, 150: 0.05, 151: 0.0495875, 210: 0.02525, 270: 0.0005, 271: 0.0005}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_linear_schedule_matches_equation_11_by_hand() -> None:
    lrs = _lrs("linear", 300, lr=0.05, ratio=0.01)
    for epoch, expected in _HAND.items():
        assert lrs[epoch] == pytest.approx(expected, rel=1e-12, abs=1e-15), epoch
    assert lrs[-1] == pytest.approx(0.0005)
    # Monotone non-increasing, flat on both ends.
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert len(set(lrs[:151])) == 1


def test_linear_factor_short_budget() -> None:
    # T = 10, r = 0.1: t = 6 -> 1 - 0.9 * 0.1/0.4 = 0.775; t = 8 -> 1 - 0.9 * 0.75 = 0.325.
    assert [linear_factor(t, 10, 0.1) for t in (5, 6, 8, 9, 10)] == pytest.approx(
        [1.0, 0.775, 0.325, 0.1, 0.1]
    )


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_cosine_and_constant() -> None:
    lrs = _lrs("cosine", 4, lr=1.0)
    assert lrs == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, 0.1464466094])
    assert cosine_factor(10, 10, 0.2) == pytest.approx(0.2)
    assert cosine_factor(15, 10, 0.2) == pytest.approx(0.2)  # clamps after the budget
    assert _lrs("constant", 3, lr=0.3) == [0.3, 0.3, 0.3]


def test_state_dict_round_trips_with_weights_only() -> None:
    opt = _optimizer()
    sched = build_schedule("linear", opt, epochs=10, ratio=0.2)
    for _ in range(7):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = _optimizer()
    sched2 = build_schedule("linear", opt2, epochs=99, ratio=0.5)  # overwritten by the state
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched.get_last_lr()[0] == pytest.approx(0.05 * linear_factor(8, 10, 0.2))


@pytest.mark.parametrize(
    ("name", "kwargs", "exc", "match"),
    [
        ("step", {}, ValueError, r"Unknown schedule 'step'; allowed: linear, cosine, constant"),
        ("linear", {"ratio": -0.1}, ValueError, r"ratio must be a finite number >= 0"),
        ("cosine", {"min_ratio": float("nan")}, ValueError, r"min_ratio must be a finite"),
        ("linear", {"gamma": 0.1}, TypeError, r"gamma"),
        ("constant", {"ratio": 0.1}, TypeError, r"takes no keywords"),
    ],
)
def test_bad_input(name: str, kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        build_schedule(name, _optimizer(), epochs=10, **kwargs)


@pytest.mark.parametrize("epochs", [0, -3, 2.5, True])
def test_bad_epochs(epochs: object) -> None:
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        build_schedule("linear", _optimizer(), epochs=epochs)  # type: ignore[arg-type]


def test_names() -> None:
    assert SCHEDULES == ("linear", "cosine", "constant")

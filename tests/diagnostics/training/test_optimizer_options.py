"""Hyperparameters given by name (``--opt KEY=VALUE``): refused in one line naming the value."""

from __future__ import annotations

import pytest
import torch

from diagnostics.training.optimizers import build_optimizer, check_hyperparameter_types


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": float("inf")}, ValueError, r"^SGD: lr: expected a finite number, got inf$"),
        ({"momentum": float("nan")}, ValueError, r"^SGD: momentum: expected a finite number"),
        ({"foo": 1}, TypeError, r"^SGD: foo: not an option of SGD \(it takes lr, momentum, "),
        ({"momentum": "abc"}, TypeError, r"^SGD: momentum: expected a number, got 'abc' \(str\)$"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, error, match):
    params = torch.nn.Linear(2, 2).parameters()
    with pytest.raises(error, match=match):
        build_optimizer("sgd", params, **({"lr": 0.1} | kwargs))
    with pytest.raises(error, match=match):
        check_hyperparameter_types(torch.optim.SGD, kwargs, prefix="SGD: ")


def test_open_ended_optimisers_take_any_keyword():
    class Loose(torch.optim.SGD):
        def __init__(self, params, lr=0.1, **extra):
            super().__init__(params, lr=lr)

    check_hyperparameter_types(Loose, {"anything": 1})  # no error: **extra takes it


def test_a_bool_option_refuses_a_non_bool():
    params = torch.nn.Linear(2, 2).parameters()
    with pytest.raises(TypeError, match=r"^LanczosNewton: adaptive_damping: expected true or "):
        build_optimizer("lanczos_newton", params, adaptive_damping="True")


def test_an_optional_number_takes_none_and_a_plain_number_does_not():
    # max_step_norm: float | None = 1.0 -- None (no trust region) is a documented value.
    params = list(torch.nn.Linear(2, 2).parameters())
    opt = build_optimizer("lanczos_newton", params, max_step_norm=None)
    assert opt.defaults["max_step_norm"] is None
    with pytest.raises(TypeError, match=r"^LanczosNewton: damping: expected a number, got None"):
        check_hyperparameter_types(type(opt), {"damping": None}, prefix="LanczosNewton: ")


@pytest.mark.parametrize("adaptive", [True, False])
def test_adaptive_damping_attaches_the_model_so_batchnorm_updates_once(adaptive):
    from diagnostics.training.optimizers import train_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 4, (8,))
    opt = build_optimizer(
        "lanczos_newton", model.parameters(), model=model, adaptive_damping=adaptive
    )
    train_step(model, opt, torch.nn.functional.cross_entropy, x, y)
    assert int(model[1].num_batches_tracked) == 1  # one forward's update, extra forward or not
    assert opt.param_groups[0]["damping"] == (2 / 3 if adaptive else 1.0)

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

"""``benchmarks/gradient_snr.py``: the exact SNR against enumeration, and the quick run's table."""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gradient_snr.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gradient_snr", _SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _enumerated_snr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """||full gradient||^2 over the mean of ||batch gradient||^2 over every batch of the size."""
    params = list(model.parameters())

    def squared_gradient(idx: list[int]) -> float:
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        return float(sum(g.pow(2).sum() for g in torch.autograd.grad(loss, params)))

    batches = list(itertools.combinations(range(len(y)), batch))
    return squared_gradient(list(range(len(y)))) / (
        sum(squared_gradient(list(b)) for b in batches) / len(batches)
    )


@pytest.mark.parametrize("batch", [1, 2, 4, 7])
def test_the_exact_snr_matches_enumeration_over_all_batches(script: ModuleType, batch: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(3, (7,))
    snr = script.gradient_snr(model, nn.functional.cross_entropy, x, y, batch)
    assert snr == pytest.approx(_enumerated_snr(model, x, y, batch), rel=1e-10)
    if batch == len(y):  # the whole set: no noise
        assert snr == pytest.approx(1.0, rel=1e-12)
    else:
        assert 0 < snr < 1


def test_the_quick_run_writes_one_row_per_problem(run_benchmark: Callable[..., str]) -> None:
    text = run_benchmark("gradient_snr", "--quick")
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    body = [[c.strip() for c in r] for r in rows[1:]]
    assert [r[0] for r in body] == ["digits-mlp", "fashion-mlp", "fashion-cnn", "autoencoder"]
    for row in body:
        values = [float(v) for v in row[4:]]
        assert len(values) == 4
        assert all(math.isfinite(v) and 0 < v <= 1 for v in values)

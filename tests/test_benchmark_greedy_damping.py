"""``benchmarks/greedy_damping.py``: the greedy target against its closed form, the quick table."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    sys.path.insert(0, str(_BENCH))  # the script imports its sibling benchmark modules
    try:
        spec = importlib.util.spec_from_file_location(
            "greedy_damping", _BENCH / "greedy_damping.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_BENCH))
    return module


@pytest.mark.parametrize(
    ("theta", "a", "b"), [(2.0, 1.0, 0.5), (10.0, -3.0, -1.0), (0.5, 2.0, 0.2)]
)
def test_one_direction_gives_theta_times_a_over_b_minus_one(
    script: ModuleType, theta: float, a: float, b: float
) -> None:
    deltas = torch.logspace(-4, 4, 8001, dtype=torch.float64)
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got = script.greedy_damping(t(theta), t(a), t(b), deltas)
    assert got == pytest.approx(theta * (a / b - 1), rel=3e-3)


def test_a_noiseless_gradient_wants_no_damping(script: ModuleType) -> None:
    theta = torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.3], dtype=torch.float64)
    assert script.greedy_damping(theta, a, a.clone()) == pytest.approx(1e-4)  # b = a: the floor


def test_the_target_maximises_the_dense_second_batch_decrease(script: ModuleType) -> None:
    """Ground truth: dense damped solves with a random SPD curvature, no spectral formula."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]
    theta = torch.rand(6, generator=gen, dtype=torch.float64) * 10
    curvature = basis @ torch.diag(theta) @ basis.T
    g = torch.randn(6, generator=gen, dtype=torch.float64)  # the step batch's gradient
    g2 = 0.4 * g + 0.1 * torch.randn(6, generator=gen, dtype=torch.float64)  # a second batch
    deltas = torch.logspace(-2, 3, 51, dtype=torch.float64)

    def decrease(delta: float) -> float:  # of the model with g2's slope along the damped step
        d = -torch.linalg.solve(curvature + delta * torch.eye(6, dtype=torch.float64), g)
        return float(-(g2 @ d) - 0.5 * d @ curvature @ d)

    best = max(deltas.tolist(), key=decrease)
    got = script.greedy_damping(theta, basis.T @ g, basis.T @ g2, deltas)
    assert got == pytest.approx(best, rel=1e-12)
    assert deltas[0] < got < deltas[-1]  # an interior maximum: the case is not degenerate


def test_the_quick_run_writes_a_row_per_problem_and_seed(run_benchmark: Callable[..., str]) -> None:
    text = run_benchmark("greedy_damping", "--quick")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    body = [r for r in rows if len(r) == 10 and r[1] in {"0", "1"}]
    assert len(body) == 8
    for row in body:
        assert row[4].startswith("fixed ")
        values = [float(row[i]) for i in (2, 3, 5, 6, 7, 8, 9)]
        assert all(math.isfinite(v) and v > 0 for v in values)
        assert 1e-4 <= float(row[7]) <= 1e4  # the damping stays within its bounds
    # The rule moved the damping off its start of 1 (by factors of 3/2) on some run.
    assert any(float(row[7]) != 1.0 for row in body)

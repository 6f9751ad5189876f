"""``benchmarks/optimizer_memory.py --quick``: one row per optimiser, finite peaks, the goal."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytestmark = pytest.mark.slow  # six small child processes, a few seconds each


def test_quick_run_reports_every_optimizer_with_a_goal(run_benchmark: Callable[..., str]) -> None:
    text = run_benchmark("optimizer_memory", "--quick", "--batch", "8", timeout=300)
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    names = [row.split(" | ")[0][2:] for row in rows]
    assert names == [
        "SGD (momentum 0.9)",
        "Adam",
        "LanczosNewton defaults",
        "LanczosNewton(lanczos_steps=20)",
        "LanczosNewton(lanczos_steps=20, basis_dtype=bfloat16)",
        "LanczosNewton(lanczos_steps=5, update_every=5)",
    ]
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert float(cells[1]) > 0  # peak RSS in MiB
        has_goal = cells[0].startswith("Lanczos")
        assert (cells[3] != "-") == has_goal
        assert cells[4].startswith(("yes", "no")) == has_goal

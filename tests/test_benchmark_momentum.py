"""``benchmarks/momentum.py --quick``: every row, finite losses, time ratios to the plain row."""

from __future__ import annotations

import math
from collections.abc import Callable


def test_the_quick_run_writes_every_row(run_benchmark: Callable[..., str]) -> None:
    text = run_benchmark("momentum", "--quick")
    rows = [line.strip("|").split("|") for line in text.splitlines()[4:]]
    assert len(rows) == 3 * (2 + 2 + 1)  # three variants per (problem, damping)
    for problem, _, variant, train, held, ratio in rows:
        assert math.isfinite(float(train)), problem
        assert math.isfinite(float(held)), problem
        if variant.strip() == "none":
            assert float(ratio) == 1.0
    assert {r[0].strip() for r in rows} == {"digits-mlp", "fashion-mlp", "autoencoder"}

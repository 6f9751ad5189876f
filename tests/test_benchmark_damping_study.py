"""``benchmarks/damping_study.py --quick``: every row and table, finite values, sane ratios."""

from __future__ import annotations

import math
from collections.abc import Callable

GRID = {"fixed 0.1", "fixed 0.3", "fixed 1 (default)", "fixed 3"}
PROBLEMS = {"digits-mlp", "fashion-mlp", "fashion-cnn", "autoencoder"}


def _tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``, each a list of rows of stripped cells (header out)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current[2:])
            current = []
    return tables


def test_the_quick_run_writes_every_table(run_benchmark: Callable[..., str]) -> None:
    text = run_benchmark("damping_study", "--quick")
    seed0, summary0, seed1, summary1, to_adam = _tables(text)
    assert len(seed0) == 4 * 9
    assert len(seed1) == 4 * 9
    for table in (seed0, seed1):
        assert {row[0] for row in table} == PROBLEMS
        for _, label, train, held, damping, cut, ratio, tuned in table:
            assert all(math.isfinite(float(v)) for v in (train, held, damping, ratio, tuned))
            assert 0 <= float(cut.removesuffix(" %")) <= 100
            assert float(tuned) > 0
            if label == "fixed 1 (default)":
                assert float(ratio) == 1.0
                assert float(damping) == 1.0
            if label.startswith("fixed 0.1"):
                assert float(damping) == 0.1  # a fixed damping does not move
        for problem in PROBLEMS:  # the tuned reference is the best of the grid rows: one is 1
            grid = [r for r in table if r[0] == problem and r[1] in GRID]
            assert min(float(r[7]) for r in grid) == 1.0
    assert len(summary0) == 9
    assert len(summary1) == 9
    assert len(to_adam) == 9
    assert "Adam (lr=" in text
    for _, train, steps, seconds, ratio in to_adam:
        assert math.isfinite(float(train))
        assert (steps == "never") == (seconds == "never") == (ratio == "never")

"""``benchmarks/damping_study.py --quick``: every row and table, finite values, sane ratios."""

from __future__ import annotations

import math
from collections.abc import Callable

GRID = {"fixed 0.1", "fixed 0.3", "fixed 1 (default)", "fixed 3"}
PROBLEMS = {"digits-mlp", "fashion-mlp", "fashion-cnn", "autoencoder"}
SECOND = "adaptive, ρ on a second batch"
ROWS = 13


def _extra_forwards(label: str) -> float:
    """Forward passes per step beyond the step's own: the re-evaluations of the ratio."""
    if not label.startswith("adaptive"):
        return 0.0
    if "step's and a second batch" in label:
        return 4.0  # before and after the step, on both batches
    return 2.0 if "ρ on" in label else 1.0


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
    assert len(seed0) == 4 * ROWS
    assert len(seed1) == 4 * ROWS
    for table in (seed0, seed1):
        assert {row[0] for row in table} == PROBLEMS
        for _, label, train, held, damping, median, extra, cut, ratio, tuned in table:
            values = (train, held, damping, median, ratio, tuned)
            assert all(math.isfinite(float(v)) for v in values)
            assert 1e-4 <= float(median) <= 1e4
            assert float(extra) == _extra_forwards(label)  # the rho_closure rows did call it
            assert 0 <= float(cut.removesuffix(" %")) <= 100
            assert float(tuned) > 0
            if label == "fixed 1 (default)":
                assert float(ratio) == 1.0
                assert float(damping) == float(median) == 1.0
            if label.startswith("fixed 0.1"):
                assert float(damping) == float(median) == 0.1  # a fixed damping does not move
        for problem in PROBLEMS:  # the tuned reference is the best of the grid rows: one is 1
            grid = [r for r in table if r[0] == problem and r[1] in GRID]
            assert min(float(r[9]) for r in grid) == 1.0
        # The second batch's ratio moves the damping elsewhere than the same batch's does.
        final = {(r[0], r[1]): float(r[4]) for r in table}
        assert any(final[p, SECOND] != final[p, "adaptive"] for p in PROBLEMS)
    assert len(summary0) == ROWS
    assert len(summary1) == ROWS
    assert len(to_adam) == ROWS
    assert "Adam (lr=" in text
    for _, train, steps, seconds, ratio in to_adam:
        assert math.isfinite(float(train))
        assert (steps == "never") == (seconds == "never") == (ratio == "never")

"""``benchmarks/adaptive_damping.py`` in a few steps: every row, finite numbers, dampings moved."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "adaptive_damping.py"


def test_the_quick_run_prints_every_row_with_finite_losses() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "3", "--seeds", "0"],
        capture_output=True, text=True, env=env, check=True, timeout=300,
    ).stdout  # fmt: skip
    rows = {}
    for line in out.splitlines()[2:]:
        label, train, val, damping = (c.strip() for c in line.strip("|").split("|"))
        rows[label] = (float(train), float(val), float(damping))
    assert len(rows) == 8
    assert all(math.isfinite(t) and math.isfinite(v) for t, v, _ in rows.values())
    assert rows["defaults (fixed damping 1)"][2] == 1.0
    assert rows["adaptive from 10"][2] != 10.0  # it adapted

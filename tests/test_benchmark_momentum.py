"""``benchmarks/momentum.py --quick``: every row, finite losses, time ratios to the plain row."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "momentum.py"


def test_the_quick_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "momentum.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True, text=True, env=env, check=True, timeout=600,
    )  # fmt: skip
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines()[4:]]
    assert len(rows) == 3 * (2 + 2 + 1)  # three variants per (problem, damping)
    for problem, _, variant, train, held, ratio in rows:
        assert math.isfinite(float(train)), problem
        assert math.isfinite(float(held)), problem
        if variant.strip() == "none":
            assert float(ratio) == 1.0
    assert {r[0].strip() for r in rows} == {"digits-mlp", "fashion-mlp", "autoencoder"}

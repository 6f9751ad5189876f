"""``benchmarks/peers_optim.py --quick``: the table's columns, finite numbers everywhere."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diagnostics.training.datasets import FASHION_MNIST_DIRS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peers_optim.py"
COLUMNS = (
    "| problem | optimizer | setting | test loss | test acc | train loss | step time ×SGD | "
    "time to SGD's loss ×SGD | steps to SGD's loss | time to Adam's loss ×Adam | state MiB | "
    "diverged |"
)
OPTIMIZERS = {
    "SGD", "Adam", "LanczosNewton()", "LanczosNewton(lanczos_steps=5, update_every=5)",
    "LanczosNewton(lanczos_steps=20)", "LanczosNewton(adaptive_damping=True)",
    "LanczosSaddleFreeNewton()", "LanczosNewton (tuned)", "AdaHessian", "SophiaH", "Shampoo",
    "SOAP", "PSGD-Kron", "SOAP (heavyball)", "PSGD-Kron (heavyball)", "K-FAC (curvlinops)",
}  # fmt: skip
STATEFUL = {"Adam", "Shampoo", "SOAP", "PSGD-Kron", "SOAP (heavyball)", "PSGD-Kron (heavyball)"}

pytestmark = pytest.mark.slow  # one quick benchmark run, about 30 s of CPU

for _module in ("pytorch_optimizer", "heavyball", "curvlinops"):
    pytest.importorskip(_module)


def _problems() -> list[str]:
    fashion = any(Path(d).is_dir() for d in FASHION_MNIST_DIRS)
    return ["digits-mlp"] + (["fashion-mlp", "fashion-cnn", "autoencoder"] if fashion else [])


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, list[str]]:
    out = tmp_path_factory.mktemp("peers_optim")
    problems = _problems()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]
    proc = subprocess.run(
        [*argv, "--problems", ",".join(problems)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout, json.loads((out / "peers_optim.json").read_text()), problems


def test_the_table_has_the_columns_and_a_row_per_optimizer_and_problem(quick) -> None:
    stdout, _, problems = quick
    lines = stdout.splitlines()
    lines = lines[: lines.index("## Who wins")]
    assert COLUMNS in lines
    rows = [line for line in lines if line.startswith("| ") and line != COLUMNS]
    found = {(r.split(" | ")[0][2:], r.split(" | ")[1].strip("`")) for r in rows}
    expected = {
        (p, o) for p in problems for o in OPTIMIZERS if not (p == "autoencoder" and "K-FAC" in o)
    }
    assert found == expected
    assert all(len(r.split(" | ")) == COLUMNS.count(" | ") + 1 for r in rows)


def test_every_optimizer_produced_finite_numbers(quick) -> None:
    _, results, problems = quick
    rows = results["rows"]
    assert {r["optimizer"] for r in rows} == OPTIMIZERS
    for row in rows:
        name = (row["problem"], row["optimizer"])
        assert row["errors"] == [], name
        assert row["seeds"] == 1, name
        for key in ("test_loss", "train_loss", "step_time_ratio", "state_mib"):
            assert row[key], (name, key)
            assert all(math.isfinite(v) for v in row[key]), (name, key, row[key])
        if row["problem"] != "autoencoder":
            assert 0 <= row["test_acc"][0] <= 1, name
        if row["optimizer"] in STATEFUL:  # heavyball nests its state in lists: counted too
            assert row["state_mib"][0] > 0, name
    assert {r["problem"] for r in rows} == set(problems)


def test_same_start_and_tuning_grid(quick) -> None:
    # Every optimiser of a (problem, seed) starts from the same weights: the same initial loss.
    # Quick mode tunes on two learning rates (one setting for the untuned LanczosNewton ones).
    _, results, _ = quick
    runs = results["runs"]
    start: dict[tuple[str, int], set[float]] = {}
    for r in runs:
        assert r["train_loss"], (r["problem"], r["optimizer"], r["error"])
        start.setdefault((r["problem"], r["seed"]), set()).add(r["train_loss"][0])
    assert all(len(losses) == 1 for losses in start.values()), start
    tune = {}
    for r in runs:
        if r["phase"] == "tune":
            tune.setdefault((r["problem"], r["optimizer"]), []).append(r["setting"])
    for (_, opt), settings in tune.items():
        untuned = opt.startswith("Lanczos") and "tuned" not in opt
        assert len(settings) == (1 if untuned else 2), (opt, settings)


def test_the_winners_table_has_a_row_per_problem(quick) -> None:
    stdout, _, problems = quick
    lines = stdout.splitlines()
    at = lines.index("## Who wins")
    rows = [line for line in lines[at:] if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0][2:] for r in rows] == problems


def test_merge_keeps_the_runs_and_retime_replaces_only_the_clocks(quick, tmp_path) -> None:
    # A second invocation that runs nothing, merges the first's runs and re-times them.
    _, first, _ = quick
    (tmp_path / "peers_optim.json").write_text(json.dumps(first))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(SCRIPT), "--quick", "--optimizers", "SGD;Adam", "--merge"]
    proc = subprocess.run(
        [*argv, "--retime", "2", "--problems", "digits-mlp", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((tmp_path / "peers_optim.json").read_text())
    key = lambda r: (r["problem"], r["optimizer"], r["seed"], r["phase"], str(r["setting"]))  # noqa: E731
    old, new = {key(r): r for r in first["runs"]}, {key(r): r for r in second["runs"]}
    assert old.keys() == new.keys()
    for k, r in new.items():
        assert r["train_loss"] == old[k]["train_loss"], k  # the same training, merged or redone
        if r["phase"] == "seed" and not r["error"]:
            assert r["seconds"] == pytest.approx([s * r["step_seconds"] for s in r["steps"]])


def _row(label: str, train: float, test: float, diverged: int = 0) -> dict:
    return {
        "problem": "p", "optimizer": label, "train_loss": [train], "test_loss": [test],
        "time_to_target_ratio": [1.0], "time_to_adam_ratio": [math.inf], "errors": [],
        "diverged": diverged,
    }  # fmt: skip


def test_winners_pick_the_lowest_mean_and_skip_failed_optimizers() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _peers_table import winners

    rows = [_row("SGD", 0.5, 0.4), _row("Adam", 0.2, 0.3), _row("LanczosNewton()", 0.1, 0.35)]
    rows.append(_row("SOAP", math.nan, 0.1, diverged=1))  # diverged: no final loss
    line = winners(rows, "LanczosNewton()")[2]
    cells = line.split(" | ")
    assert cells[1] == "`LanczosNewton()` (0.1)"
    assert cells[2] == "`Adam` (0.3)"  # a diverged peer does not count
    assert cells[3] == "0.1 / 0.35"
    assert cells[6] == "never |"

"""The W&B logger: real wandb in offline mode into a temporary WANDB_DIR, records read back."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diagnostics.training import TrainingStep, train_network
from diagnostics.wandb_logger import (
    WandbLogger,
    _effective_curvature,
    resolve_wandb_mode,
    step_metrics,
)
from lanczos_optim import LanczosNewton

_spec = importlib.util.spec_from_file_location(
    "_wandb_records", Path(__file__).with_name("_wandb_records.py")
)
records = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(records)

SECRET = "local-0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    return tmp_path


def _rows(directory: Path) -> list[dict]:
    runs = records.offline_runs(directory)
    assert len(runs) == 1, runs
    return records.history(runs[0])


@pytest.mark.parametrize(
    ("explicit", "env", "key", "expected"),
    [
        ("disabled", "online", True, "disabled"),
        (None, "offline", True, "offline"),
        (None, None, False, "offline"),
        (None, None, True, "online"),
        (None, "dryrun", False, "offline"),
    ],
)
def test_mode_resolution(wandb_dir, monkeypatch, explicit, env, key, expected):
    if env:
        monkeypatch.setenv("WANDB_MODE", env)
    if key:
        monkeypatch.setenv("WANDB_API_KEY", SECRET)
    else:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_wandb_mode(explicit) == expected


def test_bad_arguments(wandb_dir):
    with pytest.raises(ValueError, match="got 'cloud'"):
        resolve_wandb_mode("cloud")
    with pytest.raises(ValueError, match="log_every must be an int >= 1; got 0"):
        WandbLogger(mode="disabled", log_every=0)
    with pytest.raises(ValueError, match="spectrum_data"):
        WandbLogger(mode="disabled", spectrum_every=1)


def test_training_logs_optimizer_curvature_and_spectra(wandb_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    torch.manual_seed(0)
    from diagnostics.datasets import load_dataset

    data = load_dataset("digits", subset=96)
    x, y = data.tensors
    seen: list[dict] = []

    class Spy:
        def on_step(self, step: TrainingStep) -> None:
            info = step.optimizer_info
            eff = _effective_curvature(info)
            seen.append(step_metrics(info) | {"step": step.step, "lr": step.lr, "eff": eff})

    logger = WandbLogger(
        name="test",
        config={"purpose": "test"},
        mode="offline",
        spectrum_every=1,
        spectrum_data=[(x[:64], y[:64])],
        lanczos_steps=8,
    )
    train_network(
        model="mlp",
        dataset=data,
        epochs=1,
        optimizer="lanczos_newton",
        optimizer_kwargs={"lanczos_steps": 5},
        batch_size=32,
        schedule="constant",
        callbacks=[Spy(), logger],
        progress=False,
    )
    assert logger.run is None  # finished at the end of training
    rows = _rows(wandb_dir)
    config = next(r["__config__"] for r in rows if "__config__" in r)
    assert config["purpose"] == "test"
    steps = {r["_step"]: r for r in rows if "train/batch_loss" in r}
    assert sorted(steps) == [s["step"] for s in seen] == [1, 2, 3]
    for spy in seen:
        row = steps[spy["step"]]
        assert row["curvature/top_ritz"] == pytest.approx(spy["curvature/top_ritz"], rel=1e-12)
        # A damped Newton step meets the curvature max |theta| / (|theta| + damping), not theta.
        theta = max(spy["curvature/top_ritz"], -spy["curvature/bottom_ritz"])
        assert spy["eff"] == pytest.approx(theta / (theta + spy["optim/damping"]))
        assert row["curvature/eos"] == pytest.approx(spy["lr"] * spy["eff"])
        assert row["optim/products"] == 5
        assert 0 <= row["curvature/krylov_fraction"] <= 1 + 1e-9
    epoch = next(r for r in rows if "spectrum/lambda_max" in r)
    assert epoch["spectrum/ritz_histogram/_type"] == "histogram"
    assert sum(epoch["spectrum/ritz_histogram/values"]) == pytest.approx(1.0)
    assert epoch["spectrum/stem/_type"] == "image-file"
    assert epoch["spectrum/eos"] == pytest.approx(epoch["spectrum/lambda_max"] * 1.0)
    assert "epoch/train_loss" in epoch
    # The API key is never written anywhere in the run folder.
    for path in wandb_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_edge_of_stability_warns_once(wandb_dir):
    logger = WandbLogger(mode="offline", eos_threshold=1.8)
    model = nn.Linear(2, 2)
    opt = LanczosNewton(model.parameters(), lr=1.0)
    from lanczos_optim.optimizers._base import StepInfo

    def step(n: int, top: float) -> TrainingStep:
        info = StepInfo(  # no damping: a plain gradient step, whose scale is lambda_max
            ritz_values=torch.tensor([0.1, top], dtype=torch.float64),
            weights=torch.tensor([0.5, 0.5], dtype=torch.float64),
        )
        return TrainingStep(1, n, n, 1.0, math.nan, 0.5, 4, info, model, opt)

    logger.on_step(step(1, 2.0))  # 0.5 * 2.0 = 1.0: fine
    with pytest.warns(RuntimeWarning, match="Edge of stability"):
        logger.on_step(step(2, 3.8))  # 1.9
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.on_step(step(3, 4.0))  # warned already
    logger.finish()
    rows = {r["_step"]: r for r in _rows(wandb_dir) if "_step" in r}
    assert rows[2]["curvature/eos"] == pytest.approx(1.9)
    assert rows[1]["curvature/negative_mass"] == 0.0


def test_landscape_and_comparison_tables(wandb_dir):
    from diagnostics.compare import compare_to_spectrum
    from diagnostics.landscape import build_loss_landscape

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    directions = [torch.randn(26, dtype=torch.float64)]
    land = build_loss_landscape(
        model, nn.CrossEntropyLoss(), (x, y), directions=directions, n_points=3, curvature="ggn"
    )
    logger = WandbLogger(mode="offline")
    logger.log_landscape(land)
    logger.log_comparison(compare_to_spectrum([1.0, 2.0], ([0.0, 3.0], [0.5, 0.5])))
    logger.finish()
    row = next(r for r in _rows(wandb_dir) if "landscape/table/_type" in r)
    assert row["landscape/table/_type"] == "table-file"
    assert row["landscape/table/nrows"] == 3
    assert row["landscape/plot/_type"] == "image-file"
    cmp_row = next(r for r in _rows(wandb_dir) if "diagonal/comparison/_type" in r)
    assert cmp_row["diagonal/comparison/nrows"] >= 10


def test_disabled_mode_writes_nothing(wandb_dir):
    logger = WandbLogger(mode="disabled")
    logger.log({"x": 1.0})
    logger.finish()
    assert not records.offline_runs(wandb_dir)

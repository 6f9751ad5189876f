"""The W&B logger: real wandb in offline mode into a temporary WANDB_DIR, records read back."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diagnostics.training.harness import TrainingStep, train_network
from diagnostics.wandb_logger import (
    WandbLogger,
    _effective_curvature,
    resolve_wandb_mode,
    spectrum_step_curvature,
    step_metrics,
)
from lanczos_optim import LanczosNewton
from lanczos_optim.optimizers import StepInfo

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
    from diagnostics.training.datasets import load_dataset

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
    # LanczosNewton (lr 1, damping 1): the indicator is the damped step's, below 1 here.
    assert epoch["spectrum/eos"] == pytest.approx(1.0 * epoch["spectrum/step_curvature"])
    theta = max(epoch["spectrum/lambda_max"], -epoch["spectrum/lambda_min"])
    assert epoch["spectrum/step_curvature"] == pytest.approx(theta / (theta + 1.0))
    assert "epoch/train_loss" in epoch
    # The API key is never written anywhere in the run folder.
    for path in wandb_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_edge_of_stability_warns_once(wandb_dir):
    logger = WandbLogger(mode="offline", eos_threshold=1.8)
    model = nn.Linear(2, 2)
    opt = LanczosNewton(model.parameters(), lr=1.0)
    from lanczos_optim.optimizers import StepInfo

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
    from diagnostics.analysis.compare import compare_to_spectrum
    from diagnostics.analysis.landscape import build_loss_landscape

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


# --------------------------------------------------------------- issue 11
def _records(run_file: Path, kind: str) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    records.history(run_file)  # waits for the exit record
    out = []
    for chunk in records._chunks(run_file.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        if rec.WhichOneof("record_type") == kind:
            out.append(getattr(rec, kind))
    return out


def _summary(run_file: Path) -> dict:
    import json

    out: dict = {}
    for summary in _records(run_file, "summary"):
        out.update({i.key: json.loads(i.value_json) for i in summary.update})
    return out


def test_negative_mass_headline_leaves_out_the_ritz_value_nearest_zero(wandb_dir):
    from lanczos_optim.optimizers import StepInfo

    # The case: 74 % of the mass on one Ritz value at -0.0043.
    info = StepInfo(
        ritz_values=torch.tensor([-0.5, -0.0043, 0.2, 3.0], dtype=torch.float64),
        weights=torch.tensor([0.008, 0.742, 0.15, 0.1], dtype=torch.float64),
        damping=1.0,
    )
    metrics = step_metrics(info)
    assert metrics["curvature/negative_mass"] == pytest.approx(0.008)
    assert metrics["curvature/negative_mass_raw"] == pytest.approx(0.75)

    from diagnostics.analysis.spectrum import compute_eigenspectrum

    torch.manual_seed(3)  # a spectrum whose Ritz value nearest zero is negative
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = (torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,)))
    spectrum = compute_eigenspectrum(model, nn.CrossEntropyLoss(), data, lanczos_steps=20, seed=0)
    logger = WandbLogger(mode="disabled")
    payload = logger.spectrum_payload(spectrum)
    logger.finish()
    assert payload["spectrum/negative_mass"] == spectrum.negative_mass(exclude_nearest_zero=True)
    assert payload["spectrum/negative_mass_raw"] == spectrum.negative_mass()
    assert payload["spectrum/negative_mass"] < payload["spectrum/negative_mass_raw"]


def test_epoch_spectrum_uses_the_lr_in_force_and_the_damped_curvature(wandb_dir):
    from diagnostics.training.datasets import load_dataset

    x, y = load_dataset("digits", subset=64).tensors
    logger = WandbLogger(mode="offline", spectrum_every=2, spectrum_data=[(x, y)], lanczos_steps=6)
    result = train_network(
        model="mlp", dataset=load_dataset("digits", subset=64), epochs=2, batch_size=32,
        optimizer="lanczos_newton", optimizer_kwargs={"lanczos_steps": 3, "damping": 2.0},
        schedule="linear", callbacks=[logger], progress=False,
    )  # fmt: skip
    # The linear schedule dropped the lr to 1 % after the last epoch; epoch 2 ran at lr 1.
    assert result.history[-1]["lr"] == 1.0
    assert result.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    row = next(r for r in _rows(wandb_dir) if "spectrum/eos" in r)
    theta = max(row["spectrum/lambda_max"], -row["spectrum/lambda_min"])
    assert row["spectrum/step_curvature"] == pytest.approx(theta / (theta + 2.0))
    assert row["spectrum/eos"] == pytest.approx(1.0 * row["spectrum/step_curvature"])
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert spectrum_step_curvature([-3.0, 2.0], sgd) == 2.0  # gradient steps: lambda_max


def test_config_and_one_epoch_key(wandb_dir):
    from diagnostics.training.datasets import load_dataset

    logger = WandbLogger(mode="offline", config={"purpose": "test"})
    train_network(
        model="mlp", dataset=load_dataset("digits", subset=64), epochs=2, batch_size=32,
        callbacks=[logger], progress=False,
    )  # fmt: skip
    rows = _rows(wandb_dir)
    config = next(r["__config__"] for r in rows if "__config__" in r)
    assert config["purpose"] == "test"
    assert (config["lr"], config["optimizer_kwargs"]) == (0.05, {"lr": 0.05, "momentum": 0.9})
    assert config["model"] == "mlp"
    keys = {k for r in rows for k in r}
    assert "epoch" in keys
    assert not [k for k in keys if k.startswith("epoch/epoch")]
    epochs = [r for r in rows if "epoch/train_loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]


def test_interrupted_run_is_marked_and_resumed_with_the_same_id(wandb_dir):
    from diagnostics.training.harness import TrainingInterrupted

    first = WandbLogger(mode="offline")
    run_id = first.run_id
    first.log({"x": 1.0}, step=1)
    err = TrainingInterrupted(
        "stopped", signum=2, checkpoint=Path("out/checkpoint-00004-b00002.pt"), epochs_done=4,
        batches_done=2,
    )  # fmt: skip
    first.on_interrupt(err)
    assert first.run is None
    (run_file,) = records.offline_runs(wandb_dir)
    summary = _summary(run_file)
    assert summary["interrupted"] is True
    assert summary["interrupted_by"] == "SIGINT"
    assert summary["interrupted_after_epochs"] == 4
    assert summary["interrupted_checkpoint"].endswith("checkpoint-00004-b00002.pt")
    (exit_record,) = _records(run_file, "exit")
    assert exit_record.exit_code == 255
    assert list(_records(run_file, "run")[-1].tags) == ["interrupted"]

    second = WandbLogger(mode="offline", run_id=run_id)
    assert second.run_id == run_id
    second.log({"x": 2.0}, step=2)
    second.on_train_end(None)
    runs = records.offline_runs(wandb_dir)
    assert len(runs) == 2
    assert {r.name for r in runs} == {f"run-{run_id}.wandb"}
    later = next(r for r in runs if r != run_file)
    assert _summary(later)["interrupted"] is False
    (exit_record,) = _records(later, "exit")
    assert exit_record.exit_code == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"curvature": "fisher"}, r"Invalid curvature: 'fisher'; expected one of"),
        ({"lanczos_steps": 0}, r"Invalid lanczos_steps value: 0 \(must be an int >= 1\)"),
        ({"bn_mode": "both"}, r"bn_mode must be one of .*got 'both'"),
        ({"spectrum_every": 0}, r"spectrum_every must be an int >= 1 \(epochs\); got 0"),
        ({"eos_threshold": -1.0}, r"eos_threshold must be a positive finite number; got -1.0"),
    ],
)
def test_bad_settings_raise_in_the_constructor_before_wandb_starts(wandb_dir, kwargs, match):
    settings = {"spectrum_every": 1, "spectrum_data": [(torch.zeros(1, 2), torch.zeros(1))]}
    with pytest.raises(ValueError, match=match):
        WandbLogger(mode="offline", **{**settings, **kwargs})
    assert not (wandb_dir / "wandb").exists()


def test_adaptive_damping_logs_rho_and_the_next_damping(wandb_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    torch.manual_seed(0)
    from diagnostics.training.datasets import load_dataset

    seen: list[dict] = []

    class Spy:
        def on_step(self, step: TrainingStep) -> None:
            seen.append(step.optimizer_info.to_dict() | {"step": step.step})

    logger = WandbLogger(name="test", mode="offline")
    train_network(
        model="mlp",
        dataset=load_dataset("digits", subset=96),
        epochs=1,
        optimizer="lanczos_newton",
        optimizer_kwargs={"lanczos_steps": 5, "adaptive_damping": True},
        batch_size=32,
        schedule="constant",
        callbacks=[Spy(), logger],
        progress=False,
    )
    steps = {r["_step"]: r for r in _rows(wandb_dir) if "train/batch_loss" in r}
    assert sorted(steps) == [s["step"] for s in seen] == [1, 2, 3]
    for spy in seen:
        row = steps[spy["step"]]
        assert math.isfinite(spy["rho"])
        assert row["optim/rho"] == spy["rho"]
        assert row["optim/damping"] == spy["damping"]
        assert row["optim/next_damping"] == spy["next_damping"]
    assert [s["next_damping"] for s in seen[:-1]] == [s["damping"] for s in seen[1:]]
    assert "optim/rho" not in step_metrics(StepInfo())  # NaN (adaptive off) is left out

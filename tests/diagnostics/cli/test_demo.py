"""The offline demo in quick mode: every promised output exists and is consistent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from diagnostics.analysis.landscape import Landscape
from diagnostics.analysis.spectrum import Spectrum
from diagnostics.cli.demo import run_demo

_spec = importlib.util.spec_from_file_location(
    "_wandb_records", Path(__file__).parent.parent / "_wandb_records.py"
)
records = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(records)


@pytest.mark.slow
def test_quick_demo_writes_everything(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, wandb_mode="offline")
    for name in (
        "training",
        "spectrum_hessian",
        "spectrum_ggn",
        "diagonal_vs_lanczos",
        "landscape",
    ):
        assert (out / f"{name}.png").stat().st_size > 1000, name
    hessian = Spectrum.load(out / "spectrum_hessian.npz")
    ggn = Spectrum.load(out / "spectrum_ggn.npz")
    assert summary["hessian_lambda_max"] == pytest.approx(hessian.lambda_max)
    assert ggn.lambda_min > -1e-8  # the GGN of cross-entropy is positive semi-definite
    assert np.isclose(hessian.weights.sum(), 1.0)
    landscape = Landscape.load(out / "landscape.npz")
    assert landscape.num_directions == 4
    assert landscape.has_test
    text = (out / "summary.md").read_text()
    assert "lanczos_newton_train_loss" in text
    assert "diag_ggn_exact_wasserstein_rel" in text
    # The diagonal misses the top outlier of the GGN spectrum (paper, sections 6.3 and 7.1).
    assert summary["diag_ggn_exact_max"] < ggn.lambda_max
    # Two W&B runs in the project: the SGD baseline (with the analyses of its model) and
    # LanczosNewton, each with the full training configuration and one epoch key.
    runs = records.offline_runs(out)
    assert len(runs) == 2
    by_optimizer = {}
    for run in runs:
        rows = records.history(run)
        config = next(r["__config__"] for r in rows if "__config__" in r)
        by_optimizer[config["optimizer"]] = (config, set().union(*rows))
    assert sorted(by_optimizer) == ["lanczos_newton", "sgd"]
    sgd_config, sgd_keys = by_optimizer["sgd"]
    assert sgd_config["optimizer_kwargs"] == {"lr": 0.1, "momentum": 0.9}
    assert (sgd_config["epochs"], sgd_config["batch_size"], sgd_config["model"]) == (3, 64, "mlp")
    assert sgd_config["demo"]["steps"] == 20
    assert {"spectrum_hessian/lambda_max", "landscape/table/_type", "epoch/train_loss"} <= sgd_keys
    newton_config, newton_keys = by_optimizer["lanczos_newton"]
    assert newton_config["lr"] == 1.0
    assert {"curvature/top_ritz", "epoch/test_acc"} <= newton_keys
    for _, keys in by_optimizer.values():
        assert "epoch" in keys
        assert not [k for k in keys if k.startswith("epoch/epoch")]

"""EpochSpectra: spectra every N epochs, saved under the run folder and logged to W&B."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diagnostics.analysis.spectrum import Spectrum
from diagnostics.training.datasets import load_dataset
from diagnostics.training.epoch_spectra import EpochSpectra, spectrum_filename
from diagnostics.training.harness import train_network
from diagnostics.wandb_logger import WandbLogger

_spec = importlib.util.spec_from_file_location(
    "_wandb_records", Path(__file__).parent.parent / "_wandb_records.py"
)
records = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(records)


def test_saved_and_logged_with_the_lr_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    held_out = load_dataset("digits", train=False, subset=64).tensors
    logger = WandbLogger(mode="offline")
    spectra = EpochSpectra(tmp_path / "run", 2, [held_out], logger=logger, lanczos_steps=5)
    train_network(
        model="mlp", dataset=load_dataset("digits", subset=64), epochs=4, batch_size=32,
        lr=0.2, schedule="linear", callbacks=[logger, spectra], progress=False,
    )  # fmt: skip
    assert [p.name for p in spectra.saved] == [spectrum_filename(2), spectrum_filename(4)]
    last = Spectrum.load(tmp_path / "run" / "spectra" / "spectrum-epoch-00004.npz")
    # Equation 11 with T = 4: epoch 4 (t = 3, t/T = 0.75) ran at 0.2 * 0.38125.
    assert last.meta["lr"] == pytest.approx(0.2 * 0.38125)
    (run,) = records.offline_runs(tmp_path)
    rows = [r for r in records.history(run) if "spectrum/eos" in r]
    assert [r["epoch"] for r in rows] == [2, 4]  # in the same row as the epoch's metrics
    assert rows[-1]["spectrum/lambda_max"] == pytest.approx(last.lambda_max)
    assert rows[-1]["spectrum/eos"] == pytest.approx(0.2 * 0.38125 * last.lambda_max)


def test_in_memory_without_a_folder_and_bad_interval() -> None:
    spectra = EpochSpectra(None, 1, [load_dataset("digits", subset=32).tensors], lanczos_steps=3)
    train_network(
        model="mlp", dataset=load_dataset("digits", subset=32), epochs=1, callbacks=[spectra],
        progress=False,
    )  # fmt: skip
    assert list(spectra.spectra) == [1]
    assert not spectra.saved
    with pytest.raises(ValueError, match=r"spectrum every must be an int >= 1 \(epochs\); got 0"):
        EpochSpectra(None, 0, [])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"curvature": "fisher"}, r"curvature must be one of \('hessian', 'ggn'\); got 'fisher'"),
        ({"lanczos_steps": 0}, r"lanczos_steps must be an integer >= 1; got 0"),
        ({"lanczos_steps": 2.5}, r"lanczos_steps must be an integer >= 1; got 2.5"),
        ({"bn_mode": "both"}, r"bn_mode must be one of \('eval', 'train'\); got 'both'"),
    ],
)
def test_bad_settings_raise_in_the_constructor(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EpochSpectra(None, 1, [], **kwargs)

"""Issue 11 on the analysis commands: provenance, no overwriting, messages, plots, progress."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.analysis.spectrum import Spectrum
from diagnostics.cli.app import main

SMALL = ["--subset", "64", "--float64"]
TRAIN = ["train", "--model", "mlp", "--dataset", "digits", "--subset", "128", "--wandb", "disabled"]


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An SGD run with checkpoints after epochs 1 and 2, and a one-epoch Adam run."""
    root = tmp_path_factory.mktemp("runs")
    sgd, adam = root / "sgd", root / "adam"
    argv = [*TRAIN, "--epochs", "2", "--checkpoint-every", "1", "--schedule", "constant"]
    assert main([*argv, "--lr", "0.1", "--out", str(sgd)]) == 0
    argv = [*TRAIN, "--epochs", "1", "--optimizer", "adam", "--lr", "0.01"]
    assert main([*argv, "--schedule", "constant", "--out", str(adam)]) == 0
    return {"sgd": sgd, "adam": adam}


def _spectrum(ckpt: Path, out: Path, *extra: str) -> int:
    argv = ["spectrum", "--checkpoint", str(ckpt), *SMALL, "--steps", "6", "--save-eigvec"]
    return main([*argv, "--out", str(out), *extra])


# Item 3: files from different runs are not mixed.


def test_results_record_checkpoint_weights_model_and_data(runs, tmp_path, capsys):
    ckpt = runs["sgd"] / "checkpoint-00002.pt"
    spec = tmp_path / "s.npz"
    assert _spectrum(ckpt, spec) == 0
    prov = Spectrum.load(spec).meta["provenance"]
    assert prov["checkpoint"] == str(ckpt)
    assert prov["model"] == "mlp"
    assert prov["dataset"] == "digits"
    assert prov["subset"] == 64
    assert len(prov["param_hash"]) == 16
    assert len(prov["data_hash"]) == 16
    stats = tmp_path / "stats.json"
    assert main(["stats", "--checkpoint", str(ckpt), *SMALL, "--out", str(stats)]) == 0
    assert json.loads(stats.read_text())["provenance"] == prov


@pytest.mark.parametrize(
    ("command", "extra", "needle"),
    [
        ("landscape", ["--checkpoint", "{other}"], "weights of parameter hash"),
        ("diagonal", ["--checkpoint", "{other}"], "weights of parameter hash"),
        ("landscape", ["--model", "small_cnn"], "parameter count"),
        ("diagonal", ["--checkpoint", "{ckpt}", "--subset", "32"], "samples of data hash"),
    ],
)
def test_a_spectrum_of_another_checkpoint_model_or_subset_is_refused(
    runs, tmp_path, capsys, command, extra, needle
):
    ckpt, other = runs["sgd"] / "checkpoint-00002.pt", runs["sgd"] / "checkpoint-00001.pt"
    spec = tmp_path / "s.npz"
    assert _spectrum(ckpt, spec) == 0
    capsys.readouterr()
    extra = [e.format(ckpt=ckpt, other=other) for e in extra]
    out = tmp_path / "result.npz"
    argv = [command, "--spectrum", str(spec), *SMALL, *extra, "--out", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, needle, str(spec))
    assert not out.exists()


def test_the_same_checkpoint_in_float32_matches_its_float64_spectrum(runs, tmp_path):
    ckpt = runs["sgd"] / "checkpoint-00002.pt"
    spec = tmp_path / "s.npz"
    assert _spectrum(ckpt, spec) == 0
    argv = ["diagonal", "--checkpoint", str(ckpt), "--subset", "64", "--spectrum", str(spec)]
    assert main([*argv, "--kinds", "diag_ggn_exact", "--out", str(tmp_path / "d.npz")]) == 0


def test_the_same_samples_in_other_batches_match(runs, tmp_path):
    ckpt = runs["sgd"] / "checkpoint-00002.pt"
    spec = tmp_path / "s.npz"
    assert _spectrum(ckpt, spec) == 0
    argv = [
        "diagonal", "--checkpoint", str(ckpt), *SMALL, "--batch-size", "16", "--spectrum",
        str(spec), "--kinds", "diag_ggn_exact", "--out", str(tmp_path / "d.npz"),
    ]  # fmt: skip
    assert main(argv) == 0


# Item 4: nothing is overwritten without --overwrite.


def test_default_outputs_go_beside_the_checkpoint_and_are_not_replaced(runs, capsys):
    ckpt = runs["sgd"] / "checkpoint-00001.pt"
    argv = ["spectrum", "--checkpoint", str(ckpt), *SMALL, "--steps", "4", "--curvature", "ggn"]
    assert main(argv) == 0
    out = runs["sgd"] / "checkpoint-00001-spectrum-ggn.npz"
    assert out.is_file()
    assert out.with_suffix(".png").is_file()
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--steps", "5"]) == 2
    _one_line_error(capsys, str(out), "--overwrite")
    assert out.read_bytes() == before
    assert main([*argv, "--steps", "5", "--overwrite"]) == 0
    assert Spectrum.load(out).meta["lanczos_steps"] == 5


def test_without_a_checkpoint_each_run_gets_its_own_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["spectrum", "--model", "mlp", *SMALL, "--steps", "3"]
    assert main(argv) == 0
    assert main(argv) == 0
    files = sorted((tmp_path / "results").glob("spectrum-hessian-mlp-digits-*.npz"))
    assert len(files) == 2
    assert main(["stats", "--model", "mlp", *SMALL]) == 0
    assert len(list((tmp_path / "results").glob("stats-mlp-digits-*.json"))) == 1


@pytest.mark.parametrize("command", ["spectrum", "stats", "landscape", "diagonal"])
def test_an_existing_out_file_needs_overwrite(command, tmp_path, capsys):
    out = tmp_path / ("r.json" if command == "stats" else "r.npz")
    out.write_bytes(b"keep me")
    spec = tmp_path / "s.npz"
    assert main(["spectrum", "--model", "mlp", *SMALL, "--steps", "3", "--save-eigvec",
                 "--out", str(spec)]) == 0  # fmt: skip
    capsys.readouterr()
    extra = ["--spectrum", str(spec)] if command in ("landscape", "diagonal") else []
    assert main([command, "--model", "mlp", *SMALL, *extra, "--out", str(out)]) == 2
    _one_line_error(capsys, str(out), "--overwrite")
    assert out.read_bytes() == b"keep me"


# Item 5: the negative mass without the Ritz value nearest zero is the headline.


def test_spectrum_reports_negative_mass_without_the_ritz_value_nearest_zero(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["spectrum", "--model", "mlp", *SMALL, "--steps", "12", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    spectrum = Spectrum.load(out)
    mass = [i for i, line in enumerate(lines) if "negative mass" in line]
    assert len(mass) == 2
    headline, raw = lines[mass[0]], lines[mass[1]]
    excl = spectrum.negative_mass(exclude_nearest_zero=True)
    assert f"negative mass {excl:.3f} without the Ritz value nearest 0" in headline
    assert "raw" not in headline
    assert f"raw negative mass {spectrum.negative_mass():.3f}" in raw
    values, _ = spectrum.nearest_zero()
    assert f"{values[0]:.2g}" in raw


# Item 7: plot flags and overlaid runs.


def test_log_and_title_flags_reach_the_figure(tmp_path, monkeypatch):
    import diagnostics.plots as plots

    figures = []
    real = plots.plot_spectrum
    monkeypatch.setattr(plots, "plot_spectrum", lambda *a, **k: figures.append(real(*a, **k)))
    out = tmp_path / "s.npz"
    argv = ["spectrum", "--model", "mlp", *SMALL, "--steps", "4", "--curvature", "ggn"]
    assert main([*argv, "--out", str(out)]) == 0
    ax = figures[-1].axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title().startswith("GGN spectrum\nmlp on digits (64 samples), 4 Lanczos steps")
    assert (
        main(["plot", str(out), "--no-log", "--title", "mine", "--out", str(tmp_path / "p.png")])
        == 0
    )
    assert figures[-1].axes[0].get_yscale() == "linear"
    assert figures[-1].axes[0].get_title() == "mine"


def test_plot_overlays_runs_labelled_by_their_optimiser(runs, tmp_path, monkeypatch):
    import diagnostics.plots as plots

    figures = []
    real = plots.plot_runs
    monkeypatch.setattr(plots, "plot_runs", lambda *a, **k: figures.append(real(*a, **k)))
    out = tmp_path / "cmp.png"
    argv = ["plot", str(runs["sgd"] / "stats.jsonl"), str(runs["adam"] / "stats.jsonl")]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    fig = figures[-1]
    assert [line.get_label() for line in fig.axes[0].lines] == ["sgd (lr 0.1)", "adam (lr 0.01)"]
    assert fig.get_suptitle() == "sgd (lr 0.1) vs adam (lr 0.01): mlp on digits"
    assert fig.axes[-1].get_title() == "train loss vs wall-clock time"


def test_epoch_spectrum_plot_is_titled_by_model_data_and_epoch(tmp_path, monkeypatch):
    import diagnostics.plots as plots
    from diagnostics.results import load_npz

    figures = []
    real = plots.plot_spectrum
    monkeypatch.setattr(plots, "plot_spectrum", lambda *a, **k: figures.append(real(*a, **k)))
    run = tmp_path / "run"
    argv = [*TRAIN, "--epochs", "1", "--lr", "0.1", "--schedule", "constant"]
    assert main([*argv, "--spectrum-every", "1", "--out", str(run)]) == 0
    src = run / "spectra" / "spectrum-epoch-00001.npz"
    prov = Spectrum.load(src).meta["provenance"]
    assert prov == {"model": "mlp", "dataset": "digits", "split": "held-out"}
    title = "Hessian spectrum after epoch 1 (lr 0.1)\nmlp on digits (360 held-out samples), "
    title += "30 Lanczos steps"
    assert main(["plot", str(src), "--out", str(tmp_path / "a.png")]) == 0
    assert figures[-1].axes[0].get_title() == title
    # A spectrum saved before the provenance was recorded: the run's checkpoint names both.
    arrays, meta = load_npz(src, "spectrum")
    del meta["provenance"]
    Spectrum(arrays, meta).save(src)
    assert "provenance" not in Spectrum.load(src).meta
    assert main(["plot", str(src), "--out", str(tmp_path / "b.png")]) == 0
    assert figures[-1].axes[0].get_title() == title


# Item 8: progress on a terminal, none with --quiet.


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("quiet", "shown"), [([], True), (["--quiet"], False)])
def test_spectrum_shows_progress_unless_quiet(tmp_path, monkeypatch, quiet, shown):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    argv = ["spectrum", "--model", "mlp", *SMALL, "--steps", "5", *quiet]
    assert main([*argv, "--out", str(tmp_path / "s.npz")]) == 0
    assert ("Lanczos (hessian)" in term.getvalue()) is shown


# Item 9: clear messages; run folders as checkpoints; stats JSON plots.


@pytest.mark.parametrize("content", [b"101\n", b'{"epoch": 1, "train_loss": 0.5}\n'])
def test_a_text_file_as_checkpoint_is_named_clearly(tmp_path, capsys, content):
    bad = tmp_path / "stats.jsonl"
    bad.write_bytes(content)
    assert main(["spectrum", "--checkpoint", str(bad), "--out", str(tmp_path / "s.npz")]) == 2
    err = _one_line_error(capsys, str(bad), "is not a checkpoint", "lanczos-optim train")
    assert "weights_only" not in err


def test_a_pickled_file_as_checkpoint_gets_no_weights_only_advice(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    torch.save({"format": "lanczos-optim/checkpoint", "x": np.dtype("float64")}, bad)
    assert main(["spectrum", "--checkpoint", str(bad), "--out", str(tmp_path / "s.npz")]) == 2
    err = _one_line_error(capsys, str(bad), "not a lanczos-optim checkpoint")
    assert "weights_only" not in err


def test_a_run_folder_is_its_latest_checkpoint(runs, tmp_path):
    out = tmp_path / "s.npz"
    assert _spectrum(runs["sgd"], out) == 0
    assert Spectrum.load(out).meta["provenance"]["checkpoint"].endswith("checkpoint-00002.pt")


def test_a_folder_without_checkpoints_is_refused(tmp_path, capsys):
    assert main(["stats", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 2
    _one_line_error(capsys, str(tmp_path), "no checkpoint-*.pt")


def test_plot_draws_the_stats_json(tmp_path, capsys):
    stats = tmp_path / "stats.json"
    assert main(["stats", "--model", "mlp", *SMALL, "--out", str(stats)]) == 0
    assert main(["plot", str(stats)]) == 0
    assert stats.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_plot_says_what_it_accepts(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"a": 1}))
    assert main(["plot", str(other)]) == 2
    _one_line_error(capsys, str(other), "plot accepts")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["plot", str(text)]) == 2
    _one_line_error(capsys, str(text), "plot accepts")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["spectrum", "--steps", "0"], ["Invalid --steps value: 0"]),
        (["spectrum", "--probes", "0"], ["--probes: ", "num_probes value: 0"]),
        (["stats", "--probes", "-1"], ["--probes: ", "num_probes value: -1"]),
    ],
)
def test_steps_and_probes_named_as_options_before_the_checkpoint_is_read(
    argv, needles, tmp_path, capsys
):
    # They were checked only once model and data were loaded, named lanczos_steps/num_probes.
    missing = str(tmp_path / "no-such-run")
    assert main([*argv, "--checkpoint", missing, "--out", str(tmp_path / "r.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert list(tmp_path.iterdir()) == []

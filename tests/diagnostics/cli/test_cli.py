"""The lanczos-optim command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.analysis.spectrum import Spectrum, compute_eigenspectrum
from diagnostics.cli.app import build_parser, main

COMMON = ["--model", "mlp", "--dataset", "digits", "--subset", "96", "--float64"]


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def spectrum_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "spectrum.npz"
    argv = ["spectrum", *COMMON, "--steps", "12", "--save-eigvec", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("train", "spectrum", "stats", "landscape", "diagonal", "plot", "demo"):
        assert cmd in text


def test_spectrum_writes_the_same_spectrum_as_the_library(spectrum_file):
    saved = Spectrum.load(spectrum_file)
    assert spectrum_file.with_suffix(".png").is_file()
    assert saved.ritz_vectors is not None
    from diagnostics.cli._setup import analysis_setup

    setup = analysis_setup(model="mlp", dataset="digits", subset=96, dtype=torch.float64)
    direct = compute_eigenspectrum(
        setup.model, setup.loss_fn, setup.train, lanczos_steps=12, seed=0
    )
    np.testing.assert_allclose(saved.ritz_values, direct.ritz_values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(saved.weights.sum(), 1.0, rtol=1e-12)


def test_spectrum_with_cached_graphs_is_the_same_spectrum(spectrum_file, tmp_path):
    out = tmp_path / "cached.npz"
    argv = ["spectrum", *COMMON, "--steps", "12", "--cache-graphs", "--out", str(out)]
    assert main(argv) == 0
    cached, plain = Spectrum.load(out), Spectrum.load(spectrum_file)
    np.testing.assert_allclose(cached.ritz_values, plain.ritz_values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cached.weights, plain.weights, rtol=1e-8, atol=1e-12)


def test_landscape_stats_diagonal_and_plot(spectrum_file, tmp_path, capsys):
    land = tmp_path / "land.npz"
    argv = ["landscape", *COMMON, "--spectrum", str(spectrum_file), "--n-points", "5"]
    assert main([*argv, "--top", "0", "--bottom", "0", "--out", str(land)]) == 0
    from diagnostics.analysis.landscape import Landscape

    landscape = Landscape.load(land)
    assert landscape.train_loss.shape == (2, 5)
    middle = landscape.train_loss[:, 2]
    assert np.allclose(middle, middle[0])  # t = 0 is the unperturbed model for every direction

    stats = tmp_path / "stats.json"
    assert main(["stats", *COMMON, "--out", str(stats)]) == 0
    payload = json.loads(stats.read_text())
    assert payload["format"] == "lanczos-optim/stats"
    assert abs(payload["loss_mean"] - landscape.loss0) < 1e-10

    diag = tmp_path / "diag.npz"
    argv = ["diagonal", *COMMON, "--kinds", "diag_ggn_exact", "--spectrum", str(spectrum_file)]
    assert main([*argv, "--out", str(diag)]) == 0
    assert "W1 to Lanczos" in capsys.readouterr().out
    with np.load(diag, allow_pickle=False) as f:
        assert f["diag_ggn_exact"].shape == (Spectrum.load(spectrum_file).num_params,)

    for src in (spectrum_file, land, diag):
        out = tmp_path / f"{src.stem}-plot.png"
        assert main(["plot", str(src), "--out", str(out)]) == 0
        assert out.stat().st_size > 1000


def test_train_then_analyse_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--dataset", "digits", "--subset", "128", "--epochs", "1"]
    assert main([*argv, "--wandb", "disabled", "--out", str(out), "--schedule", "constant"]) == 0
    ckpts = sorted(out.glob("checkpoint-*.pt"))
    assert len(ckpts) == 1
    assert (out / "stats.jsonl").is_file()
    spec = tmp_path / "s.npz"
    assert (
        main(
            [
                "spectrum",
                "--checkpoint",
                str(ckpts[0]),
                "--subset",
                "64",
                "--steps",
                "5",
                "--out",
                str(spec),
            ]
        )
        == 0
    )
    assert Spectrum.load(spec).meta["num_params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert main(["plot", str(out / "stats.jsonl"), "--out", str(tmp_path / "curves.png")]) == 0
    capsys.readouterr()  # drop the progress bars
    # A checkpoint of another model: one clear line, no file.
    bad = tmp_path / "bad.npz"
    argv = ["spectrum", "--checkpoint", str(ckpts[0]), "--model", "small_cnn", "--out", str(bad)]
    assert main(argv) == 2
    _one_line_error(capsys, "checkpoint")
    assert not bad.exists()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["spectrum", "--curvature", "fisher", "--subset", "32"], ["fisher", "hessian"]),
        (["spectrum", "--model", "resnet9000", "--subset", "32"], ["resnet9000", "mlp"]),
        (["spectrum", "--dataset", "imagenet"], ["imagenet", "digits"]),
        (["spectrum", "--bn-mode", "both", "--subset", "32"], ["both", "eval"]),
        (["stats", "--dataset", "fashion-mnist", "--data-path", "/nonexistent"], ["nonexistent"]),
        (["train", "--optimizer", "sgdd", "--epochs", "1", "--subset", "32"], ["sgdd", "sgd"]),
        (["train", "--schedule", "stepwise", "--epochs", "1", "--subset", "32"], ["stepwise"]),
        (["landscape", "--spectrum", "/nonexistent.npz"], ["nonexistent.npz"]),
    ],
)
def test_user_mistakes_give_one_line_and_status_2(argv, needles, tmp_path, capsys):
    out = tmp_path / "result.npz"
    out.write_bytes(b"keep me")
    extra = ["--out", str(out)] if argv[0] != "train" else ["--out", str(tmp_path / "t")]
    assert main([*argv, *extra]) == 2
    _one_line_error(capsys, *needles)
    assert out.read_bytes() == b"keep me"


def test_plot_refuses_files_of_the_wrong_kind(tmp_path, capsys):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    assert main(["plot", str(foreign)]) == 2
    _one_line_error(capsys, "not a lanczos-optim result")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"format": "lanczos-optim/stats"}))
    assert main(["plot", str(stats)]) == 2
    _one_line_error(capsys, "stats.json")
    checkpoint = tmp_path / "c.pt"
    torch.save({"a": torch.ones(1)}, checkpoint)
    assert main(["plot", str(checkpoint)]) == 2
    _one_line_error(capsys)
    assert main(["plot", str(tmp_path / "missing.npz")]) == 2
    _one_line_error(capsys, "does not exist")
    assert not list(tmp_path.glob("*.png"))


# --------------------------------------------------------------- issue 11: train and demo
def _offline_runs(folder: Path) -> list[Path]:
    return sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))


def _wandb_records():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_wandb_records", Path(__file__).parent.parent / "_wandb_records.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version_and_defaults_in_help(capsys):
    from lanczos_optim import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lanczos-optim {__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = "sgd 0.05 with momentum 0.9, adam 0.001, lanczos_newton 1, lanczos_saddle_free 0.1"
    assert defaults in text
    assert "--epochs EPOCHS epoch budget (default: 10)" in text
    assert "(0: last only) (default: 1)" in text
    assert "--download" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--out OUT folder for every output (default: results/demo)" in text


def test_train_without_lr_learns_and_records_the_lr_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "run"
    argv = ["train", "--epochs", "3", "--wandb", "offline", "--out", str(out)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert rows[-1]["test_acc"] > 0.6  # torch's SGD default (lr 1e-3, no momentum): 0.13
    assert rows[0]["lr"] == 0.05
    (run,) = _offline_runs(out)
    config = next(r["__config__"] for r in _wandb_records().history(run) if "__config__" in r)
    assert config["lr"] == 0.05
    assert config["optimizer_kwargs"] == {"lr": 0.05, "momentum": 0.9}
    assert config["opt"] == {"lr": 0.05, "momentum": 0.9}


def test_folder_error_names_the_cli_flags(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--subset", "40", "--epochs", "1", "--wandb", "disabled", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 2
    err = _one_line_error(capsys, "--resume", "--overwrite")
    assert "resume=" not in err
    assert "overwrite=True" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_mnist_error_names_an_option_train_accepts(tmp_path, capsys):
    argv = ["train", "--dataset", "mnist", "--data-path", str(tmp_path), "--wandb", "disabled"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys, "lanczos-optim train --download")
    assert build_parser().parse_args(["train", "--download"]).download is True
    assert "mnist" in err


def test_spectra_are_saved_without_wandb_on_held_out_data(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--subset", "64", "--epochs", "2", "--wandb", "disabled", "--out", str(out)]
    assert main([*argv, "--spectrum-every", "1", "--optimizer", "lanczos_newton"]) == 0
    files = sorted((out / "spectra").iterdir())
    assert [p.name for p in files] == ["spectrum-epoch-00001.npz", "spectrum-epoch-00002.npz"]
    spectrum = Spectrum.load(files[-1])
    assert spectrum.meta["num_samples"] == 360  # digits' test split, not the training data
    assert (spectrum.meta["epoch"], spectrum.meta["lr"]) == (2, 1.0)


class _SignalAt:
    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_step(self, step) -> None:
        if (step.epoch, step.batch) == self.at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_keeps_progress_and_resume_continues_the_wandb_run(tmp_path, monkeypatch, capsys):
    import signal

    import diagnostics.training.harness as training

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        _ctrl_c_then_resume(tmp_path, monkeypatch, capsys, training)
    finally:
        signal.signal(signal.SIGINT, before)


def _ctrl_c_then_resume(tmp_path, monkeypatch, capsys, training):

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    real = training.train_network

    def with_ctrl_c(config, **kwargs):
        return real(config, **{**kwargs, "callbacks": [*kwargs["callbacks"], _SignalAt(5, 1)]})

    out = tmp_path / "run"
    argv = ["train", "--subset", "200", "--batch-size", "50", "--wandb", "offline"]
    monkeypatch.setattr(training, "train_network", with_ctrl_c)
    # The run of the issue: 15 epochs, a checkpoint due every 10, interrupted in epoch 5.
    assert main([*argv, "--epochs", "15", "--checkpoint-every", "10", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted: stopped by SIGINT after 4 epochs and 2 batches" in err
    assert f"continue with --resume {out}" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00004-b00002.pt"]
    (first,) = _offline_runs(out)
    run_id = first.stem.removeprefix("run-")
    assert (out / "wandb-run-id.txt").read_text() == run_id

    monkeypatch.setattr(training, "train_network", real)
    assert main([*argv, "--epochs", "15", "--checkpoint-every", "10", "--resume", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    runs = _offline_runs(out)
    assert len(runs) == 2
    assert {r.stem for r in runs} == {f"run-{run_id}"}  # the same W&B run, continued


def test_sigterm_exit_status(monkeypatch, capsys):
    import signal

    from diagnostics.cli import _commands
    from diagnostics.training.harness import TrainingInterrupted

    def stopped(args):
        raise TrainingInterrupted(
            "stopped by SIGTERM after 1 epochs", signum=signal.SIGTERM, checkpoint=None,
            epochs_done=1, batches_done=0,
        )  # fmt: skip

    monkeypatch.setattr(_commands, "run_train", stopped)
    assert main(["train"]) == 128 + signal.SIGTERM
    _one_line_error(capsys, "lanczos-optim train: interrupted: stopped by SIGTERM")


def test_resume_with_other_data_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--subset", "64", "--epochs", "1", "--wandb", "offline", "--out", str(out)]
    assert main(argv) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    again = [
        "train",
        "--subset",
        "128",
        "--epochs",
        "2",
        "--wandb",
        "offline",
        "--resume",
        str(out),
    ]
    assert main(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (
        "trained on data set 'digits' with subset 64; this run asks for 'digits' with subset"
        in err[0]
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize(
    ("bad", "needles"),
    [
        (["--schedule", "stepwise"], ["stepwise", "linear"]),
        (["--spectrum-every", "0"], ["--spectrum-every", "got 0"]),
        (
            ["--spectrum-every", "1", "--spectrum-steps", "0"],
            ["--spectrum-steps:", "lanczos_steps value: 0"],
        ),
        (["--opt", "momentum=abc"], ["--opt momentum: expected a number, got 'abc' (str)"]),
        (["--opt", "lr='1'"], ["--opt lr: expected a number, got \"'1'\" (str)"]),
        (
            ["--optimizer", "lanczos_newton", "--opt", "adaptive_damping=yes"],
            ["--opt adaptive_damping: expected true or false, got 'yes' (str)"],
        ),
        (["--batch-size", "0"], ["batch_size must be an int >= 1; got 0"]),
        (["--model", "resnet9000"], ["resnet9000", "mlp"]),
        (["--swa", "--swa-start", "5", "--epochs", "2"], ["swa_start", "5"]),
    ],
)
def test_every_argument_is_checked_before_wandb_or_any_file(
    bad, needles, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "run"
    argv = ["train", "--subset", "32", "--epochs", "1", "--wandb", "offline", "--out", str(out)]
    assert main([*argv, *bad]) == 2
    _one_line_error(capsys, *needles)
    assert not out.exists()
    assert not (tmp_path / "wb").exists()


def _train_then_sigterm(argv, monkeypatch, capsys, at):
    """Run ``lanczos-optim train`` with a SIGTERM sent at ``at`` = (epoch, batch)."""
    import signal

    import diagnostics.training.harness as training

    real = training.train_network

    class _Term:
        def on_step(self, step) -> None:
            if (step.epoch, step.batch) == at:
                os.kill(os.getpid(), signal.SIGTERM)

    def with_sigterm(config, **kwargs):
        return real(config, **{**kwargs, "callbacks": [*kwargs["callbacks"], _Term()]})

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(training, "train_network", with_sigterm)
    try:
        assert main(argv) == 128 + signal.SIGTERM
    finally:
        monkeypatch.setattr(training, "train_network", real)
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "continue with --resume " in err
    return err.split("continue with ")[1].split()  # the printed command's options


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "stats.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_the_printed_continue_command_works_verbatim_and_is_bit_exact(
    tmp_path, monkeypatch, capsys
):
    from diagnostics.training.checkpoint import latest_checkpoint, read_checkpoint

    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = ["train", "--optimizer", "lanczos_newton", "--opt", "lanczos_steps=3", "--opt",
           "damping=0.5", "--lr", "0.5", "--subset", "96", "--batch-size", "32", "--epochs", "3",
           "--seed", "4", "--schedule", "cosine", "--quiet"]  # fmt: skip
    assert main([*run, "--out", str(tmp_path / "whole")]) == 0
    printed = _train_then_sigterm([*run, "--out", str(tmp_path / "cut")], monkeypatch, capsys,
                                  at=(2, 1))  # fmt: skip
    assert printed == ["--resume", str(tmp_path / "cut")]
    assert main(["train", *printed]) == 0  # verbatim: optimiser, its options, data, ... restored
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    whole = read_checkpoint(latest_checkpoint(tmp_path / "whole"))
    cut = read_checkpoint(latest_checkpoint(tmp_path / "cut"))
    for key, value in whole["model"].items():
        assert torch.equal(value, cut["model"][key]), key
    assert cut["meta"]["optimizer_kwargs"] == whole["meta"]["optimizer_kwargs"]


def test_resume_refuses_unsafe_options_in_one_line_and_extends_epochs(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    run = ["train", "--subset", "96", "--batch-size", "32", "--epochs", "2", "--quiet"]
    _train_then_sigterm([*run, "--out", str(out)], monkeypatch, capsys, at=(2, 0))
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    for bad, needles in (
        (["--batch-size", "16"], ["--batch-size 16", "trained with 32"]),
        (["--model", "small_cnn"], ["--model 'small_cnn'", "trained with 'mlp'"]),
        (["--optimizer", "adam"], ["--optimizer 'adam'", "trained with 'sgd'"]),
        (["--opt", "momentum=0.5"], ["--opt momentum=0.5", "momentum=0.9"]),
        (["--lr", "0.1"], ["--lr lr=0.1", "lr=0.05"]),
        (["--seed", "1"], ["--seed 1", "trained with 0"]),
    ):
        assert main(["train", "--resume", str(out), *bad]) == 2, bad
        _one_line_error(capsys, *needles)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    same = ["--batch-size", "32", "--optimizer", "SGD", "--lr", "0.05", "--epochs", "3"]
    with pytest.warns(UserWarning, match="different epochs"):  # a longer schedule
        assert main(["train", "--resume", str(out), *same]) == 0
    assert [row["epoch"] for row in _rows(out)] == [1, 2, 3]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_train_bars_only_on_a_terminal_and_not_with_quiet(tmp_path, monkeypatch):
    argv = ["train", "--subset", "32", "--epochs", "1", "--wandb", "disabled"]
    for extra, stream, shown in (
        ([], _Terminal(), True),
        (["--quiet"], _Terminal(), False),
        ([], io.StringIO(), False),
    ):
        monkeypatch.setattr(sys, "stderr", stream)
        out = tmp_path / f"run{len(stream.getvalue())}{extra}"
        assert main([*argv, *extra, "--out", str(out), "--overwrite"]) == 0
        assert ("training" in stream.getvalue()) is shown, (extra, stream.getvalue())


def test_demo_passes_quiet(monkeypatch):
    import diagnostics.cli.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kwargs: seen.update(kwargs))
    assert main(["demo", "--quiet", "--quick"]) == 0
    assert seen["quiet"] is True


def test_a_blank_wandb_mode_counts_as_unset_and_wandb_warns_of_no_git_root(tmp_path):
    env = {**os.environ, "WANDB_MODE": "", "HOME": str(tmp_path)}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_DIR", None)
    argv = ["train", "--subset", "32", "--epochs", "1", "--out", "runC"]
    code = "import sys; from diagnostics.cli.app import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "validation error" not in proc.stderr
    assert "git root" not in proc.stderr + proc.stdout
    assert len(list((tmp_path / "runC" / "wandb").glob("offline-run-*"))) == 1


def test_the_continue_command_keeps_every_checkpoint_of_a_keep_all_run(
    tmp_path, monkeypatch, capsys
):
    # --keep-checkpoints 0 (keep all) and --checkpoint-every come from the checkpoint: the
    # printed command used to prune a keep-all run to the default 3 newest checkpoints.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    run = ["train", "--subset", "64", "--batch-size", "32", "--epochs", "5", "--quiet",
           "--keep-checkpoints", "0", "--checkpoint-every", "1", "--out", str(out)]  # fmt: skip
    printed = _train_then_sigterm(run, monkeypatch, capsys, at=(4, 1))
    assert main(["train", *printed]) == 0
    names = sorted(p.name for p in out.glob("checkpoint-*.pt"))
    assert [n for n in names if "-b" not in n] == [f"checkpoint-{e:05d}.pt" for e in range(1, 6)]


def test_the_continue_command_names_the_options_checkpoints_do_not_record(
    tmp_path, monkeypatch, capsys
):
    import shlex

    out = tmp_path / "my run"
    run = ["train", "--subset", "64", "--batch-size", "32", "--epochs", "2", "--quiet",
           "--wandb", "disabled", "--spectrum-every", "1", "--spectrum-steps", "4",
           "--out", str(out)]  # fmt: skip
    printed = _train_then_sigterm(run, monkeypatch, capsys, at=(1, 1))
    assert printed[0] == "--resume"
    line = " ".join(printed)
    words = shlex.split(line)  # the printed text as a shell reads it
    assert words == ["--resume", str(out), "--wandb", "disabled", "--spectrum-every", "1",
                     "--spectrum-steps", "4"]  # fmt: skip
    assert main(["train", *words]) == 0
    assert sorted(p.name for p in (out / "spectra").iterdir())


def test_resume_with_fewer_epochs_than_trained_is_refused_in_one_line(
    tmp_path, monkeypatch, capsys
):
    # It used to load the checkpoint, train nothing and print "trained 1 epochs".
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    argv = ["train", "--subset", "64", "--batch-size", "32", "--epochs", "2", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", "--resume", str(out), "--epochs", "1"]) == 2
    _one_line_error(capsys, "--epochs 1", "trained 2 epochs already")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0


def test_python_dash_m_diagnostics_cli_runs_the_command():
    # ``python -m diagnostics.cli`` worked while the CLI was one module; the package needs a
    # __main__ to keep it working.
    proc = subprocess.run(
        [sys.executable, "-m", "diagnostics.cli", "plot", "no-such-result.npz"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lanczos-optim plot: error:"), proc.stderr
    assert "Warning" not in proc.stderr


def test_missing_data_files_are_reported_before_wandb_or_any_file(tmp_path, monkeypatch, capsys):
    # A wrong --data-path used to surface only after W&B had created a run in the new folder.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--data-path", str(tmp_path / "empty"), "--epochs",
            "1", "--wandb", "offline", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, "mnist is not available under", "--download")
    assert not out.exists()
    assert not (tmp_path / "wb").exists()


def test_train_with_adaptive_damping_from_the_command_line(tmp_path, monkeypatch):
    from diagnostics.training.checkpoint import latest_checkpoint, read_checkpoint

    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "lanczos_newton", "--opt", "adaptive_damping=true", "--opt",
            "lanczos_steps=3", "--subset", "64", "--batch-size", "32", "--epochs", "1",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    groups = read_checkpoint(latest_checkpoint(out))["optimizer"]["param_groups"]
    assert groups[0]["adaptive_damping"] is True
    assert groups[0]["damping"] != 1.0  # it adapted from the default start

"""train_network: learning, any optimiser, SWA, bit-exact resume, output files, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from diagnostics.training._setup import ResultsExistError
from diagnostics.training.checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint
from diagnostics.training.datasets import load_dataset
from diagnostics.training.harness import Callback, TrainingInterrupted, TrainingStep, train_network
from diagnostics.training.optimizers import (
    build_optimizer,
    default_hyperparameters,
    differentiates_itself,
    resolve_hyperparameters,
    resolve_optimizer,
)


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    return load_dataset("digits", subset=96, seed=1), load_dataset("digits", train=False, subset=64)


def _dropout_mlp() -> nn.Module:
    # Dropout draws from the global torch RNG: resume must restore it.
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10)
    )


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)
    )


class _Recorder(Callback):
    def __init__(self) -> None:
        self.steps: list[TrainingStep] = []
        self.epochs: list[tuple[int, dict]] = []
        self.snapshots: list[list[torch.Tensor]] = []
        self.ended = 0

    def on_step(self, step: TrainingStep) -> None:
        self.steps.append(step)

    def on_epoch_end(self, epoch: int, metrics: dict, model: nn.Module, optimizer: object) -> None:
        self.epochs.append((epoch, metrics))
        self.snapshots.append([p.detach().clone() for p in model.parameters()])

    def on_train_end(self, result: object) -> None:
        self.ended += 1


def test_training_on_digits_reduces_the_loss(tmp_path: Path) -> None:
    rec = _Recorder()
    result = train_network(
        model="small_cnn", dataset="digits", subset=200, epochs=4, batch_size=20, lr=0.2,
        optimizer_kwargs={"momentum": 0.9}, schedule="linear", checkpoint_dir=tmp_path,
        checkpoint_every=2, callbacks=[rec], progress=False,
    )  # fmt: skip
    hist = result.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    # Equation 11 with T = 4: epochs 0-2 at lr, epoch 3 (t/T = 0.75) at 1 - 0.99 * 0.625.
    assert [h["lr"] for h in hist] == pytest.approx([0.2, 0.2, 0.2, 0.2 * 0.38125])
    # Files: the statistics (one JSON object per epoch) and checkpoints after epochs 2 and 4.
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert rows == hist
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00002.pt", "checkpoint-00004.pt", "stats.jsonl",
    ]  # fmt: skip
    meta = read_checkpoint(tmp_path / "checkpoint-00004.pt")["meta"]
    assert (meta["model"], meta["input_shape"], meta["num_classes"]) == ("small_cnn", [1, 8, 8], 10)
    # Callbacks: one on_step per batch (10 per epoch), epochs from 1, on_train_end once.
    assert len(rec.steps) == 40
    assert [s.step for s in rec.steps] == list(range(1, 41))
    assert rec.steps[-1].epoch == 4
    assert rec.steps[-1].batch == 9
    assert rec.steps[0].optimizer_info is None
    assert [e for e, _ in rec.epochs] == [1, 2, 3, 4]
    assert rec.ended == 1


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("adam", {"lr": 0.01}),
        ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
        ("RMSprop", {"lr": 0.01}),
        ("lbfgs", {"lr": 0.5, "max_iter": 2}),
        ("lanczos_saddle_free", {"lr": 0.5, "damping": 1.0, "lanczos_steps": 3}),
    ],
)
def test_any_optimizer_by_name(digits: tuple, name: str, kwargs: dict) -> None:
    train, test = digits
    rec = _Recorder()
    torch.manual_seed(0)
    model = _bn_net()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_network(
        model=model, dataset=train, test_dataset=test, epochs=1, batch_size=48, optimizer=name,
        optimizer_kwargs=kwargs, schedule="constant", callbacks=[rec], progress=False,
    )  # fmt: skip
    assert type(result.optimizer).__name__.lower() == resolve_optimizer(name).__name__.lower()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(rec.steps) == 2
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in rec.steps)
    if name.startswith("lanczos"):
        assert differentiates_itself(result.optimizer)
        assert rec.steps[0].optimizer_info.num_products == 3


def test_swa_averages_the_snapshots_and_updates_batchnorm(digits: tuple) -> None:
    train, _ = digits
    rec = _Recorder()
    torch.manual_seed(0)
    result = train_network(
        model=_bn_net(), dataset=train, epochs=5, batch_size=32, lr=0.1,
        optimizer_kwargs={"momentum": 0.9}, swa=True, swa_start=2, swa_lr=0.02,
        callbacks=[rec], progress=False,
    )  # fmt: skip
    assert result.swa_model is not None
    # Averaged weights = mean of the weights after epochs 3, 4, 5 (swa_start = 2 counts from 0).
    for i, p in enumerate(result.swa_model.parameters()):
        mean = torch.stack([snap[i] for snap in rec.snapshots[2:]]).mean(0)
        torch.testing.assert_close(p, mean, rtol=1e-6, atol=1e-7)
    # Linear schedule over swa_start epochs down to swa_lr, then SWALR holds swa_lr.
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.02])
    # update_bn: with one full-data batch, the running mean is the mean of the BN inputs.
    swa = result.swa_model
    with torch.no_grad():
        features = swa[1](swa[0](train.tensors[0]))
    torch.testing.assert_close(swa[2].running_mean, features.mean(0), rtol=1e-5, atol=1e-6)
    assert set(result.swa_metrics) == {"train_loss", "train_acc"}  # no test set given


class _Crash(Exception):
    pass


class _CrashInEpoch2(Callback):
    def on_step(self, step: TrainingStep) -> None:
        if step.epoch == 2 and step.batch == 1:
            raise _Crash


def _bn_dropout_net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(8, 10),
    )


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        elif isinstance(value, dict):
            _assert_states_equal(value, other)
        else:
            assert value == other, key


@pytest.mark.parametrize(
    ("optimizer", "kwargs", "extra"),
    [
        ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}, {}),
        ("lanczos_newton",
         {"lr": 0.5, "lanczos_steps": 3, "momentum": 0.5, "krylov_start": "random"}, {}),
        ("sgd", {"lr": 0.1, "momentum": 0.9}, {"swa": True, "swa_start": 0, "swa_lr": 0.05}),
    ],
)  # fmt: skip
def test_resume_continues_bit_exactly(
    tmp_path: Path, digits: tuple, optimizer: str, kwargs: dict, extra: dict
) -> None:
    train, test = digits
    common = {
        "dataset": train, "test_dataset": test, "epochs": 2, "batch_size": 32, "seed": 3,
        "optimizer": optimizer, "optimizer_kwargs": kwargs, "progress": False,
        "checkpoint_every": 1, **extra,
    }  # fmt: skip
    factory = _bn_dropout_net if extra else _dropout_mlp
    torch.manual_seed(11)
    whole = train_network(model=factory(), checkpoint_dir=tmp_path / "a", **common)

    torch.manual_seed(11)
    with pytest.raises(_Crash):  # stops in the middle of epoch 2, after checkpoint-00001
        train_network(
            model=factory(), checkpoint_dir=tmp_path / "b", callbacks=[_CrashInEpoch2()], **common
        )
    torch.manual_seed(12)  # a different initialisation: everything must come from the checkpoint
    resumed = train_network(model=factory(), resume=tmp_path / "b", **common)

    _assert_states_equal(whole.model.state_dict(), resumed.model.state_dict())
    _assert_states_equal(whole.optimizer.state_dict(), resumed.optimizer.state_dict())
    if extra:
        _assert_states_equal(whole.swa_model.state_dict(), resumed.swa_model.state_dict())
        assert whole.swa_metrics == resumed.swa_metrics
    strip = [{k: v for k, v in row.items() if k != "time"} for row in whole.history]
    assert [{k: v for k, v in row.items() if k != "time"} for row in resumed.history] == strip
    assert len((tmp_path / "b" / "stats.jsonl").read_text().splitlines()) == 2


def _error_cases(tmp: Path) -> list[tuple[dict, type[Exception], str]]:
    return [
        ({"model": "resnet9"}, ValueError,
         r"Unknown model 'resnet9'; allowed: vgg16, vgg16_bn, .*mlp"),
        ({"dataset": "imagenet"}, ValueError,
         r"Unknown dataset 'imagenet'; allowed: digits, fashion-mnist"),
        ({"optimizer": "sgdd"}, ValueError,
         r"Unknown optimizer 'sgdd'; allowed: sgd, adam, lanczos_newton, lanczos_saddle_free, "
         r"swats, adahessian, sophiah, shampoo, soap, kron, kfac, "
         r"or the name of any torch.optim optimizer class"),
        ({"schedule": "step"}, ValueError,
         r"Unknown schedule 'step'; allowed: linear, cosine, constant"),
        ({"data_path": tmp / "missing"}, FileNotFoundError, r"Data path .*missing' does not exist"),
        ({"dataset": "fashion-mnist", "data_path": tmp}, FileNotFoundError,
         r"apt-get install dataset-fashion-mnist"),
        ({"resume": tmp / "nope.pt"}, FileNotFoundError, r"nope.pt' does not exist"),
        ({"resume": tmp}, FileNotFoundError, r"No checkpoint-\*\.pt file to resume from"),
        ({"epochs": 0}, ValueError, r"epochs must be an int >= 1; got 0"),
        ({"lr": 0.1, "optimizer_kwargs": {"lr": 0.2}}, ValueError, r"lr given twice"),
        ({"swa": True, "swa_start": 5}, ValueError, r"swa_start must be an int in \[0, epochs=2\)"),
        ({"optimizer_kwargs": {"betas": (0.9, 0.9)}}, TypeError, r"SGD: .*betas"),
        ({"callbacks": [object()]}, TypeError, r"has none of the methods on_step"),
    ]  # fmt: skip


def test_bad_input_raises_clear_errors_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for kwargs, exc, match in _error_cases(tmp_path):
        args = {"model": "mlp", "dataset": "digits", "epochs": 2, "subset": 20, "progress": False,
                "checkpoint_dir": out, **kwargs}  # fmt: skip
        with pytest.raises(exc, match=match):
            train_network(**args)
        assert not out.exists(), kwargs


def test_existing_results_and_foreign_checkpoints_are_left_untouched(tmp_path: Path) -> None:
    common = {"dataset": "digits", "subset": 40, "epochs": 1, "batch_size": 40, "progress": False}
    train_network(model="mlp", checkpoint_dir=tmp_path, **common)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="already holds training results; pass resume="):
        train_network(model="mlp", checkpoint_dir=tmp_path, **common)
    with pytest.raises(ValueError, match=r"does not match \(nothing was loaded\): model .*shape"):
        train_network(model="small_cnn", resume=tmp_path, **{**common, "epochs": 2})
    with pytest.raises(ValueError, match=r"optimizer class 'SGD' in the checkpoint, 'Adam' here"):
        train_network(model="mlp", resume=tmp_path, optimizer="adam", **{**common, "epochs": 2})
    with pytest.raises(ValueError, match=r"trained on data set 'digits' with subset 40; this run "):
        train_network(model="mlp", resume=tmp_path, **{**common, "epochs": 2, "subset": 50})
    with pytest.raises(ValueError, match=r"asks for 'synthetic' with subset 40"):
        train_network(
            model="mlp", resume=tmp_path, **{**common, "epochs": 2, "dataset": "synthetic"}
        )
    (tmp_path / "checkpoint-00002.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="Cannot read checkpoint"):
        train_network(model="mlp", resume=tmp_path, **{**common, "epochs": 3})
    (tmp_path / "checkpoint-00002.pt").unlink()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_optimizer_helpers(
    monkeypatch: pytest.MonkeyPatch, digits: tuple
) -> None:
    for stream, shown in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        train_network(model="mlp", dataset=digits[0], epochs=1, batch_size=48, progress=True)
        assert ("training" in stream.getvalue()) is shown
        assert ("epoch 1" in stream.getvalue()) is shown
    monkeypatch.undo()
    opt = build_optimizer("SGD", nn.Linear(2, 2).parameters(), lr=0.1)
    assert not differentiates_itself(opt)
    opt.differentiates_closure = True  # explicit opt-in of a third-party optimiser
    assert differentiates_itself(opt)


def test_checkpoint_written_by_hand_resumes(tmp_path: Path, digits: tuple) -> None:
    torch.manual_seed(0)
    model = _dropout_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "checkpoint-00001.pt", model=model, epoch=1, optimizer=opt)
    with pytest.raises(ValueError, match="holds no scheduler state"):
        train_network(
            model=_dropout_mlp(), dataset=digits[0], epochs=2, resume=tmp_path, progress=False
        )


# --------------------------------------------------------------- issue 11: defaults, interrupts
def test_default_hyperparameters_learn_and_are_recorded(tmp_path: Path) -> None:
    # torch's SGD default (lr 1e-3, no momentum) left digits at about 13 % after 3 epochs.
    result = train_network(
        model="mlp", dataset="digits", epochs=3, checkpoint_dir=tmp_path, progress=False
    )
    assert result.history[-1]["test_acc"] > 0.6
    meta = read_checkpoint(tmp_path / "checkpoint-00003.pt")["meta"]
    assert meta["lr"] == 0.05
    assert meta["optimizer_kwargs"] == {"lr": 0.05, "momentum": 0.9}
    assert result.history[0]["lr"] == 0.05
    # Given keys win over the defaults; the rest of the defaults stay.
    opt = train_network(
        model="mlp", dataset="digits", subset=40, epochs=1, optimizer_kwargs={"momentum": 0.0},
        progress=False,
    ).optimizer  # fmt: skip
    assert (opt.defaults["lr"], opt.defaults["momentum"]) == (0.05, 0.0)
    assert default_hyperparameters("adam") == {"lr": 1e-3}
    assert default_hyperparameters("lanczos_newton") == {"lr": 1.0}
    assert default_hyperparameters("lanczos_saddle_free") == {"lr": 0.1}
    assert resolve_hyperparameters("RMSprop", None, 0.3) == {"lr": 0.3}


@pytest.fixture
def default_signals() -> object:
    """SIGINT and SIGTERM handled as in an interactive shell (a background job ignores SIGINT)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def _handlers_restored() -> bool:
    return (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )


class _Signal(Callback):
    """Sends a signal to this process at a given (epoch, batch) or at an epoch's end."""

    def __init__(self, signum: int, epoch: int, batch: int | None) -> None:
        self.signum, self.epoch, self.batch = signum, epoch, batch
        self.interrupted: list = []
        self.started: list[dict] = []

    def on_train_start(self, config: dict) -> None:
        self.started.append(config)

    def on_step(self, step: TrainingStep) -> None:
        if (step.epoch, step.batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)

    def on_epoch_end(self, epoch: int, metrics: dict, model: nn.Module, optimizer: object) -> None:
        if self.batch is None and epoch == self.epoch:
            os.kill(os.getpid(), self.signum)

    def on_interrupt(self, interrupted: object) -> None:
        self.interrupted.append(interrupted)


class _Augmented(torch.utils.data.Dataset):
    """Adds noise drawn from torch's global generator to every sample (like an augmentation)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[i]
        return x + 0.1 * torch.randn(x.shape), y


@pytest.mark.parametrize("augmented", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.usefixtures("default_signals")
def test_signal_mid_epoch_saves_and_resume_is_bit_exact(
    tmp_path: Path, digits: tuple, signum: int, augmented: bool
) -> None:
    train, test = digits
    if augmented:
        train = _Augmented(train)
    common = {
        "dataset": train, "test_dataset": test, "epochs": 3, "batch_size": 16, "seed": 3,
        "optimizer_kwargs": {"lr": 0.1, "momentum": 0.9}, "progress": False,
        "checkpoint_every": 10,  # the run of the issue: no checkpoint due before the end
    }  # fmt: skip
    torch.manual_seed(11)
    whole = train_network(model=_dropout_mlp(), checkpoint_dir=tmp_path / "a", **common)

    torch.manual_seed(11)
    spy = _Signal(signum, epoch=2, batch=2)  # after 1 epoch and 3 batches of the second
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIG\w+ after 1 epochs and 3 batch"):
        train_network(
            model=_dropout_mlp(), checkpoint_dir=tmp_path / "b", callbacks=[spy], **common
        )
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "checkpoint-00001-b00003.pt", "stats.jsonl",
    ]  # fmt: skip
    (err,) = spy.interrupted
    assert (err.signal_name, err.epochs_done, err.batches_done) == (
        signal.Signals(signum).name, 1, 3,
    )  # fmt: skip
    assert err.checkpoint == tmp_path / "b" / "checkpoint-00001-b00003.pt"
    assert _handlers_restored()

    torch.manual_seed(12)  # everything must come from the checkpoint
    spy2 = _Signal(signum, epoch=0, batch=0)
    resumed = train_network(model=_dropout_mlp(), resume=tmp_path / "b", callbacks=[spy2], **common)
    assert spy2.started[0]["resumed_from"].endswith("checkpoint-00001-b00003.pt")
    _assert_states_equal(whole.model.state_dict(), resumed.model.state_dict())
    _assert_states_equal(whole.optimizer.state_dict(), resumed.optimizer.state_dict())
    strip = [{k: v for k, v in row.items() if k != "time"} for row in whole.history]
    assert [{k: v for k, v in row.items() if k != "time"} for row in resumed.history] == strip


@pytest.mark.usefixtures("default_signals")
def test_signal_at_epoch_end_saves_that_epoch(tmp_path: Path, digits: tuple) -> None:
    spy = _Signal(signal.SIGINT, epoch=2, batch=None)
    with pytest.raises(TrainingInterrupted, match="after 2 epochs; saved"):
        train_network(
            model="mlp", dataset=digits[0], epochs=5, checkpoint_every=10, progress=False,
            checkpoint_dir=tmp_path, callbacks=[spy],
        )  # fmt: skip
    assert latest_checkpoint(tmp_path).name == "checkpoint-00002.pt"
    assert read_checkpoint(tmp_path / "checkpoint-00002.pt")["epoch"] == 2


def test_checkpoint_every_epoch_by_default_keeping_the_last_ones(tmp_path: Path) -> None:
    common = {"model": "mlp", "dataset": "digits", "subset": 40, "progress": False}
    result = train_network(epochs=5, checkpoint_dir=tmp_path / "a", **common)
    names = [p.name for p in result.checkpoints]
    assert names == ["checkpoint-00003.pt", "checkpoint-00004.pt", "checkpoint-00005.pt"]
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pt")) == names
    train_network(epochs=4, checkpoint_dir=tmp_path / "b", keep_checkpoints=0, **common)
    assert len(list((tmp_path / "b").glob("*.pt"))) == 4
    # overwrite replaces an earlier run: its later checkpoints must not stay the "latest".
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint-00009.pt").write_bytes(b"an earlier run's")
    train_network(epochs=3, checkpoint_dir=tmp_path / "c", keep_checkpoints=1, overwrite=True,
                  **common)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "c").glob("*.pt")) == ["checkpoint-00003.pt"]
    with pytest.raises(ValueError, match="keep_checkpoints must be an int >= 0; got -1"):
        train_network(epochs=1, keep_checkpoints=-1, **common)


@pytest.mark.usefixtures("default_signals")
def test_a_second_signal_stops_at_once(tmp_path: Path, digits: tuple) -> None:
    class Twice(Callback):
        def on_step(self, step: TrainingStep) -> None:
            if (step.epoch, step.batch) == (1, 0):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as info:
        train_network(
            model="mlp", dataset=digits[0], epochs=2, batch_size=16, progress=False,
            checkpoint_dir=tmp_path, callbacks=[Twice()],
        )  # fmt: skip
    assert not isinstance(info.value, TrainingInterrupted)
    assert not list(tmp_path.glob("checkpoint-*"))
    assert _handlers_restored()


def test_an_ignored_signal_stays_ignored(tmp_path: Path, digits: tuple) -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        result = train_network(
            model="mlp", dataset=digits[0], epochs=2, batch_size=16, progress=False,
            checkpoint_dir=tmp_path, callbacks=[_Signal(signal.SIGINT, epoch=1, batch=0)],
        )  # fmt: skip
        assert [row["epoch"] for row in result.history] == [1, 2]  # not interrupted
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_overwrite_replaces_the_earlier_run_only_once_the_arguments_are_valid(
    tmp_path: Path,
) -> None:
    common = {"model": "mlp", "dataset": "digits", "subset": 40, "progress": False}
    out = tmp_path / "o"
    train_network(epochs=4, checkpoint_dir=out, **common)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="model"):
        train_network(epochs=2, checkpoint_dir=out, overwrite=True, **{**common, "model": "nope"})
    assert sorted(p.name for p in out.iterdir()) == before  # an invalid call deletes nothing
    train_network(epochs=2, checkpoint_dir=out, overwrite=True, **common)
    assert latest_checkpoint(out).name == "checkpoint-00002.pt"
    assert sorted(p.name for p in out.glob("*.pt")) == [
        "checkpoint-00001.pt",
        "checkpoint-00002.pt",
    ]
    assert len((out / "stats.jsonl").read_text().splitlines()) == 2


def test_resuming_into_another_runs_folder_needs_overwrite(tmp_path: Path) -> None:
    common = {"model": "mlp", "dataset": "digits", "subset": 40, "progress": False}
    train_network(epochs=2, checkpoint_dir=tmp_path / "a", **common)
    train_network(epochs=3, checkpoint_dir=tmp_path / "b", seed=1, **common)
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(ResultsExistError):
        train_network(epochs=3, checkpoint_dir=tmp_path / "b", resume=tmp_path / "a", **common)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    # Resuming into the checkpoint's own folder needs no flag.
    with pytest.warns(UserWarning, match="different epochs"):
        train_network(epochs=3, checkpoint_dir=tmp_path / "a", resume=tmp_path / "a", **common)
    assert latest_checkpoint(tmp_path / "a").name == "checkpoint-00003.pt"


@pytest.mark.usefixtures("default_signals")
def test_a_failing_interrupt_hook_does_not_hide_the_interruption(
    tmp_path: Path, digits: tuple
) -> None:
    train, test = digits

    class Broken(_Signal):
        def on_interrupt(self, interrupted: object) -> None:
            raise ConnectionError("W&B unreachable")

    spy = Broken(signal.SIGINT, epoch=1, batch=1)
    with (
        pytest.warns(RuntimeWarning, match="W&B unreachable"),
        pytest.raises(TrainingInterrupted),
    ):
        train_network(
            model=_dropout_mlp(), dataset=train, test_dataset=test, epochs=2, batch_size=16,
            checkpoint_dir=tmp_path, callbacks=[spy], progress=False,
        )  # fmt: skip
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000-b00002.pt"


def test_a_train_config_is_checked_once_when_built_and_accepted_whole(tmp_path: Path) -> None:
    from diagnostics import TrainConfig as Exported
    from diagnostics.training import TrainConfig

    assert Exported is TrainConfig
    for kwargs, match in (
        ({"epochs": 0}, "epochs must be an int >= 1; got 0"),
        ({"schedule": "step"}, "Unknown schedule 'step'"),
        ({"batch_size": 0}, "batch_size must be an int >= 1; got 0"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs)
    config = TrainConfig(dataset="digits", subset=64, epochs=1, batch_size=32, progress=False)
    a = train_network(config)
    b = train_network(config, epochs=2)  # keyword options replace the config's fields
    c = train_network(dataset="digits", subset=64, epochs=1, batch_size=32, progress=False)
    assert [r["epoch"] for r in b.history] == [1, 2]
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"] == c.history[0]["train_loss"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        train_network(config, epoch=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"momentum": "abc"}, r"SGD: momentum: expected a number, got 'abc' \(str\)"),
        ({"lr": "1"}, r"SGD: lr: expected a number, got '1' \(str\)"),
    ],
)
def test_a_hyperparameter_of_the_wrong_type_is_named_with_its_type(kwargs, match) -> None:
    from diagnostics.training import TrainConfig

    with pytest.raises(TypeError, match=match):
        TrainConfig(optimizer_kwargs=kwargs)
    with pytest.raises(TypeError, match=match):
        build_optimizer("sgd", nn.Linear(2, 2).parameters(), **kwargs)


@pytest.mark.usefixtures("default_signals")
def test_an_interrupted_epoch_is_not_continued_with_another_batch_size(
    tmp_path: Path, digits: tuple
) -> None:
    common = {"dataset": "digits", "subset": 96, "epochs": 2, "progress": False}
    stop = _Signal(signal.SIGINT, epoch=1, batch=4)
    with pytest.raises(TrainingInterrupted):
        train_network(batch_size=16, checkpoint_dir=tmp_path, callbacks=[stop], **common)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(
        ValueError, match=r"stopped after 5 batches of 16; resume with batch_size 16"
    ):
        train_network(batch_size=32, resume=tmp_path, **common)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_resume_config_carries_checkpoint_options_and_data_path(tmp_path):
    import shutil

    from diagnostics.training import TrainConfig
    from diagnostics.training.config import resume_config

    data = tmp_path / "data"
    data.mkdir()
    run = TrainConfig(model="mlp", dataset="digits", epochs=1, subset=64, batch_size=32,
                      data_path=data, keep_checkpoints=0, checkpoint_every=2,
                      checkpoint_dir=tmp_path / "run", progress=False)  # fmt: skip
    ckpt = train_network(run).checkpoints[-1]
    again = resume_config(ckpt, {"epochs": 2})
    assert (again.keep_checkpoints, again.checkpoint_every) == (0, 2)
    assert Path(again.data_path) == data.resolve()
    assert resume_config(ckpt, {"keep_checkpoints": 5}).keep_checkpoints == 5  # given: as given
    shutil.rmtree(data)  # a data folder that has moved is not carried (give --data-path)
    assert resume_config(ckpt).data_path is None

"""Checkpoints: bitwise round trips, RNG states, atomic writes, all-or-nothing loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics.training.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from diagnostics.training.schedules import build_schedule


def _net(hidden: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3)
    )


def _trained(seed: int = 0, hidden: int = 5) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = _net(hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = build_schedule("linear", opt, epochs=4)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _snapshot(*objs: object) -> list[dict]:
    import copy

    return [copy.deepcopy(o.state_dict()) for o in objs]  # type: ignore[attr-defined]


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_bitwise(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    gen = torch.Generator().manual_seed(3)
    path = save_checkpoint(
        tmp_path / checkpoint_name(3), model=model, epoch=3, optimizer=opt, scheduler=sched,
        generator=gen, history=[{"epoch": 1, "loss": 0.5}], meta={"model": "x", "shape": (1, 2)},
    )  # fmt: skip
    assert path.name == "checkpoint-00003.pt"
    raw = torch.load(path, weights_only=True)  # pickle-free
    assert raw["format"] == "lanczos-optim/checkpoint"
    assert raw["epoch"] == 3
    saved = _snapshot(model, opt, sched)

    other, opt2, sched2 = _trained(seed=1)
    ckpt = load_checkpoint(path, model=other, optimizer=opt2, scheduler=sched2)
    _assert_same(_snapshot(other, opt2, sched2), saved)
    assert ckpt["history"] == [{"epoch": 1, "loss": 0.5}]
    assert ckpt["meta"] == {"model": "x", "shape": (1, 2)}


def test_rng_states_restore_every_generator() -> None:
    gen = torch.Generator().manual_seed(7)
    torch.randn(3)
    np.random.rand()  # noqa: NPY002
    random.random()
    state = capture_rng_state(gen)

    def draw() -> tuple:
        return (
            torch.randn(4), np.random.rand(4),  # noqa: NPY002
            [random.random() for _ in range(4)], torch.randperm(10, generator=gen),
        )  # fmt: skip

    first = draw()
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    gen.manual_seed(99)
    restore_rng_state(state, gen)
    second = draw()
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    assert torch.equal(first[3], second[3])


def test_foreign_checkpoint_names_the_mismatch_and_changes_nothing(tmp_path: Path) -> None:
    small, small_opt, _ = _trained(hidden=5)
    path = save_checkpoint(tmp_path / "a.pt", model=small, epoch=1, optimizer=small_opt)
    big, big_opt, _ = _trained(hidden=7)
    before = _snapshot(big, big_opt)
    with pytest.raises(
        ValueError, match=r"0\.weight: checkpoint shape \(5, 4\), model shape \(7, 4\)"
    ):
        load_checkpoint(path, model=big, optimizer=big_opt)
    _assert_same(_snapshot(big, big_opt), before)

    other = nn.Linear(4, 3)
    with pytest.raises(
        ValueError, match=r"missing keys \['weight', 'bias'\]; model unexpected keys"
    ):
        load_checkpoint(path, model=other)


def test_other_optimizer_class_is_refused_before_the_model_changes(tmp_path: Path) -> None:
    model, opt, _ = _trained()
    path = save_checkpoint(tmp_path / "a.pt", model=model, epoch=1, optimizer=opt)
    fresh, _, _ = _trained(seed=5)
    adam = torch.optim.Adam(fresh.parameters())
    before = _snapshot(fresh, adam)
    with pytest.raises(ValueError, match=r"optimizer class 'SGD' in the checkpoint, 'Adam' here"):
        load_checkpoint(path, model=fresh, optimizer=adam)
    _assert_same(_snapshot(fresh, adam), before)
    with pytest.raises(ValueError, match="holds no scheduler state"):
        load_checkpoint(path, model=fresh, scheduler=build_schedule("constant", adam, epochs=1))


def test_failed_load_rolls_back(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    path = save_checkpoint(tmp_path / "a.pt", model=model, epoch=1, optimizer=opt, scheduler=sched)
    fresh, fresh_opt, fresh_sched = _trained(seed=4)
    before = _snapshot(fresh, fresh_opt)

    def broken(state: dict) -> None:
        raise RuntimeError("scheduler exploded")

    fresh_sched.load_state_dict = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="scheduler exploded"):
        load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    _assert_same(_snapshot(fresh, fresh_opt), before)  # model and optimiser were restored


@pytest.mark.parametrize("kind", ["truncated", "garbage", "state_dict", "pickled_object"])
def test_unreadable_files_are_refused_and_change_nothing(tmp_path: Path, kind: str) -> None:
    model, opt, _ = _trained()
    good = save_checkpoint(tmp_path / "good.pt", model=model, epoch=1, optimizer=opt)
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        bad.write_bytes(b"not a checkpoint at all")
    elif kind == "state_dict":
        torch.save(model.state_dict(), bad)
    else:
        torch.save({"format": "lanczos-optim/checkpoint", "x": Path("/tmp")}, bad)
    before = _snapshot(model, opt)
    match = "not a lanczos-optim checkpoint" if kind == "state_dict" else "Cannot read checkpoint"
    with pytest.raises(ValueError, match=match):
        load_checkpoint(bad, model=model, optimizer=opt)
    _assert_same(_snapshot(model, opt), before)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint("/nonexistent/checkpoint-00001.pt")


def test_unsafe_content_is_refused_and_the_old_file_survives(tmp_path: Path) -> None:
    model, _, _ = _trained()
    path = save_checkpoint(tmp_path / checkpoint_name(1), model=model, epoch=1)
    old = path.read_bytes()
    with pytest.raises(TypeError, match=r"\['meta'\]\['fn'\] is a function"):
        save_checkpoint(path, model=model, epoch=2, meta={"fn": lambda: 0})
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00001.pt"]  # no temp file


def test_latest_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    model = nn.Linear(1, 1)
    for epoch in (2, 10, 9):
        save_checkpoint(tmp_path / checkpoint_name(epoch), model=model, epoch=epoch)
    (tmp_path / "checkpoint-final.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00010.pt"

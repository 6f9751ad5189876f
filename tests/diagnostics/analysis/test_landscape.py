"""build_loss_landscape against direct evaluations at perturbed weights, in float64."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from diagnostics.analysis.landscape import Landscape, build_loss_landscape, select_directions
from diagnostics.analysis.spectrum import Spectrum, compute_eigenspectrum
from diagnostics.results.io import save_npz
from lanczos_optim import lanczos


def _classifier() -> tuple[nn.Module, nn.Module, list, list]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(26, 3, dtype=torch.float64), torch.randint(0, 3, (26,))
    xt, yt = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 3, (9,))
    return model, nn.CrossEntropyLoss(), [(x[:10], y[:10]), (x[10:], y[10:])], [(xt, yt)]


def _bn_classifier() -> tuple[nn.Module, nn.Module, list, list]:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[1].running_mean.copy_(torch.tensor([0.2, -0.1, 0.3, 0.0]))
    model[1].running_var.copy_(torch.tensor([1.3, 0.8, 2.0, 0.5]))
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    xt, yt = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    return model, nn.CrossEntropyLoss(), [(x[:12], y[:12]), (x[12:], y[12:])], [(xt, yt)]


def _regression() -> tuple[nn.Module, nn.Module, list, list]:
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    return model, nn.MSELoss(), [(x, y)], [(x[:5] + 1, y[:5])]


CASES: dict[str, Callable[[], tuple]] = {
    "classifier": _classifier,
    "bn-classifier": _bn_classifier,
    "regression": _regression,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple:
    torch.manual_seed(10 + sorted(CASES).index(request.param))
    return CASES[request.param]()


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def _assert_same_state(model: nn.Module, before: list[torch.Tensor], flags: list[bool]) -> None:
    for b, a in zip(before, _state(model), strict=True):
        assert torch.equal(a, b)
    assert [m.training for m in model.modules()] == flags


def _direct(model: nn.Module, loss_fn: nn.Module, data: list, w: torch.Tensor, bn_mode: str):
    """Reference loss (|b|/N weighted) and accuracy of a copy of the model at flat weights w."""
    m = copy.deepcopy(model)
    vector_to_parameters(w, m.parameters())
    m.eval()
    if bn_mode == "train":
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.train()
    n = sum(len(y) for _, y in data)
    with torch.no_grad():
        loss = sum(float(loss_fn(m(x), y)) * len(y) / n for x, y in data)
        if data[0][1].is_floating_point():
            return loss, float("nan")
        hits = sum(int((m(x).argmax(1) == y).sum()) for x, y in data)
    return loss, hits / n


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_values_equal_direct_evaluation(case, bn_mode: str) -> None:
    model, loss_fn, train, test = case
    before, flags = _state(model), [m.training for m in model.modules()]
    spec = compute_eigenspectrum(model, loss_fn, train, lanczos_steps=6, seed=0, save_eigvec=True)
    ls = build_loss_landscape(
        model, loss_fn, train, test, directions=spec, dist=0.7, n_points=5, bn_mode=bn_mode
    )
    _assert_same_state(model, before, flags)
    cols = select_directions(spec)
    assert ls.num_directions == len(cols) == 6  # ranks 5 from top and bottom coincide with m=6
    np.testing.assert_array_equal(ls.t, np.linspace(-0.7, 0.7, 5))
    np.testing.assert_allclose(ls.ritz_value, spec.probe_values(0)[0][cols], rtol=0, atol=0)
    np.testing.assert_allclose(ls.direction_norm, 1.0, atol=1e-12)
    w0 = parameters_to_vector(model.parameters()).detach()
    for i, c in enumerate(cols):
        v = torch.from_numpy(spec.ritz_vectors[:, c])
        for k, t in enumerate(ls.t):
            loss, acc = _direct(model, loss_fn, train, w0 + t * v, bn_mode)
            test_loss, test_acc = _direct(model, loss_fn, test, w0 + t * v, bn_mode)
            assert ls.train_loss[i, k] == pytest.approx(loss, rel=1e-12)
            assert ls.test_loss[i, k] == pytest.approx(test_loss, rel=1e-12)
            np.testing.assert_equal([ls.train_acc[i, k], ls.test_acc[i, k]], [acc, test_acc])
    assert ls.loss0 == pytest.approx(_direct(model, loss_fn, train, w0, bn_mode)[0], rel=1e-12)
    np.testing.assert_allclose(ls.train_loss[:, 2], ls.loss0, rtol=1e-13)  # t = 0
    assert ls.is_classification == (case[3][0][1].dtype == torch.int64)
    assert ls.meta["num_train_samples"] == sum(len(y) for _, y in train)
    assert ls.meta["curvature_source"] == "ritz"


@pytest.mark.parametrize("source", ["ritz", "tensors"])
def test_quadratic_exact_on_least_squares(source: str) -> None:
    torch.manual_seed(3)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    data = [(x[:7], y[:7]), (x[7:], y[7:])]
    if source == "ritz":  # Ritz values of a short run: u'Hu = theta holds for any m
        directions = compute_eigenspectrum(
            model, nn.MSELoss(), data, lanczos_steps=3, seed=1, save_eigvec=True
        )
    else:
        directions = [torch.randn(8, dtype=torch.float64) * 3 for _ in range(3)]
    ls = build_loss_landscape(
        model, nn.MSELoss(), data, directions=directions, dist=2.0, n_points=7, plane=(0, 2)
    )
    scale = ls.train_loss.max()
    np.testing.assert_allclose(ls.quadratic, ls.train_loss, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(ls.plane_quadratic, ls.plane_train_loss, atol=1e-11 * scale)
    assert np.isnan(ls.train_acc).all()
    assert np.isnan(ls.test_loss).all()
    assert not ls.has_test


@pytest.mark.parametrize("curvature", [None, "hessian"])
def test_quadratic_error_is_third_order(curvature: str | None) -> None:
    torch.manual_seed(4)
    model, loss_fn, train, _ = _classifier()
    spec = compute_eigenspectrum(model, loss_fn, train, lanczos_steps=4, seed=2, save_eigvec=True)
    ls = build_loss_landscape(
        model, loss_fn, train, directions=spec, indices=[0, 3], dist=0.02, n_points=5,
        curvature=curvature,
    )  # fmt: skip
    if curvature == "hessian":  # recomputed v'Hv equals the Ritz value
        np.testing.assert_allclose(ls.curvature, ls.ritz_value, rtol=1e-9)
    err = np.abs(ls.train_loss - ls.quadratic)
    ratio = err[:, [0, 4]] / err[:, [1, 3]]  # t = 0.02 vs 0.01
    assert np.all((ratio > 6) & (ratio < 10))  # ~ 2^3
    assert err.max() < 1e-4 * abs(ls.loss0)


def test_plane_equals_direct_evaluation() -> None:
    torch.manual_seed(5)
    model, loss_fn, train, test = _classifier()
    dirs = [torch.randn(31, dtype=torch.float64) for _ in range(3)]
    ls = build_loss_landscape(
        model, loss_fn, train, test, directions=dirs, dist=0.5, n_points=3, plane=(2, 0)
    )
    assert ls.has_plane
    assert ls.plane_train_loss.shape == (3, 3)
    w0 = parameters_to_vector(model.parameters()).detach()
    for r, a in enumerate(ls.t):
        for c, b in enumerate(ls.t):
            w = w0 + a * dirs[2] + b * dirs[0]
            loss, acc = _direct(model, loss_fn, train, w, "eval")
            assert ls.plane_train_loss[r, c] == pytest.approx(loss, rel=1e-12)
            assert ls.plane_train_acc[r, c] == acc
            assert ls.plane_test_loss[r, c] == pytest.approx(
                _direct(model, loss_fn, test, w, "eval")[0], rel=1e-12
            )
    np.testing.assert_allclose(ls.plane_train_loss[:, 1], ls.train_loss[2], rtol=1e-13)
    np.testing.assert_allclose(ls.plane_train_loss[1, :], ls.train_loss[0], rtol=1e-13)


def test_filter_normalization() -> None:
    torch.manual_seed(6)
    model, loss_fn, train, _ = _classifier()
    v = torch.randn(31, dtype=torch.float64)
    ls = build_loss_landscape(
        model, loss_fn, train, directions=[v], dist=0.3, n_points=3, filter_normalize=True
    )
    expected, offset = [], 0
    for p in model.parameters():  # Li et al.: per row of each matrix, biases zeroed
        d = v[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.ndim == 1:
            expected.append(torch.zeros_like(d))
        else:
            expected.append(d / d.norm(dim=1, keepdim=True) * p.detach().norm(dim=1, keepdim=True))
    d = torch.cat([e.reshape(-1) for e in expected])
    assert ls.direction_norm[0] == pytest.approx(float(d.norm()), rel=1e-9)
    w0 = parameters_to_vector(model.parameters()).detach()
    assert ls.train_loss[0, 0] == pytest.approx(
        _direct(model, loss_fn, train, w0 - 0.3 * d, "eval")[0], rel=1e-9
    )
    assert ls.meta["curvature_source"] == "hessian"


class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["loss", "forward"])
def test_state_restored_on_interrupt(exc: type[BaseException], where: str) -> None:
    torch.manual_seed(7)
    model, loss_fn, train, test = _bn_classifier()
    model.train()  # the user's flags: restored as they were
    before, flags = _state(model), [m.training for m in model.modules()]
    calls = {"n": 0}

    def bomb() -> None:
        calls["n"] += 1
        if calls["n"] == 9:  # after the gradient pass, mid-way through the grid
            raise exc("stop")

    if where == "loss":

        def lossy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            bomb()
            return loss_fn(out, y)

    else:
        lossy = loss_fn
        model[2].register_forward_hook(lambda *_: bomb())
    dirs = [torch.randn(34, dtype=torch.float64) for _ in range(2)]
    with pytest.raises(exc, match="stop"):
        build_loss_landscape(
            model, lossy, train, test, directions=dirs, n_points=4, bn_mode="train", plane=True
        )
    assert calls["n"] == 9
    _assert_same_state(model, before, flags)


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(8)
    model, loss_fn, train, test = _classifier()
    dirs = [torch.randn(31, dtype=torch.float64) for _ in range(2)]
    ls = build_loss_landscape(
        model, loss_fn, train, test, directions=dirs, labels=["a", "b"], n_points=3, plane=True
    )
    ls.save(tmp_path / "ls.npz")
    back = Landscape.load(tmp_path / "ls.npz")
    assert back.labels == ["a", "b"]
    assert back.meta == ls.meta
    assert back.loss0 == ls.loss0
    for key in ("t", "train_loss", "train_acc", "test_loss", "test_acc", "quadratic", "slope"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ls, key))
    for key in ("curvature", "ritz_value", "plane_train_loss", "plane_quadratic"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ls, key))
    spec_path = tmp_path / "spec.npz"
    save_npz(spec_path, "spectrum", {"x": np.ones(1)}, {})
    with pytest.raises(
        ValueError, match=r"holds 'lanczos-optim/spectrum'.*'lanczos-optim/landscape'"
    ):
        Landscape.load(spec_path)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ls.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.npz.*truncated"):
        Landscape.load(tmp_path / "cut.npz")


def test_select_directions() -> None:
    a = torch.diag(torch.tensor([-2.0, -0.01, 0.02, 1.0, 3.0, 7.0], dtype=torch.float64))
    spec = Spectrum.from_lanczos([lanczos(a, 6, v0=torch.ones(6).double())], num_params=6)
    assert select_directions(spec) == [5, 4, 3, 0, 1, 2]
    assert select_directions(spec, top=(0, 9), bottom=(), by_abs=(0, 1, 2)) == [5, 1, 2, 3]
    with pytest.raises(ValueError, match="top ranks must be non-negative integers; got -1"):
        select_directions(spec, top=(-1,))


def _no_vectors(model: nn.Module, loss_fn: nn.Module, train: list) -> Spectrum:
    return compute_eigenspectrum(model, loss_fn, train, lanczos_steps=3, seed=0)


def _other_model(model: nn.Module, loss_fn: nn.Module, train: list) -> Spectrum:
    other = nn.Linear(3, 3).double()
    return compute_eigenspectrum(other, loss_fn, train, lanczos_steps=3, seed=0, save_eigvec=True)


BAD = [
    ({"n_points": 1}, ValueError, r"n_points must be an integer >= 2; got 1"),
    ({"n_points": 3.0}, ValueError, r"n_points must be an integer >= 2; got 3\.0"),
    ({"dist": 0.0}, ValueError, r"dist must be a finite number > 0; got 0\.0"),
    ({"dist": -1}, ValueError, r"dist must be a finite number > 0; got -1"),
    ({"dist": float("inf")}, ValueError, r"dist must be a finite number > 0; got inf"),
    ({"curvature": "fisher"}, ValueError, r"Invalid curvature: 'fisher'"),
    ({"bn_mode": "frozen"}, ValueError, r"bn_mode must be one of .*'frozen'"),
    ({"directions": [torch.ones(30).double()]}, ValueError, r"shape \(31,\) .*got \(30,\)"),
    ({"directions": []}, ValueError, "directions is empty"),
    ({"directions": [torch.zeros(31).double()]}, ValueError, "finite and non-zero; got norm 0"),
    ({"directions": "top"}, TypeError, "directions must be a Spectrum .* got str"),
    ({"directions": _no_vectors}, ValueError, "no Ritz vectors; .*save_eigvec=True"),
    ({"directions": _other_model}, ValueError, "have 12 entries but the model has P=31"),
    ({"plane": (0, 0)}, ValueError, r"plane must be a bool or a pair .*got \(0, 0\)"),
    ({"plane": (0, 5)}, ValueError, r"plane indices \(0, 5\) out of range for 2 directions"),
    ({"labels": ["x"]}, ValueError, "labels has 1 entries for 2 directions"),
    ({"indices": [0]}, ValueError, "indices applies only when directions is a Spectrum"),
    ({"train": []}, ValueError, "data is empty"),
    ({"test": torch.utils.data.DataLoader([])}, ValueError, "data is empty"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_input(kwargs: dict, error: type, match: str) -> None:
    torch.manual_seed(9)
    model, loss_fn, train, test = _classifier()
    train, test = kwargs.pop("train", train), kwargs.pop("test", test)
    if callable(kwargs.get("directions")):
        kwargs["directions"] = kwargs["directions"](model, loss_fn, train)
    kwargs.setdefault("directions", [torch.randn(31).double(), torch.randn(31).double()])
    before, flags = _state(model), [m.training for m in model.modules()]
    with pytest.raises(error, match=match):
        build_loss_landscape(model, loss_fn, train, test, **{"n_points": 3, **kwargs})
    _assert_same_state(model, before, flags)


def test_filter_normalized_bias_only_direction_is_an_error() -> None:
    torch.manual_seed(9)
    model, loss_fn, train, _ = _classifier()
    v = torch.zeros(31, dtype=torch.float64)
    v[12:16] = 1.0  # the first layer's bias
    with pytest.raises(ValueError, match="Direction 0 is zero after filter normalisation"):
        build_loss_landscape(model, loss_fn, train, directions=[v], filter_normalize=True)

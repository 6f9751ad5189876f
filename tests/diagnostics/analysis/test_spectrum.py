"""compute_eigenspectrum and Spectrum against dense float64 Hessians and GGNs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from diagnostics.analysis.spectrum import Spectrum, compute_eigenspectrum
from diagnostics.results.io import save_npz
from lanczos_optim import lanczos


def _mlp_ce() -> tuple[nn.Module, nn.Module, list]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, nn.CrossEntropyLoss(), [(x[:8], y[:8]), (x[8:25], y[8:25]), (x[25:], y[25:])]


def _mlp_mse() -> tuple[nn.Module, nn.Module, list]:
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2)).double()
    x = torch.randn(20, 2, dtype=torch.float64)
    return model, nn.MSELoss(), [(x, torch.randn(20, 2, dtype=torch.float64))]


def _bn_net() -> tuple[nn.Module, nn.Module, list]:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Linear(3, 2)).double()
    model[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
    model[1].running_var.copy_(torch.tensor([1.5, 0.7, 2.0]))
    x = torch.randn(24, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (24,))
    return model, nn.CrossEntropyLoss(), [(x[:10], y[:10]), (x[10:], y[10:])]


CASES: dict[str, Callable[[], tuple[nn.Module, nn.Module, list]]] = {
    "mlp-ce-ragged": _mlp_ce,
    "mlp-mse": _mlp_mse,
    "bn-net": _bn_net,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, nn.Module, list]:
    torch.manual_seed(sorted(CASES).index(request.param))
    return CASES[request.param]()


def _dense(model: nn.Module, loss_fn: nn.Module, data: list, curvature: str, bn_mode: str):
    """Dense [P, P] curvature by plain autograd, batches weighted by |b|/N.

    (Not torch.func: in torch 2.14 its second derivatives through BatchNorm in training mode
    are wrong, e.g. an asymmetric Hessian.)
    """
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    flags = [m.training for m in model.modules()]
    model.train(bn_mode == "train")
    n_total = sum(len(y) for _, y in data)

    def out_fn(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        state = {n: t.reshape(s) for n, t, s in zip(names, w.split(sizes), shapes, strict=True)}
        state.update({n: b.clone() for n, b in model.named_buffers()})
        return functional_call(model, state, (x,))

    dense = torch.zeros(len(flat), len(flat), dtype=torch.float64)
    for x, y in data:
        if curvature == "hessian":
            block = hessian(lambda w, x=x, y=y: loss_fn(out_fn(w, x), y), flat)
        else:
            jac = jacobian(lambda w, x=x: out_fn(w, x), flat).reshape(-1, len(flat))
            out = out_fn(flat, x).detach()
            h_out = hessian(lambda o, y=y: loss_fn(o, y), out).reshape(jac.shape[0], -1)
            block = jac.T @ h_out @ jac
        dense += block * len(y) / n_total
    for m, flag in zip(model.modules(), flags, strict=True):
        m.training = flag
    assert torch.allclose(dense, dense.T, atol=1e-13, rtol=0)
    return dense


def _distinct(values: np.ndarray, tol: float) -> np.ndarray:
    """Distinct eigenvalues: Lanczos from a random start finds each eigenspace once."""
    cluster = np.concatenate([[0], np.cumsum(np.diff(values) > tol)])
    return np.array([values[cluster == c].mean() for c in range(cluster[-1] + 1)])


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.parametrize("cache_graphs", [None, True], ids=["default", "cached"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_full_steps_equal_dense_eigenvalues(
    case, curvature: str, bn_mode: str, cache_graphs: bool | None
) -> None:
    model, loss_fn, data = case
    before = _state(model)
    flags = [m.training for m in model.modules()]
    dense = _dense(model, loss_fn, data, curvature, bn_mode)
    p = dense.shape[0]
    exact = torch.linalg.eigvalsh(dense).numpy()
    scale = abs(exact).max()
    distinct = _distinct(exact, 1e-9 * scale)
    assert distinct.size >= p // 2  # repeats: zeros of the softmax shift, BN, GGN rank
    spec = compute_eigenspectrum(
        model,
        loss_fn,
        data,
        curvature=curvature,
        lanczos_steps=p,
        bn_mode=bn_mode,
        seed=3,
        cache_graphs=cache_graphs,
    )
    # Krylov dimension: one Ritz value per distinct eigenvalue (a rank-deficient GGN may add a
    # few more inside its round-off-level null space); as sets, both must match.
    assert distinct.size <= spec.probe_num_steps[0] <= p
    gap = np.abs(spec.ritz_values[:, None] - distinct[None, :])
    assert gap.min(axis=1).max() < 1e-8 * scale  # every Ritz value is an eigenvalue
    assert gap.min(axis=0).max() < 1e-8 * scale  # every distinct eigenvalue is found
    assert spec.lambda_max == pytest.approx(exact[-1], abs=1e-8 * scale)
    assert spec.lambda_min == pytest.approx(exact[0], abs=1e-8 * scale)
    assert spec.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert spec.meta["num_params"] == p
    assert spec.meta["num_samples"] == sum(len(y) for _, y in data)
    assert (spec.meta["curvature"], spec.meta["bn_mode"]) == (curvature, bn_mode)
    for b, a in zip(before, _state(model), strict=True):
        assert torch.equal(a, b)
    assert [m.training for m in model.modules()] == flags
    assert all(q.grad is None for q in model.parameters())


def test_probes_vectors_and_trace(case) -> None:
    model, loss_fn, data = case
    dense = _dense(model, loss_fn, data, "hessian", "eval")
    p = dense.shape[0]
    spec = compute_eigenspectrum(
        model, loss_fn, data, lanczos_steps=p, num_probes=3, seed=11, save_eigvec=True
    )
    assert spec.num_probes == 3
    m0 = int(spec.probe_num_steps[0])  # fewer than P: breakdown on repeated eigenvalues
    assert spec.probe_num_steps.tolist() == [m0] * 3
    assert m0 <= p
    assert spec.weights.sum() == pytest.approx(1.0, abs=1e-12)
    # Probes as documented: j-th float64 Gaussian draw of a generator seeded with `seed`.
    gen = torch.Generator().manual_seed(11)
    probes = [torch.randn(p, generator=gen, dtype=torch.float64) for _ in range(3)]
    expected = [p * float(v @ dense @ v / (v @ v)) for v in probes]
    np.testing.assert_allclose(spec.probe_traces(), expected, rtol=1e-9)
    est, se = spec.trace()
    assert est == pytest.approx(np.mean(expected), rel=1e-9)
    assert se == pytest.approx(np.std(expected, ddof=1) / math.sqrt(3), rel=1e-7)
    for j, v in enumerate(probes):  # per-probe weights: squared projections on eigenvectors
        theta, w = spec.probe_values(j)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        vn = v / v.norm()
        moment2 = float(vn @ dense @ dense @ vn)
        assert float((w * theta**2).sum()) == pytest.approx(moment2, rel=1e-8)
    u = torch.from_numpy(spec.ritz_vectors)
    theta0, _ = spec.probe_values(0)
    assert u.shape == (p, m0)
    torch.testing.assert_close(u.T @ u, torch.eye(m0, dtype=torch.float64), atol=1e-8, rtol=0)
    residual = dense @ u - u * torch.from_numpy(theta0)
    assert float(residual.norm(dim=0).max()) < 1e-7 * float(dense.abs().max())


def test_seed_none_is_recorded_and_reproducible() -> None:
    torch.manual_seed(0)
    model, loss_fn, data = _mlp_mse()
    state = torch.random.get_rng_state()
    a = compute_eigenspectrum(model, loss_fn, data, lanczos_steps=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = compute_eigenspectrum(model, loss_fn, data, lanczos_steps=5, seed=a.meta["seed"])
    np.testing.assert_array_equal(a.ritz_values, b.ritz_values)
    c = compute_eigenspectrum(model, loss_fn, data, lanczos_steps=5, seed=a.meta["seed"] + 1)
    assert not np.array_equal(a.ritz_values, c.ritz_values)


def _spectrum(values: list[list[float]], weights: list[list[float]], p: int = 100) -> Spectrum:
    """A Spectrum from given per-probe Ritz values and weights (via tridiagonals of T)."""
    results = []
    for theta, w in zip(values, weights, strict=True):
        # Lanczos on diag(theta) started from sqrt(w) reproduces exactly this measure.
        a = torch.diag(torch.tensor(theta, dtype=torch.float64))
        v0 = torch.tensor(w, dtype=torch.float64).sqrt()
        results.append(lanczos(a, len(theta), v0=v0))
    return Spectrum.from_lanczos(results, num_params=p)


def test_negative_mass_with_and_without_nearest_zero() -> None:
    spec = _spectrum(
        [[-2.0, -1e-4, 1.0, 5.0], [-3.0, -1.0, 2e-5, 4.0]],
        [[0.1, 0.5, 0.3, 0.1], [0.2, 0.1, 0.6, 0.1]],
    )
    np.testing.assert_allclose(spec.probe_values(0)[0], [-2.0, -1e-4, 1.0, 5.0], atol=1e-12)
    assert spec.negative_mass() == pytest.approx((0.1 + 0.5 + 0.2 + 0.1) / 2)
    # probe 0 drops -1e-4 (nearest zero); probe 1 drops +2e-5, which was not negative anyway
    assert spec.negative_mass(exclude_nearest_zero=True) == pytest.approx((0.1 + 0.3) / 2)
    assert spec.trace()[0] == pytest.approx(
        100 * np.mean([0.1 * -2 + 0.5 * -1e-4 + 0.3 + 0.5, 0.2 * -3 - 0.1 + 0.6 * 2e-5 + 0.4])
    )


def test_outliers_on_a_synthetic_spectrum() -> None:
    """Section 6.4 style: a bulk in [0, 1], outliers at -3, 5 and 8."""
    gen = torch.Generator().manual_seed(0)
    eig = torch.cat([torch.rand(397, generator=gen, dtype=torch.float64), torch.tensor([-3, 5, 8])])
    q, _ = torch.linalg.qr(torch.randn(400, 400, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(eig.double()) @ q.T
    a = (a + a.T) / 2
    runs = [lanczos(a, 40, generator=gen) for _ in range(2)]
    spec = Spectrum.from_lanczos(runs, num_params=400)
    split = spec.split_outliers()
    np.testing.assert_allclose(np.unique(split.values.round(6)), [-3, 5, 8], atol=1e-6)
    assert split.values.size == 6  # each probe finds all three
    assert 0 <= split.bulk[0] < 0.05
    assert 0.95 < split.bulk[1] <= 1
    assert split.mask.sum() == 6
    assert spec.summary()["num_outliers"] == 6
    assert spec.split_outliers(gap_factor=1e6).values.size == 0


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model, loss_fn, data = _mlp_ce()
    spec = compute_eigenspectrum(
        model, loss_fn, data, lanczos_steps=6, num_probes=2, seed=2, save_eigvec=True
    )
    spec.save(tmp_path / "s.npz")
    back = Spectrum.load(tmp_path / "s.npz")
    for key in ("ritz_values", "weights", "residuals", "probe", "alpha", "beta", "ritz_vectors"):
        np.testing.assert_array_equal(getattr(back, key), getattr(spec, key))
    assert back.meta == spec.meta
    assert back.summary() == spec.summary()
    assert set(back.meta) >= {"num_params", "curvature", "bn_mode", "lanczos_steps", "seed"}
    assert set(back.meta) >= {"num_probes", "num_samples", "wall_time_s", "versions"}


def test_save_without_vectors_float32(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)  # float32 model: vectors keep its dtype
    data = (torch.randn(10, 3), torch.randn(10, 2))
    spec = compute_eigenspectrum(model, nn.MSELoss(), data, lanczos_steps=4, seed=0)
    assert spec.ritz_vectors is None
    assert spec.meta["dtype"] == "float32"
    spec.save(tmp_path / "s")
    assert Spectrum.load(tmp_path / "s").ritz_vectors is None
    vec = compute_eigenspectrum(model, nn.MSELoss(), data, lanczos_steps=4, save_eigvec=True)
    assert vec.ritz_vectors.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"curvature": "fisher"},
            ValueError,
            r"Invalid curvature: 'fisher'; expected one of \('hessian', 'ggn'\)",
        ),
        (
            {"lanczos_steps": 0},
            ValueError,
            r"Invalid lanczos_steps value: 0 \(must be an int >= 1\)",
        ),
        ({"lanczos_steps": 2.5}, ValueError, r"Invalid lanczos_steps value: 2\.5"),
        ({"num_probes": 0}, ValueError, r"Invalid num_probes value: 0 \(must be an int >= 1\)"),
        ({"bn_mode": "frozen"}, ValueError, r"bn_mode must be one of .*'frozen'"),
        ({"data": []}, ValueError, "data is empty"),
        ({"data": torch.utils.data.DataLoader([])}, ValueError, "data is empty"),
    ],
)
def test_bad_input(kwargs: dict, error: type, match: str) -> None:
    torch.manual_seed(0)
    model, loss_fn, data = _mlp_mse()
    data = kwargs.pop("data", data)
    before = _state(model)
    with pytest.raises(error, match=match):
        compute_eigenspectrum(model, loss_fn, data, **{"lanczos_steps": 3, **kwargs})
    for b, a in zip(before, _state(model), strict=True):
        assert torch.equal(a, b)


def test_steps_above_p_are_capped_at_p_which_is_exact() -> None:
    """More Lanczos steps than parameters (P = 17) run P steps, like the optimisers do."""
    torch.manual_seed(0)
    model, loss_fn, data = _mlp_mse()
    capped = compute_eigenspectrum(model, loss_fn, data, lanczos_steps=18, seed=4)
    exact = compute_eigenspectrum(model, loss_fn, data, lanczos_steps=17, seed=4)
    assert capped.meta["lanczos_steps"] == 17
    np.testing.assert_array_equal(capped.ritz_values, exact.ritz_values)
    np.testing.assert_array_equal(capped.weights, exact.weights)


@pytest.mark.parametrize("damage", ["truncate", "other-kind", "other-version", "inconsistent"])
def test_load_bad_file(tmp_path: Path, damage: str) -> None:
    spec = _spectrum([[1.0, 2.0]], [[0.5, 0.5]])
    path = tmp_path / "s.npz"
    spec.save(path)
    arrays = {k: getattr(spec, k) for k in ("ritz_values", "weights", "residuals", "probe")}
    arrays |= {k: getattr(spec, k) for k in ("alpha", "beta", "probe_residual_norm")}
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
        match = "truncated, corrupt"
    elif damage == "other-kind":
        save_npz(path, "landscape", arrays, spec.meta)
        match = "holds 'lanczos-optim/landscape'; expected a 'lanczos-optim/spectrum'"
    elif damage == "other-version":
        save_npz(path, "spectrum", arrays, spec.meta, version=7)
        match = "format_version 7"
    else:
        arrays["probe_num_steps"] = np.array([3])
        save_npz(path, "spectrum", arrays, spec.meta)
        match = "Inconsistent spectrum arrays"
    with pytest.raises(ValueError, match=match):
        Spectrum.load(path)


# Issue 11, item 5: the negative mass people read first leaves out the Ritz value nearest 0.


def _measure(values: list[float], weights: list[float], probes: list[int]) -> Spectrum:
    n, d = len(values), max(probes) + 1
    arrays = {
        "ritz_values": np.array(values),
        "weights": np.array(weights),
        "residuals": np.zeros(n),
        "probe": np.array(probes),
        "alpha": np.zeros(n),
        "beta": np.zeros(n - d),
        "probe_num_steps": np.bincount(probes),
        "probe_residual_norm": np.zeros(d),
    }
    return Spectrum(arrays, {"num_params": 100})


def test_negative_mass_report_leads_with_the_mass_without_the_spike_at_zero():
    s = _measure([-0.3, -0.0043, 1.0], [0.008, 0.742, 0.25], [0, 0, 0])
    headline, raw = s.negative_mass_report()
    assert headline == "negative mass 0.008 without the Ritz value nearest 0"
    assert raw == "raw negative mass 0.750, 0.742 of it on the Ritz value -0.0043 nearest 0"
    np.testing.assert_array_equal(s.nearest_zero()[0], [-0.0043])


def test_negative_mass_report_with_several_probes_and_a_positive_nearest_value():
    s = _measure([-0.2, 0.001, 2.0, -0.01, 3.0], [0.1, 0.3, 0.1, 0.35, 0.15], [0, 0, 0, 1, 1])
    headline, raw = s.negative_mass_report()
    assert headline == "negative mass 0.100 without the Ritz values nearest 0"
    assert raw.startswith("raw negative mass 0.450, 0.350 of it on the 2 Ritz values nearest 0")
    positive = _measure([0.001, 2.0], [0.9, 0.1], [0, 0])
    assert positive.negative_mass_report()[1] == (
        "raw negative mass 0.000; the Ritz value nearest 0 (0.001) is not negative"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seeded_probes_tol_and_vectors_follow_the_documented_recipe(dtype: torch.dtype) -> None:
    """One spectrum path: probe j is the j-th float64 draw from the seed, run by lanczos."""
    from lanczos_optim import HessianOperator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)
    x, y = torch.randn(30, 3, dtype=dtype), torch.randn(30, 2, dtype=dtype)
    spec = compute_eigenspectrum(
        model, nn.MSELoss(), (x, y), lanczos_steps=25, num_probes=3, seed=11, tol=1e-3,
        save_eigvec=True,
    )  # fmt: skip
    op = HessianOperator(model, nn.MSELoss(), (x, y))
    gen = torch.Generator().manual_seed(11)
    for j in range(3):
        v0 = torch.randn(op.shape[0], generator=gen, dtype=torch.float64).to(dtype)
        ref = lanczos(op, 25, v0=v0, tol=1e-3, compute_vectors=j == 0)
        assert spec.probe_num_steps[j] == ref.num_steps
        np.testing.assert_array_equal(spec.alpha[spec.probe == j], ref.alpha.numpy())
        if j == 0:
            np.testing.assert_array_equal(spec.ritz_vectors, ref.ritz_vectors.numpy())
    assert spec.probe_num_steps.max() < 25  # tol stopped the probes early

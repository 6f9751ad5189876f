"""BackPACK diagonals and the Hutchinson estimate against dense float64 curvature."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev

from diagnostics.analysis.compare import compare_to_spectrum
from diagnostics.analysis.diagonal import (
    KINDS,
    UnsupportedModelError,
    diagonal_approximations,
    hutchinson_diagonal,
)
from lanczos_optim import GGNOperator, HessianOperator, SpectralDensity, spectral_density


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.l2(x + self.act(self.l1(x)))


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.l2(F.gelu(self.l1(x)))


class _Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.l1(x) if x.sum() > 0 else -self.l1(x)  # data-dependent: torch.fx fails


def _mlp(act: type[nn.Module] = nn.Tanh, out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, out))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    )


def _bn() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def _ce_targets(n: int, g: torch.Generator) -> Tensor:
    return torch.randint(0, 3, (n,), generator=g)


def _mse_targets(n: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, 2, generator=g, dtype=torch.float64)


# name -> (model factory, loss, input shape, targets, kinds compared with dense ground truth)
CASES = {
    "mlp-ce": (_mlp, nn.CrossEntropyLoss(), (4,), _ce_targets, KINDS[::2]),
    "mlp-relu-mse": (lambda: _mlp(nn.ReLU, 2), nn.MSELoss(), (4,), _mse_targets, KINDS[::2]),
    "cnn-ce": (_cnn, nn.CrossEntropyLoss(), (1, 6, 6), _ce_targets, KINDS[::2]),
    "bn-eval-ce": (_bn, nn.CrossEntropyLoss(), (4,), _ce_targets, ("diag_ggn_exact",)),
    "residual-ce": (_Residual, nn.CrossEntropyLoss(), (4,), _ce_targets, ("diag_ggn_exact",)),
}
SIZES = (4, 4, 3)  # ragged: weights 4/11, 4/11, 3/11


def _make(name: str) -> tuple[nn.Module, nn.Module, list, tuple[str, ...]]:
    factory, loss_fn, shape, targets, kinds = CASES[name]
    torch.manual_seed(0)
    model = factory().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(n, *shape, generator=g, dtype=torch.float64), targets(n, g)) for n in SIZES
    ]
    return model, loss_fn, data, kinds


@pytest.fixture(params=sorted(CASES), name="case")
def _case(request: pytest.FixtureRequest) -> tuple:
    return _make(request.param)


def _dense(model: nn.Module, loss_fn: nn.Module, data: list) -> tuple[Tensor, Tensor]:
    """Dense data-set Hessian and GGN (sum_b |b|/N J_b^T H_l J_b), eval mode, float64."""
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    total = sum(x.shape[0] for x, _ in data)
    hess = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    ggn = torch.zeros_like(hess)
    for x, y in data:

        def out(t: Tensor, x: Tensor = x) -> Tensor:
            pieces = torch.split(t, [math.prod(s) for s in shapes])
            params = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
            return functional_call(model, params, (x,))

        w = x.shape[0] / total
        hess += w * hessian(lambda t, y=y, out=out: loss_fn(out(t), y))(theta)
        o = out(theta).detach()
        jac = jacrev(out)(theta).reshape(o.numel(), -1)
        h_out = hessian(lambda z, y=y: loss_fn(z, y))(o).reshape(o.numel(), o.numel())
        ggn += w * jac.T @ h_out @ jac
    model.train()
    return hess, ggn


def test_backpack_matches_dense_diagonal(case: tuple) -> None:
    model, loss_fn, data, kinds = case
    hess, ggn = _dense(model, loss_fn, data)
    got = diagonal_approximations(model, loss_fn, data, kinds)
    ref = {"diag_hessian": hess.diagonal(), "diag_ggn_exact": ggn.diagonal()}
    for kind in kinds:
        assert got[kind].dtype == torch.float64
        err = (got[kind] - ref[kind]).abs().max()
        assert err <= 1e-10 * max(1.0, float(ref[kind].abs().max())), (kind, float(err))
    assert float(ggn.diagonal().abs().max()) > 1e-3  # a real comparison, not 0 == 0
    if "diag_hessian" in kinds and isinstance(loss_fn, nn.CrossEntropyLoss):
        assert not torch.allclose(hess.diagonal(), ggn.diagonal())  # the kinds differ here


def test_ggn_mc_is_unbiased() -> None:
    """20 seeded runs of 100 MC samples: the mean is within 5 standard errors of the exact diagonal.

    Each run is an independent, unbiased estimate, so per entry (mean - exact) / SE is roughly
    standard normal (t with 19 d.o.f.); |t| > 5 has probability ~1e-4 per entry, and the seeds
    are fixed, so the test is deterministic. The SE itself must be small, so the bound has teeth.
    """
    model, loss_fn, data, _ = _make("mlp-ce")
    exact = diagonal_approximations(model, loss_fn, data, "diag_ggn_exact")["diag_ggn_exact"]
    runs = torch.stack(
        [
            diagonal_approximations(model, loss_fn, data, "diag_ggn_mc", mc_samples=100, seed=s)[
                "diag_ggn_mc"
            ]
            for s in range(20)
        ]
    )
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(len(runs))
    assert ((mean - exact).abs() <= 5 * se + 1e-12).all()
    assert float(se.mean()) < 0.1 * float(exact.mean())
    assert not torch.allclose(runs[0], exact)  # a sampled estimate, not the exact one


def test_mc_seed_is_reproducible_and_keeps_global_rng() -> None:
    model, loss_fn, data, _ = _make("mlp-ce")
    state = torch.get_rng_state()
    a = diagonal_approximations(model, loss_fn, data, "diag_ggn_mc", seed=5)["diag_ggn_mc"]
    b = diagonal_approximations(model, loss_fn, data, "diag_ggn_mc", seed=5)["diag_ggn_mc"]
    c = diagonal_approximations(model, loss_fn, data, "diag_ggn_mc", seed=6)["diag_ggn_mc"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["mlp-ce", "residual-ce"])
def test_user_model_is_untouched(name: str) -> None:
    model, loss_fn, data, _ = _make(name)
    x = data[0][0]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x).detach()
    hooks = [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
    attrs = [set(vars(m)) for m in model.modules()]
    params = dict(model.named_parameters())
    before = hessian(lambda p: loss_fn(functional_call(model, p, (x,)), data[0][1]))(params)

    diagonal_approximations(model, loss_fn, data, ("diag_ggn_exact", "diag_ggn_mc"))

    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(x), out)
    assert model.training
    assert [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()] == hooks
    assert [set(vars(m)) for m in model.modules()] == attrs
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert not any(hasattr(p, "diag_ggn_exact") for p in model.parameters())
    after = hessian(lambda p: loss_fn(functional_call(model, p, (x,)), data[0][1]))(params)
    for k1 in before:
        for k2 in before[k1]:
            assert torch.equal(before[k1][k2], after[k1][k2])


@pytest.mark.parametrize("num_samples", [16, 256, 4096])
def test_hutchinson_error_matches_theory(num_samples: int) -> None:
    """Rademacher probes: E||d_hat - diag A||^2 = sum_{i != j} A_ij^2 / n, averaged over 12 runs."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    expected = float((a.square().sum() - a.diagonal().square().sum()) / num_samples)
    errs = [
        float((hutchinson_diagonal(a, num_samples, generator=g) - a.diagonal()).square().sum())
        for _ in range(12)
    ]
    # 12 runs x 30 entries: the mean squared error is within a factor 1.5 of its expectation.
    assert 1 / 1.5 < sum(errs) / len(errs) / expected < 1.5


def test_hutchinson_on_curvature_operator_is_close_to_dense() -> None:
    """Each entry within 5 standard deviations sqrt(sum_{j != i} H_ij^2 / n) of the truth."""
    model, loss_fn, data, _ = _make("mlp-ce")
    hess, _ = _dense(model, loss_fn, data)
    n = 192
    gen = torch.Generator().manual_seed(0)
    est = hutchinson_diagonal(HessianOperator(model, loss_fn, data), n, generator=gen)
    sd = ((hess.square().sum(1) - hess.diagonal().square()) / n).sqrt()
    assert ((est - hess.diagonal()).abs() <= 5 * sd + 1e-12).all()
    assert float((est - hess.diagonal()).abs().max()) > 1e-8  # an estimate, not the exact value


REFUSED = {
    "layernorm": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)),
        {},
        "1 (LayerNorm)",
    ),
    "gelu": (lambda: _mlp(nn.GELU), {}, "1 (GELU)"),
    "silu": (lambda: _mlp(nn.SiLU), {"kinds": "diag_hessian"}, "1 (SiLU)"),
    "bn-train": (_bn, {"bn_mode": "train"}, "1 (BatchNorm1d in train mode)"),
    "bn-eval-hessian": (_bn, {"kinds": "diag_hessian"}, "1 (BatchNorm1d)"),
    "residual-hessian": (_Residual, {"kinds": "diag_hessian"}, "SumModule: a residual addition"),
    "functional-op": (_Functional, {"kinds": "diag_ggn_exact"}, "gelu"),
    "untraceable": (_Branching, {}, "<root> (_Branching: converter failed"),
    "loss-function": (_mlp, {"loss_fn": F.cross_entropy}, "loss_fn (function)"),
    "weighted-ce": (
        _mlp,
        {"loss_fn": nn.CrossEntropyLoss(weight=torch.ones(3).double())},
        "loss_fn (CrossEntropyLoss)",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_layers_are_listed(name: str) -> None:
    factory, kwargs, listed = REFUSED[name]
    torch.manual_seed(0)
    model = factory().double()
    data = [(torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,)))]
    kwargs = dict(kwargs)
    loss_fn = kwargs.pop("loss_fn", nn.CrossEntropyLoss())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="fallback='hutchinson'") as info:
        diagonal_approximations(model, loss_fn, data, **kwargs)
    assert isinstance(info.value, ValueError)
    assert any(listed in item for item in info.value.offending), info.value.offending
    assert listed in str(info.value)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_fallback_is_the_hutchinson_estimate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)).double()
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 4, generator=g, dtype=torch.float64), _ce_targets(n, g)) for n in SIZES]
    with pytest.warns(UserWarning, match="LayerNorm"):
        got = diagonal_approximations(
            model, loss_fn, data, fallback="hutchinson", seed=3, hutchinson_samples=16
        )
    ggn_op, hess_op = GGNOperator(model, loss_fn, data), HessianOperator(model, loss_fn, data)
    gen = torch.Generator()
    assert torch.equal(
        got["diag_ggn_exact"], hutchinson_diagonal(ggn_op, 16, generator=gen.manual_seed(3))
    )
    assert torch.equal(got["diag_ggn_mc"], got["diag_ggn_exact"])
    assert torch.equal(
        got["diag_hessian"], hutchinson_diagonal(hess_op, 16, generator=gen.manual_seed(3))
    )
    # ... and that estimate is of the right matrix: the dense GGN diagonal, within 5 sigma.
    _, ggn = _dense(model, loss_fn, data)
    off = (ggn.square().sum(1) - ggn.diagonal().square()) / 16
    assert ((got["diag_ggn_exact"] - ggn.diagonal()).abs() <= 5 * off.sqrt() + 1e-12).all()


def test_partial_fallback_keeps_backpack_for_supported_kinds() -> None:
    model, loss_fn, data, _ = _make("bn-eval-ce")
    _, ggn = _dense(model, loss_fn, data)
    with pytest.warns(UserWarning, match="diag_hessian.*BatchNorm1d"):
        got = diagonal_approximations(
            model, loss_fn, data, ("diag_ggn_exact", "diag_hessian"), fallback="hutchinson"
        )
    assert torch.allclose(got["diag_ggn_exact"], ggn.diagonal(), rtol=0, atol=1e-10)


ERRORS = {
    "unknown kind": ({"kinds": ("diag_fisher",)}, ValueError, "'diag_fisher'"),
    "no kinds": ({"kinds": ()}, ValueError, "non-empty"),
    "bn_mode": ({"bn_mode": "batch"}, ValueError, "'batch'"),
    "fallback": ({"fallback": "lanczos"}, ValueError, "'lanczos'"),
    "mc_samples": ({"mc_samples": 0}, ValueError, "mc_samples"),
    "empty data": ({"data": []}, ValueError, "empty"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_input(name: str) -> None:
    overrides, exc, match = ERRORS[name]
    model, loss_fn, data, _ = _make("mlp-ce")
    kwargs = {"data": data, **overrides}
    with pytest.raises(exc, match=match):
        diagonal_approximations(model, loss_fn, kwargs.pop("data"), **kwargs)


def test_unknown_kind_message_lists_allowed() -> None:
    model, loss_fn, data, _ = _make("mlp-ce")
    with pytest.raises(ValueError, match="diag_fisher") as info:
        diagonal_approximations(model, loss_fn, data, "diag_fisher")
    assert all(k in str(info.value) for k in KINDS)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_hutchinson_bad_num_samples(bad: object) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        hutchinson_diagonal(torch.eye(3), bad)  # type: ignore[arg-type]


def test_hutchinson_rejects_non_square() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        hutchinson_diagonal(torch.ones(3, 4), 4)


# --- compare_to_spectrum --------------------------------------------------------------------


@pytest.fixture(scope="module", name="synthetic")
def _synthetic() -> tuple[Tensor, Tensor]:
    """Section 6.4's matrix: 500 zeros, 470 in U[0, 15], 20 in U[0, 60], 10 in U[-10, 0]."""
    g = torch.Generator().manual_seed(0)
    eig = torch.cat(
        [
            torch.rand(470, generator=g, dtype=torch.float64) * 15,
            torch.rand(20, generator=g, dtype=torch.float64) * 60,
            -torch.rand(10, generator=g, dtype=torch.float64) * 10,
            torch.zeros(500, dtype=torch.float64),
        ]
    )
    q, _ = torch.linalg.qr(torch.randn(1000, 1000, generator=g, dtype=torch.float64))
    h = (q * eig) @ q.T
    return (h + h.T) / 2, eig


def test_lanczos_is_much_closer_than_the_diagonal(synthetic: tuple[Tensor, Tensor]) -> None:
    h, eig = synthetic
    exact = (eig, torch.ones_like(eig))
    sd = spectral_density(h, 30, generator=torch.Generator().manual_seed(1))
    diag = compare_to_spectrum(h.diagonal(), exact, eps=0.5)
    lanczos = compare_to_spectrum(eig, sd, eps=0.5)  # exact eigenvalues vs the Lanczos measure
    assert lanczos["wasserstein"] < 0.2 * diag["wasserstein"]
    assert diag["wasserstein_relative"] == pytest.approx(
        diag["wasserstein"] / float(eig.max() - eig.min()), rel=1e-12
    )
    # Extremes: the diagonal sits in a narrow band (paper: 3.3 to 5.3) and misses every outlier.
    assert diag["diagonal_min"] == float(h.diagonal().min())
    assert diag["diagonal_max"] == float(h.diagonal().max())
    assert 2.0 < diag["diagonal_min"] < diag["diagonal_max"] < 7.0
    assert diag["spectrum_max"] == float(eig.max())
    assert diag["spectrum_min"] == float(eig.min())
    assert lanczos["spectrum_max"] == pytest.approx(float(eig.max()), rel=1e-6)
    assert lanczos["spectrum_min"] == pytest.approx(float(eig.min()), rel=1e-2)
    # Mass near zero: half the spectrum; the diagonal has none, Lanczos finds it.
    true_mass = float((eig.abs() <= 0.5).double().mean())
    assert diag["spectrum_mass_near_zero"] == pytest.approx(true_mass, abs=1e-15)
    assert diag["diagonal_mass_near_zero"] == 0.0
    assert lanczos["spectrum_mass_near_zero"] == pytest.approx(true_mass, abs=0.05)
    assert lanczos["spectrum_negative_mass_beyond_eps"] == pytest.approx(0.01, abs=0.01)


def _scipy_w1(u, v, uw, vw) -> float:
    stats = pytest.importorskip("scipy.stats")
    return float(stats.wasserstein_distance(u, v, uw, vw))


SPECTRUM_FORMS = {
    "tuple-tensors": lambda v, w: (torch.as_tensor(v), torch.as_tensor(w)),
    "tuple-numpy": lambda v, w: (np.asarray(v), np.asarray(w)),
    "spectrum-like": lambda v, w: SimpleNamespace(ritz_values=np.asarray(v), weights=w),
    "spectral-density": lambda v, w: SpectralDensity(
        nodes=torch.as_tensor(v), weights=torch.as_tensor(w), dim=len(v)
    ),
}


@pytest.mark.parametrize("form", sorted(SPECTRUM_FORMS))
def test_wasserstein_matches_scipy_for_every_spectrum_form(form: str) -> None:
    rng = np.random.default_rng(0)
    diag, values, weights = rng.normal(size=40), rng.normal(size=9) * 3, rng.random(9) * 7
    values[0] = diag[3]  # shared support point
    result = compare_to_spectrum(torch.as_tensor(diag), SPECTRUM_FORMS[form](values, weights))
    ref = _scipy_w1(diag, values, np.ones_like(diag), weights)
    assert result["wasserstein"] == pytest.approx(ref, rel=1e-12)
    assert result["spectrum_span"] == pytest.approx(float(values.max() - values.min()))


def test_extremes_masses_and_default_eps_on_a_hand_example() -> None:
    diag = torch.tensor([-2.0, 0.0, 0.001, 4.0], dtype=torch.float64)
    r = compare_to_spectrum(diag, ([-1.0, 0.0, 10.0], [0.25, 0.5, 0.25]))
    assert r["eps"] == pytest.approx(1e-3 * 10.0)
    assert (r["diagonal_min"], r["diagonal_max"]) == (-2.0, 4.0)
    assert (r["spectrum_min"], r["spectrum_max"]) == (-1.0, 10.0)
    assert r["diagonal_mass_near_zero"] == 0.5  # 0 and 0.001 are within 0.01
    assert r["spectrum_mass_near_zero"] == 0.5
    assert r["diagonal_negative_mass"] == 0.25
    assert r["spectrum_negative_mass"] == 0.25
    # W1 by hand: the CDFs differ by 1/4 on [-2, -1), [0, 0.001) and [4, 10), else agree.
    assert r["wasserstein"] == pytest.approx(0.25 * (1 + 0.001 + 6), rel=1e-12)
    r = compare_to_spectrum(diag, ([-1.0, 0.0, 10.0], [1, 2, 1]), eps=0.0)
    assert r["diagonal_mass_near_zero"] == 0.25
    assert compare_to_spectrum(diag, ([3.0], [1.0]))["wasserstein_relative"] != 0.0


COMPARE_ERRORS = {
    "empty diagonal": (torch.zeros(0), ([0.0], [1.0]), {}, ValueError, "diagonal is empty"),
    "nan diagonal": (torch.tensor([float("nan")]), ([0.0], [1.0]), {}, ValueError, "non-finite"),
    "lengths": (torch.ones(2), ([0.0, 1.0], [1.0]), {}, ValueError, "2 vs 1"),
    "negative weight": (torch.ones(2), ([0.0, 1.0], [1.0, -1.0]), {}, ValueError, "non-negative"),
    "not a spectrum": (torch.ones(2), "spectrum", {}, TypeError, "str"),
    "negative eps": (torch.ones(2), ([0.0], [1.0]), {"eps": -1.0}, ValueError, "-1.0"),
}


@pytest.mark.parametrize("name", sorted(COMPARE_ERRORS))
def test_compare_bad_input(name: str) -> None:
    diag, spectrum, kwargs, exc, match = COMPARE_ERRORS[name]
    with pytest.raises(exc, match=match):
        compare_to_spectrum(diag, spectrum, **kwargs)

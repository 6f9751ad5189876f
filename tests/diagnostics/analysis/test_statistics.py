"""loss_statistics against a brute-force per-batch computation with dense float64 curvature."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev

from diagnostics.analysis.statistics import loss_statistics


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)
    )


# name -> (model factory, loss, input shape, target factory)
CASES = {
    "mlp-mse": (_mlp, nn.MSELoss(), (3,), lambda n, g: torch.randn(n, 2, generator=g)),
    "mlp-ce": (
        _mlp,
        nn.CrossEntropyLoss(),
        (3,),
        lambda n, g: torch.randint(0, 2, (n,), generator=g),
    ),
    "cnn-ce": (
        _cnn,
        nn.CrossEntropyLoss(),
        (1, 6, 6),
        lambda n, g: torch.randint(0, 3, (n,), generator=g),
    ),
}
SIZES = (4, 4, 3)  # ragged last batch: weights 4/11, 4/11, 3/11


@pytest.fixture(params=sorted(CASES), name="case")
def _case(request: pytest.FixtureRequest) -> tuple[nn.Module, nn.Module, list]:
    factory, loss_fn, shape, target = CASES[request.param]
    torch.manual_seed(0)
    model = factory().double()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, *shape, generator=g, dtype=torch.float64), target(n, g)) for n in SIZES]
    data = [(x, y.double() if y.is_floating_point() else y) for x, y in data]
    return model, loss_fn, data


def _flat_fn(model: nn.Module, x: Tensor):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def out(theta: Tensor) -> Tensor:
        pieces = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return functional_call(model, params, (x,))

    return out


def _brute_force(model: nn.Module, loss_fn: nn.Module, data: list, probes: Tensor) -> dict:
    """Per-batch loss, gradient, dense H_b and G_b; weighted two-pass moments in float64."""
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    rows = []
    for x, y in data:
        out = _flat_fn(model, x)

        def loss(t: Tensor, out=out, y=y) -> Tensor:
            return loss_fn(out(t), y)

        h = hessian(loss)(theta)
        o = out(theta)
        jac = jacrev(out)(theta).reshape(o.numel(), -1)
        h_out = hessian(lambda z, y=y: loss_fn(z, y))(o.detach()).reshape(o.numel(), o.numel())
        ggn = jac.T @ h_out @ jac
        grad = torch.func.grad(loss)(theta)
        rows.append((x.shape[0], loss(theta).detach(), grad, h @ probes.T, ggn @ probes.T))
    w = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    w = w / w.sum()

    def moments(xs: list[Tensor]) -> tuple[Tensor, Tensor]:
        stack = torch.stack(xs)  # [B, ...]
        mean = torch.einsum("b,b...->...", w, stack)
        dev = ((stack - mean) ** 2).reshape(len(xs), *mean.shape)
        return mean, torch.einsum("b,b...->...", w, dev)

    ref = {}
    l_mean, l_var = moments([r[1] for r in rows])
    g_mean, g_var = moments([r[2] for r in rows])
    ref.update(loss_mean=l_mean, loss_var=l_var, grad_mean_sq_norm=g_mean.square().sum())
    ref["grad_var"] = g_var.sum()
    for key, idx in (("hessian", 3), ("ggn", 4)):
        mean, var = moments([r[idx] for r in rows])  # [P, K]
        ref[f"{key}_mean_sq_norm"] = mean.square().sum(0).mean()
        ref[f"{key}_var"] = var.sum(0).mean()
        ref[f"{key}_mu"] = (probes.T * mean).sum(0).mean()
    return {k: float(v) for k, v in ref.items()}


def test_matches_brute_force_on_ragged_batches(case: tuple) -> None:
    model, loss_fn, data = case
    stats = loss_statistics(model, loss_fn, data, num_probes=2, seed=3)
    ref = _brute_force(model, loss_fn, data, stats.probes)
    got = stats.as_dict()
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-13), key
    assert stats.num_samples == sum(SIZES)
    assert stats.num_batches == len(SIZES)
    assert stats.probes.norm(dim=1) == pytest.approx(torch.ones(2), rel=1e-14)
    # Variances are real spreads on these cases (the comparison above is not 0 == 0).
    assert min(ref["loss_var"], ref["grad_var"], ref["hessian_var"], ref["ggn_var"]) > 1e-8


def test_ragged_weighting_recovers_full_data_loss_and_gradient(case: tuple) -> None:
    model, loss_fn, data = case
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    full = loss_fn(model(x), y)
    grad = torch.autograd.grad(full, list(model.parameters()))
    full = full.detach()
    stats = loss_statistics(model, loss_fn, data, curvature=())
    assert stats.loss_mean == pytest.approx(float(full), rel=1e-12)
    sq = float(sum(g.square().sum() for g in grad))
    assert stats.grad_mean_sq_norm == pytest.approx(sq, rel=1e-10)
    plain = sum(float(loss_fn(model(b[0]), b[1]).detach()) for b in data) / len(data)
    assert abs(plain - float(full)) > 1e-6  # an unweighted batch mean would be wrong here


def test_weight_norms(case: tuple) -> None:
    model, loss_fn, data = case
    stats = loss_statistics(model, loss_fn, data, curvature=())
    named = dict(model.named_parameters())
    assert set(stats.weight_l2) == set(named)
    for name, p in named.items():
        p = p.detach()
        assert stats.weight_l2[name] == pytest.approx(float(torch.linalg.vector_norm(p.detach())))
        assert stats.weight_linf[name] == float(p.abs().max())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert stats.weight_l2_total == pytest.approx(float(flat.norm()), rel=1e-14)
    assert stats.weight_linf_total == float(flat.abs().max())


def test_single_batch_has_zero_variance() -> None:
    torch.manual_seed(0)
    model = _mlp().double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    stats = loss_statistics(model, nn.MSELoss(), (x, y), seed=0)
    assert stats.loss_var == 0.0
    assert stats.grad_var == 0.0
    assert stats.hessian_var == 0.0
    assert stats.ggn_var == 0.0
    assert stats.grad_mean_sq_norm > 0


def test_float32_is_accumulated_stably() -> None:
    """Batch losses near 1e6 that differ by O(1): float32 E[x^2]-E[x]^2 cancels catastrophically."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.mul_(0.01)  # outputs near 0, targets near 1000: losses near 1e6
    g = torch.Generator().manual_seed(0)
    data = []
    for n in (8, 8, 8, 5):
        x = 1.0 + 1e-4 * torch.randn(n, 2, generator=g)
        data.append((x, torch.full((n, 1), 1000.0) + 0.01 * torch.randn(n, 1, generator=g)))
    stats = loss_statistics(model, nn.MSELoss(), data, curvature=())
    losses = torch.stack([nn.MSELoss()(model(x), y).detach() for x, y in data])
    grads = torch.stack(
        [
            torch.cat(
                [
                    t.reshape(-1)
                    for t in torch.autograd.grad(
                        nn.MSELoss()(model(x), y), list(model.parameters())
                    )
                ]
            )
            for x, y in data
        ]
    )
    w = torch.tensor([float(b[0].shape[0]) for b in data], dtype=torch.float64)
    w /= w.sum()
    l64, g64 = losses.double(), grads.double()
    ref_loss_var = float(w @ (l64 - w @ l64) ** 2)
    ref_grad_var = float(w @ ((g64 - w @ g64) ** 2).sum(1))
    assert 0.1 < ref_loss_var < 1e3
    assert stats.loss_var == pytest.approx(ref_loss_var, rel=1e-9)
    assert stats.grad_var == pytest.approx(ref_grad_var, rel=1e-6)
    wf = w.float()
    naive_loss = float(wf @ losses**2 - (wf @ losses) ** 2)
    naive_grad = float((wf @ grads**2).sum() - ((wf @ grads) ** 2).sum())
    assert abs(naive_loss - ref_loss_var) > 0.5 * ref_loss_var  # the naive formula is useless
    assert abs(naive_grad - ref_grad_var) > 0.5 * ref_grad_var


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_batchnorm_state_and_grads_untouched(bn_mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    model.train()
    model[1].running_mean.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))] * 2
    stats = loss_statistics(model, nn.MSELoss(), data, bn_mode=bn_mode, seed=0)
    assert model.training
    assert model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        model.train(bn_mode == "train")
        expected = float(nn.MSELoss()(model(data[0][0]), data[0][1]))
        model.train()
        for k, v in before.items():
            model.state_dict()[k].copy_(v)
    assert stats.loss_mean == pytest.approx(expected, rel=1e-12)


def test_curvature_subset_and_dict_of_floats() -> None:
    torch.manual_seed(0)
    model = _mlp().double()
    data = (torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64))
    only_ggn = loss_statistics(model, nn.MSELoss(), data, curvature=("ggn",), seed=0)
    assert only_ggn.hessian_var is None
    assert only_ggn.ggn_mu is not None
    out = only_ggn.as_dict()
    assert "hessian_var" not in out
    assert "ggn_mu" in out
    assert all(isinstance(v, float) for v in out.values())
    assert "weight_l2/0.weight" in out
    assert "weight_linf/2.bias" in out
    both = loss_statistics(model, nn.MSELoss(), data, seed=0)
    assert both.ggn_mu == pytest.approx(only_ggn.ggn_mu, rel=1e-14)
    # MSE on a network: GGN is PSD, so mu >= 0 for any probe.
    assert both.ggn_mu > 0


def test_seed_reproducible() -> None:
    torch.manual_seed(0)
    model = _mlp().double()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))] * 2
    a = loss_statistics(model, nn.MSELoss(), data, seed=7, num_probes=3)
    b = loss_statistics(model, nn.MSELoss(), data, seed=7, num_probes=3)
    assert torch.equal(a.probes, b.probes)
    assert a.as_dict() == b.as_dict()


ERRORS = {
    "empty data": ({"data": []}, ValueError, "empty"),
    "bn_mode": ({"bn_mode": "batch"}, ValueError, "'batch'"),
    "curvature": ({"curvature": ("fisher",)}, ValueError, "'fisher'"),
    "num_probes": ({"num_probes": 0}, ValueError, "num_probes.*0"),
    "sum loss": ({"loss_fn": nn.MSELoss(reduction="sum")}, ValueError, "reduction='sum'"),
    "not a batch": ({"data": torch.ones(3)}, TypeError, "Tensor"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_input(name: str) -> None:
    overrides, exc, match = ERRORS[name]
    model = _mlp().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {
        "loss_fn": nn.MSELoss(),
        "data": (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)),
        **overrides,
    }
    with pytest.raises(exc, match=match):
        loss_statistics(model, kwargs.pop("loss_fn"), kwargs.pop("data"), **kwargs)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

"""Hessian and GGN operators against dense torch.func ground truth (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev

from lanczos_optim import GGNOperator, HessianOperator, flatten_tensors, lanczos, unflatten_vector


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        return self.out(h + self.block(h))


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(5, 3)
        self.unused = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


def _mlp() -> tuple[nn.Module, Tensor]:
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), torch.randn(10, 5)


def _cnn_bn() -> tuple[nn.Module, Tensor]:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    return model, torch.randn(10, 2, 6, 6)


def _residual() -> tuple[nn.Module, Tensor]:
    return _Residual(), torch.randn(10, 5)


MODELS = {"mlp": _mlp, "cnn_bn": _cnn_bn, "residual": _residual}


def _quartic(out: Tensor, y: Tensor) -> Tensor:
    """A loss with no closed-form output Hessian in the library: exercises autograd."""
    return ((out - nn.functional.one_hot(y, 3).to(out)) ** 4).mean() + out.sin().sum() / 50


LOSSES = {
    "ce": nn.CrossEntropyLoss(),
    "ce_sum": nn.CrossEntropyLoss(reduction="sum"),
    "ce_smooth": nn.CrossEntropyLoss(label_smoothing=0.1),
    "mse": None,  # built per case (targets are one-hot floats)
    "quartic": _quartic,
}


@pytest.fixture(params=sorted(MODELS))
def model_case(request: pytest.FixtureRequest) -> tuple[str, nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model, x = MODELS[request.param]()
    model = model.double()
    y = torch.randint(0, 3, (x.shape[0],))
    return request.param, model, x.double(), y


def _loss_and_targets(name: str, y: Tensor) -> tuple[object, Tensor]:
    if name == "mse":
        return nn.MSELoss(), nn.functional.one_hot(y, 3).double()
    return LOSSES[name], y


def _functional(model: nn.Module, bn_mode: str):
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def f(flat: Tensor, x: Tensor) -> Tensor:
        state = dict(zip(names, unflatten_vector(flat, params), strict=True))
        state.update({n: b.clone() for n, b in buffers.items()})
        return functional_call(model, state, (x,))

    model.eval()
    if bn_mode == "train":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    return f, flatten_tensors([p.detach() for p in params])


def _dense(model, loss_fn, batches, bn_mode):
    """Dense Hessian and GGN of the sample-weighted data-set loss."""
    flags = [(m, m.training) for m in model.modules()]
    f, w = _functional(model, bn_mode)
    total = sum(x.shape[0] for x, _ in batches)
    sum_red = getattr(loss_fn, "reduction", "mean") == "sum"
    hess = torch.zeros(w.numel(), w.numel(), dtype=torch.float64)
    ggn = torch.zeros_like(hess)
    for x, y in batches:
        scale = 1.0 if sum_red else x.shape[0] / total
        # Plain-autograd dense Hessian: torch.func's transforms give an asymmetric (wrong)
        # Hessian through train-mode BatchNorm in torch 2.14; finite differences agree with this.
        hess += scale * torch.autograd.functional.hessian(
            lambda v, x=x, y=y: loss_fn(f(v, x), y), w
        )
        out = f(w, x)
        jac = jacrev(lambda v, x=x: f(v, x))(w).reshape(out.numel(), -1)
        h_out = hessian(lambda o, y=y, s=out.shape: loss_fn(o.reshape(s), y))(out.reshape(-1))
        ggn += scale * jac.T @ h_out @ jac
    for m, flag in flags:
        m.training = flag
    return hess, ggn


def _snapshot(model: nn.Module) -> tuple[list[Tensor], list[bool]]:
    return [b.clone() for b in model.buffers()], [m.training for m in model.modules()]


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(params=[False, True], ids=["rebuild", "cached"])
def cache(request: pytest.FixtureRequest) -> bool:
    """Both product paths: a graph per call, and graphs kept between calls."""
    return request.param


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_products_match_dense_over_ragged_batches(model_case, loss_name, cache):
    _, model, x, y = model_case
    loss_fn, t = _loss_and_targets(loss_name, y)
    batches = [(x[:4], t[:4]), (x[4:9], t[4:9]), (x[9:], t[9:])]  # ragged: 4, 5, 1
    hess, ggn = _dense(model, loss_fn, batches, "eval")
    v = torch.randn(hess.shape[0], 3, dtype=torch.float64)
    # The quartic is a plain function: it states no reduction, so the test declares it.
    red = "mean" if loss_name == "quartic" else None
    h_op = HessianOperator(model, loss_fn, batches, cache_graphs=cache, reduction=red)
    g_op = GGNOperator(model, loss_fn, batches, cache_graphs=cache, reduction=red)
    for _ in range(2):  # the second round reuses the kept graphs
        assert _rel(h_op @ v, hess @ v) < 1e-10
        assert _rel(g_op @ v, ggn @ v) < 1e-10
        assert _rel(h_op @ v[:, 0], hess @ v[:, 0]) < 1e-10
    assert h_op.num_samples == 10
    assert h_op.num_products == 8


@pytest.mark.parametrize("curvature", [HessianOperator, GGNOperator])
def test_several_batches_equal_concatenated_batch(model_case, curvature):
    _, model, x, y = model_case
    loss_fn = nn.CrossEntropyLoss()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    split = curvature(model, loss_fn, [(x[:3], y[:3]), (x[3:], y[3:])]) @ v
    whole = curvature(model, loss_fn, (x, y)) @ v
    assert _rel(split, whole) < 1e-12


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_batchnorm_policy_and_buffers_untouched(bn_mode, cache):
    torch.manual_seed(1)
    model, x = _cnn_bn()
    model = model.double().train()
    model[2].eval()  # mixed flags must survive as they are
    x = x.double()
    y = torch.randint(0, 3, (10,))
    loss_fn = nn.CrossEntropyLoss()
    before = _snapshot(model)
    hess, ggn = _dense(model, loss_fn, [(x, y)], bn_mode)
    v = torch.randn(hess.shape[0], dtype=torch.float64)
    for curvature, dense in ((HessianOperator, hess), (GGNOperator, ggn)):
        op = curvature(model, loss_fn, (x, y), bn_mode=bn_mode, cache_graphs=cache)
        assert _rel(op @ v, dense @ v) < 1e-10
        assert _rel(op @ v, dense @ v) < 1e-10
    after = _snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
    assert before[1] == after[1]


def test_train_and_eval_bn_modes_differ():
    torch.manual_seed(2)
    model, x = _cnn_bn()
    model, x, y = model.double(), x.double(), torch.randint(0, 3, (10,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    a = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), bn_mode="eval") @ v
    b = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), bn_mode="train") @ v
    assert _rel(a, b) > 1e-3


def test_frozen_and_unused_parameters(cache):
    torch.manual_seed(3)
    model = _WithUnused().double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    model.used.bias.requires_grad_(False)
    h_op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), cache_graphs=cache)
    g_op = GGNOperator(model, nn.CrossEntropyLoss(), (x, y), cache_graphs=cache)
    assert h_op.shape == (15 + 18, 15 + 18)  # used.weight + unused.{weight,bias}
    v = torch.randn(33, dtype=torch.float64)
    for op in (h_op, g_op):
        out = op @ v
        assert torch.all(out[15:] == 0)
        assert out[:15].norm() > 0


def test_lanczos_on_hessian_operator_recovers_dense_spectrum():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    hess, _ = _dense(model, nn.CrossEntropyLoss(), [(x, y)], "eval")
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    res = lanczos(op, op.shape[0], generator=torch.Generator().manual_seed(0))
    exact = torch.linalg.eigvalsh(hess)
    # Every Ritz value is an eigenvalue; the extremes are found.
    gaps = (res.ritz_values[:, None] - exact[None, :]).abs().min(dim=1).values
    assert float(gaps.max()) < 1e-8
    assert abs(float(res.ritz_values[-1] - exact[-1])) < 1e-8
    assert abs(float(res.ritz_values[0] - exact[0])) < 1e-8


def test_loss_and_gradient_matches_autograd():
    torch.manual_seed(5)
    model, x = _mlp()
    model, x, y = model.double(), x.double(), torch.randint(0, 3, (10,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(x[:7], y[:7]), (x[7:], y[7:])])
    loss, grad = op.loss_and_gradient()
    ref_loss = nn.CrossEntropyLoss()(model(x), y)
    ref = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert abs(loss - float(ref_loss.detach())) < 1e-12
    assert _rel(grad, flatten_tensors(ref)) < 1e-12


def _error_cases():
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    ce = nn.CrossEntropyLoss()
    return {
        "empty list": (dict(model=model, loss_fn=ce, data=[]), ValueError, "empty"),
        "bad bn_mode": (
            dict(model=model, loss_fn=ce, data=(x, y), bn_mode="both"),
            ValueError,
            "bn_mode must be one of .* got 'both'",
        ),
        "tensor data": (dict(model=model, loss_fn=ce, data=x), TypeError, "got Tensor"),
        "iterator": (
            dict(model=model, loss_fn=ce, data=iter([(x, y)])),
            TypeError,
            "re-iterable",
        ),
        "not a module": (dict(model="net", loss_fn=ce, data=(x, y)), TypeError, "got str"),
        "bad cache_graphs": (
            dict(model=model, loss_fn=ce, data=(x, y), cache_graphs="yes"),
            TypeError,
            "cache_graphs must be True, False or None; got 'yes'",
        ),
        "foreign param": (
            dict(model=model, loss_fn=ce, data=(x, y), params=[nn.Parameter(torch.ones(2))]),
            ValueError,
            "not a parameter of model",
        ),
    }


@pytest.mark.parametrize("case", sorted(_error_cases()))
@pytest.mark.parametrize("curvature", [HessianOperator, GGNOperator])
def test_constructor_errors(case, curvature):
    kwargs, exc, match = _error_cases()[case]
    with pytest.raises(exc, match=match):
        curvature(**kwargs)


@pytest.mark.parametrize("curvature", [HessianOperator, GGNOperator])
def test_product_errors(curvature):
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    v = torch.randn(8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"scalar .* got shape \(4,\)"):
        curvature(model, nn.CrossEntropyLoss(reduction="none"), (x, y)) @ v
    with pytest.raises(TypeError, match="batch 1 is Tensor"):
        curvature(model, nn.CrossEntropyLoss(), [(x, y), x]) @ v
    op = curvature(model, nn.CrossEntropyLoss(), (x, y))
    with pytest.raises(ValueError, match=r"expects shape \(8,\); got \(7,\)"):
        op.matvec(torch.randn(7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expects shape \(8, K\); got \(7, 2\)"):
        op.matmat(torch.randn(7, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="no samples"):
        curvature(model, nn.CrossEntropyLoss(), [(x[:0], y[:0])]) @ v

"""Case table (curvlinops style): losses x reductions x ragged batches x output shapes.

Every case compares the operators, applied to every identity column, with a dense float64
truth over the concatenated data: the autograd Hessian of the total loss, and
:math:`J^\\top H_\\ell J` for the GGN, to 1e-10. 15 samples in ragged batches of 7, 5 and 3.
"""

from __future__ import annotations

import functools
import itertools
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev

from lanczos_optim import GGNOperator, HessianOperator

SIZES = (7, 5, 3)
N, C, T, D = sum(SIZES), 3, 4, 4


class _Seq(nn.Module):
    """A sequence head: ``[N, T, D]`` inputs to ``[N, C, T]`` outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, C))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).transpose(1, 2)


class _LogSoftmax(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.inner(x), dim=1)


def _model(shape: str) -> tuple[nn.Module, Tensor]:
    if shape == "seq":
        return _Seq(), torch.randn(N, T, D)
    return nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, C)), torch.randn(N, D)


def _classes(shape: str, ignore: bool) -> Tensor:
    y = torch.randint(0, C, (N,) if shape == "mlp" else (N, T))
    if ignore:  # padding-like: several ignored targets, spread unevenly over the batches
        flat = y.view(-1)
        flat[torch.randperm(flat.numel())[: flat.numel() // 3]] = -100
    return y


def _probs(shape: str) -> Tensor:
    logits = torch.randn((N, C) if shape == "mlp" else (N, C, T))
    return logits.softmax(dim=1).double()


def _dense_like(shape: str) -> Tensor:
    return torch.randn((N, C) if shape == "mlp" else (N, C, T)).double()


_W = torch.tensor([0.3, 1.7, 0.9], dtype=torch.float64)


class _SumOfUnreduced(nn.Module):
    """A custom loss whose ``reduction`` attribute says ``"none"`` but which returns a sum."""

    reduction = "none"

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, reduction="none").sum()


#: name -> (loss, targets(shape), truth loss or None (= the loss), wrap model in log_softmax)
CASES = {
    "ce_mean": (lambda: nn.CrossEntropyLoss(), lambda s: _classes(s, False)),
    "ce_sum": (lambda: nn.CrossEntropyLoss(reduction="sum"), lambda s: _classes(s, False)),
    "ce_weight": (lambda: nn.CrossEntropyLoss(weight=_W), lambda s: _classes(s, False)),
    "ce_ignore": (lambda: nn.CrossEntropyLoss(), lambda s: _classes(s, True)),
    "ce_weight_ignore_smooth": (
        lambda: nn.CrossEntropyLoss(weight=_W, label_smoothing=0.1),
        lambda s: _classes(s, True),
    ),
    "ce_weight_sum": (
        lambda: nn.CrossEntropyLoss(weight=_W, reduction="sum"),
        lambda s: _classes(s, True),
    ),
    "ce_probs_weight": (lambda: nn.CrossEntropyLoss(weight=_W), _probs),
    "nll_logsoftmax": (lambda: nn.NLLLoss(), lambda s: _classes(s, False)),
    "nll_weight_ignore": (lambda: nn.NLLLoss(weight=_W), lambda s: _classes(s, True)),
    "mse_mean": (lambda: nn.MSELoss(), _dense_like),
    "mse_sum": (lambda: nn.MSELoss(reduction="sum"), _dense_like),
    "bce_pos_weight": (
        lambda: nn.BCEWithLogitsLoss(pos_weight=torch.tensor([0.5, 2.0, 1.5]).double()[:, None]),
        lambda s: (_dense_like(s) > 0).double(),
    ),
    "huber": (lambda: nn.HuberLoss(delta=0.5), _dense_like),
    "huber_past_delta": (  # every residual past delta: a true zero GGN, not refused
        lambda: nn.HuberLoss(delta=0.01),
        lambda s: _dense_like(s) + 10.0,
    ),
    "partial_ce_weight_sum": (
        lambda: functools.partial(F.cross_entropy, weight=_W, reduction="sum"),
        lambda s: _classes(s, True),
    ),
    "partial_ce_weight_mean": (
        lambda: functools.partial(F.cross_entropy, weight=_W),
        lambda s: _classes(s, True),
    ),
    "lambda_mse_sum": (
        lambda: lambda o, y: F.mse_loss(o, y, reduction="sum"),
        _dense_like,
    ),
    "lambda_ce_sum": (
        lambda: lambda o, y: F.cross_entropy(o, y, reduction="sum"),
        lambda s: _classes(s, False),
    ),
    "lambda_mse_mean": (lambda: lambda o, y: F.mse_loss(o, y), _dense_like),
    "lambda_ce_mean": (  # passes the reduction check's split by class
        lambda: lambda o, y: F.cross_entropy(o, y),
        lambda s: _classes(s, False),
    ),
    "module_reduction_none_sum": (_SumOfUnreduced, lambda s: _classes(s, True)),
}


def _bce_pos_weight(loss: nn.Module, shape: str) -> nn.Module:
    if shape == "mlp":  # pos_weight broadcasts over the last dimension of [N, C]
        loss.pos_weight = loss.pos_weight[:, 0]
    return loss


def _case(name: str, shape: str) -> tuple[nn.Module, object, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(zlib.crc32(f"{name}-{shape}".encode()))  # stable across processes
    make_loss, make_targets = CASES[name]
    model, x = _model(shape)
    if name.startswith("nll"):
        model = _LogSoftmax(model)
    loss_fn = make_loss()
    if name == "bce_pos_weight":
        loss_fn = _bce_pos_weight(loss_fn, shape)
    y = make_targets(shape)
    model, x = model.double(), x.double()
    bounds = torch.tensor((0, *SIZES)).cumsum(0).tolist()
    batches = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
    return model, loss_fn, batches


def dense_truth(
    model: nn.Module, loss_fn: object, batches: list[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hessian, GGN, loss and gradient of the total loss over the concatenated data."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def f(flat: Tensor) -> Tensor:
        parts = flat.split([s.numel() for s in shapes])
        state = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return functional_call(model, state, (x,))

    def total(flat: Tensor) -> Tensor:
        return loss_fn(f(flat), y)  # type: ignore[operator]

    hess = torch.autograd.functional.hessian(total, w)
    out = f(w)
    jac = jacrev(f)(w).reshape(out.numel(), -1)
    if isinstance(model, _LogSoftmax):  # NLL on log-probabilities: CE on them
        h_loss = hessian(lambda o: F.cross_entropy(o.view(out.shape), y, weight=loss_fn.weight))
    else:
        h_loss = hessian(lambda o: loss_fn(o.view(out.shape), y))  # type: ignore[operator]
    h_out = h_loss(out.detach().reshape(-1))
    grad = torch.func.grad(total)(w)
    return hess, jac.T @ h_out @ jac, total(w).detach(), grad


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("shape", ["mlp", "seq"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_case_matches_dense_truth(name: str, shape: str) -> None:
    model, loss_fn, batches = _case(name, shape)
    hess, ggn, loss, grad = dense_truth(model, loss_fn, batches)
    eye = torch.eye(hess.shape[0], dtype=torch.float64)
    h_op = HessianOperator(model, loss_fn, batches)
    g_op = GGNOperator(model, loss_fn, batches)
    assert _rel(h_op @ eye, hess) < 1e-10
    assert _rel(g_op @ eye, ggn) < 1e-10
    value, gradient = h_op.loss_and_gradient()
    assert value == pytest.approx(float(loss), rel=1e-12)
    assert _rel(gradient, grad) < 1e-10
    assert h_op.num_samples == N


@pytest.mark.parametrize("name", ["ce_weight_ignore_smooth", "nll_weight_ignore", "lambda_ce_sum"])
def test_cached_graphs_match_dense_truth(name: str) -> None:
    model, loss_fn, batches = _case(name, "seq")
    hess, ggn, _, _ = dense_truth(model, loss_fn, batches)
    eye = torch.eye(hess.shape[0], dtype=torch.float64)
    for cls, dense in ((HessianOperator, hess), (GGNOperator, ggn)):
        op = cls(model, loss_fn, batches, cache_graphs=True)
        for _ in range(2):
            assert _rel(op @ eye, dense) < 1e-10


@pytest.mark.parametrize("name", ["ce_ignore", "ce_weight_sum"])
def test_batch_with_every_target_ignored_adds_nothing(name: str) -> None:
    model, loss_fn, batches = _case(name, "mlp")
    x, y = batches[2]
    batches[2] = (x, torch.full_like(y, -100))
    hess, ggn, _, _ = dense_truth(model, loss_fn, batches)
    eye = torch.eye(hess.shape[0], dtype=torch.float64)
    assert _rel(HessianOperator(model, loss_fn, batches) @ eye, hess) < 1e-10
    assert _rel(GGNOperator(model, loss_fn, batches) @ eye, ggn) < 1e-10


def test_every_target_ignored_is_refused() -> None:
    model, loss_fn, batches = _case("ce_ignore", "mlp")
    batches = [(x, torch.full_like(y, -100)) for x, y in batches]
    op = HessianOperator(model, loss_fn, batches)
    with pytest.raises(ValueError, match="ignore_index"):
        op @ torch.zeros(op.shape[0], dtype=torch.float64)


def test_weighted_lambda_of_unknown_reduction_is_refused() -> None:
    model, _, batches = _case("ce_weight", "mlp")
    loss_fn = lambda o, y: F.cross_entropy(o, y, weight=_W)  # noqa: E731
    for cls in (HessianOperator, GGNOperator):
        op = cls(model, loss_fn, batches)
        with pytest.raises(ValueError, match="reduction="):
            op @ torch.zeros(op.shape[0], dtype=torch.float64)


def test_one_batch_needs_no_reduction() -> None:
    model, _, batches = _case("ce_weight", "mlp")
    loss_fn = lambda o, y: F.cross_entropy(o, y, weight=_W)  # noqa: E731
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    hess, ggn, _, _ = dense_truth(model, loss_fn, [(x, y)])
    eye = torch.eye(hess.shape[0], dtype=torch.float64)
    assert _rel(HessianOperator(model, loss_fn, (x, y)) @ eye, hess) < 1e-10
    assert _rel(GGNOperator(model, loss_fn, (x, y)) @ eye, ggn) < 1e-10


def test_declared_reduction_is_used_and_checked() -> None:
    model, _, batches = _case("lambda_mse_sum", "mlp")
    loss_fn = lambda o, y: F.mse_loss(o, y, reduction="sum")  # noqa: E731
    hess, _, _, _ = dense_truth(model, loss_fn, batches)
    eye = torch.eye(hess.shape[0], dtype=torch.float64)
    op = HessianOperator(model, loss_fn, batches, reduction="sum")
    assert _rel(op @ eye, hess) < 1e-10
    with pytest.raises(ValueError, match="contradicts"):
        HessianOperator(model, nn.MSELoss(), batches, reduction="sum")
    with pytest.raises(ValueError, match="reduction must be"):
        HessianOperator(model, loss_fn, batches, reduction="avg")


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda o, y: (o * y).sum() / o.shape[0],  # a custom linear loss on raw outputs
        nn.L1Loss(),
        nn.KLDivLoss(reduction="batchmean"),  # on outputs that are not log-probabilities
    ],
    ids=["linear", "l1", "kldiv_raw"],
)
def test_ggn_of_loss_linear_in_raw_outputs_is_refused(loss_fn: object) -> None:
    model, _, batches = _case("mse_mean", "mlp")
    op = GGNOperator(model, loss_fn, batches[0])
    with pytest.raises(ValueError, match="linear in the model's outputs"):
        op @ torch.zeros(op.shape[0], dtype=torch.float64)


def test_kldiv_on_log_probabilities_gets_the_softmax_ggn() -> None:
    model, _, batches = _case("nll_logsoftmax", "mlp")
    target = [(x, _probs("mlp")[: len(x)]) for x, _ in batches]
    loss_fn = nn.KLDivLoss(reduction="batchmean")
    op = GGNOperator(model, loss_fn, target)
    _, ggn, _, _ = dense_truth(  # KL(p || q) = CE(p, q) - H(p): the softmax GGN of CE
        model.inner, lambda o, y: F.cross_entropy(o, y), target
    )
    assert _rel(op @ torch.eye(op.shape[0], dtype=torch.float64), ggn) < 1e-10


def _padded_after_first_batch() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """Ignored targets only after the first batch: its halves pass the check for a mean."""
    model, _, batches = _case("ce_mean", "mlp")
    x, y = batches[1]
    batches[1] = (x, y.clone().index_fill_(0, torch.tensor([0, 2]), -100))
    return model, batches


@pytest.mark.parametrize("reduction", [None, "mean"])
@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_unstated_mean_with_ignored_targets_is_refused(cls: type, reduction: str | None) -> None:
    # Weighting batches by their sample count was silently off by 0.32 (Hessian).
    model, batches = _padded_after_first_batch()
    loss_fn = lambda o, y: F.cross_entropy(o, y)  # noqa: E731
    op = cls(model, loss_fn, batches, reduction=reduction)
    with pytest.raises(ValueError, match="class index -100") as info:
        op @ torch.zeros(op.shape[0], dtype=torch.float64)
    assert "\n" not in str(info.value)


def test_unstated_reduction_with_ignored_targets_is_exact_where_it_can_be() -> None:
    model, batches = _padded_after_first_batch()
    eye = torch.eye(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    summed = lambda o, y: F.cross_entropy(o, y, reduction="sum")  # noqa: E731
    hess, ggn, _, _ = dense_truth(model, summed, batches)
    assert _rel(HessianOperator(model, summed, batches) @ eye, hess) < 1e-10
    assert _rel(GGNOperator(model, summed, batches) @ eye, ggn) < 1e-10
    mean = lambda o, y: F.cross_entropy(o, y)  # noqa: E731
    whole = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    hess, _, _, _ = dense_truth(model, mean, [whole])
    assert _rel(HessianOperator(model, mean, whole, reduction="mean") @ eye, hess) < 1e-10


@pytest.mark.parametrize(
    "first", [[0, 0, 0, 0], [0, 1, 1, 0]], ids=["one_class", "halves_of_one_mix"]
)
def test_class_weighted_lambda_is_refused_when_its_first_batch_hides_the_weights(
    first: list[int],
) -> None:
    # Both first batches pass the halves check for a mean; the weighting by sample count
    # that followed was silently off by 0.69 (one class).
    model, _, batches = _case("ce_weight", "mlp")
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([torch.tensor(first), torch.randint(0, C, (N - 4,))])
    batches = [(x[:4], y[:4]), (x[4:9], y[4:9]), (x[9:], y[9:])]
    loss_fn = lambda o, y: F.cross_entropy(o, y, weight=_W)  # noqa: E731
    for cls in (HessianOperator, GGNOperator):
        op = cls(model, loss_fn, batches)
        with pytest.raises(ValueError, match="reduction='mean' or 'sum'"):
            op @ torch.zeros(op.shape[0], dtype=torch.float64)

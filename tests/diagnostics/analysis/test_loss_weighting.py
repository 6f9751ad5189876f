"""The diagnostics that take a loss, with class weights, ignore_index and unknown reductions.

Truth: the dense float64 Hessian/GGN and gradient of the total loss over the concatenated data.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

from diagnostics.analysis import (
    UnsupportedModelError,
    compute_eigenspectrum,
    diagonal_approximations,
    hutchinson_diagonal,
    loss_statistics,
)
from lanczos_optim import GGNOperator

_W = torch.tensor([0.3, 1.7, 0.9], dtype=torch.float64)


def _case() -> tuple[nn.Module, list[tuple[Tensor, Tensor]], nn.Module]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    x = torch.randn(15, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (15,))
    y[[0, 1, 2, 3, 9]] = -100  # ignored targets, unevenly over the batches
    batches = [(x[:7], y[:7]), (x[7:12], y[7:12]), (x[12:], y[12:])]
    return model, batches, nn.CrossEntropyLoss(weight=_W)


def _truth(
    model: nn.Module, batches: list, loss_fn: object
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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

    out = f(w).detach()
    jac = jacrev(f)(w).reshape(out.numel(), -1)
    h_out = hessian(lambda o: loss_fn(o.view(out.shape), y))(out.reshape(-1))  # type: ignore[operator]
    hess = torch.autograd.functional.hessian(total, w)
    return hess, jac.T @ h_out @ jac, total(w).detach(), torch.func.grad(total)(w)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_spectrum_of_weighted_loss_is_exact(curvature: str) -> None:
    model, batches, loss_fn = _case()
    hess, ggn, _, _ = _truth(model, batches, loss_fn)
    dense = hess if curvature == "hessian" else ggn
    exact = torch.linalg.eigvalsh(dense)
    spec = compute_eigenspectrum(
        model, loss_fn, batches, curvature=curvature, lanczos_steps=dense.shape[0], seed=0
    )
    scale = float(exact.abs().max())
    assert abs(spec.lambda_max - float(exact[-1])) < 1e-9 * scale
    assert abs(spec.lambda_min - float(exact[0])) < 1e-9 * scale


def test_spectrum_refuses_a_shuffled_loader() -> None:
    model, batches, loss_fn = _case()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        compute_eigenspectrum(model, loss_fn, loader, lanczos_steps=3, seed=0)
    spec = compute_eigenspectrum(
        model, loss_fn, loader, lanczos_steps=3, seed=0, check_deterministic=False
    )
    assert spec.meta["num_samples"] == 15


def test_spectrum_of_a_lambda_of_sum_reduction() -> None:
    model, batches, _ = _case()
    loss_fn = lambda o, y: F.cross_entropy(o, y, reduction="sum")  # noqa: E731
    hess, _, _, _ = _truth(model, batches, loss_fn)
    exact = torch.linalg.eigvalsh(hess)
    spec = compute_eigenspectrum(model, loss_fn, batches, lanczos_steps=hess.shape[0], seed=0)
    assert abs(spec.lambda_max - float(exact[-1])) < 1e-9 * float(exact.abs().max())


def test_loss_statistics_means_are_the_data_loss_and_gradient() -> None:
    model, batches, loss_fn = _case()
    _, _, loss, grad = _truth(model, batches, loss_fn)
    stats = loss_statistics(model, loss_fn, batches, curvature=(), seed=0)
    assert stats.loss_mean == pytest.approx(float(loss), rel=1e-12)
    assert stats.grad_mean_sq_norm == pytest.approx(float(grad.square().sum()), rel=1e-10)
    assert stats.num_samples == 15


def test_loss_statistics_checks_an_unknown_reduction() -> None:
    model, batches, _ = _case()
    batches = [(x, y.clamp_min(0)) for x, y in batches]
    mean = lambda o, y: F.cross_entropy(o, y)  # noqa: E731
    _, _, loss, _ = _truth(model, batches, mean)
    stats = loss_statistics(model, mean, batches, curvature=(), seed=0)
    assert stats.loss_mean == pytest.approx(float(loss), rel=1e-12)
    summed = lambda o, y: F.cross_entropy(o, y, reduction="sum")  # noqa: E731
    with pytest.raises(ValueError, match="reduction='sum'"):
        loss_statistics(model, summed, batches, curvature=(), seed=0)


def test_backpack_refuses_ignored_targets_and_the_fallback_is_unbiased() -> None:
    model, batches, _ = _case()
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(UnsupportedModelError, match="ignore_index"):
        diagonal_approximations(model, loss_fn, batches, ["diag_ggn_exact"])
    _, ggn, _, _ = _truth(model, batches, loss_fn)
    op = GGNOperator(model, loss_fn, batches)
    estimate = hutchinson_diagonal(op, 1000, generator=torch.Generator().manual_seed(0))
    err = float((estimate - ggn.diagonal()).norm() / ggn.diagonal().norm())
    off = float((ggn - torch.diag(ggn.diagonal())).square().sum().sqrt() / ggn.diagonal().norm())
    assert err < 4 * off / 1000**0.5  # the Hutchinson error of the exact operator's diagonal
    with pytest.warns(UserWarning, match="ignore_index"):
        fallback = diagonal_approximations(
            model,
            loss_fn,
            batches,
            ["diag_ggn_exact"],
            fallback="hutchinson",
            seed=0,
            hutchinson_samples=1000,
        )
    assert torch.allclose(fallback["diag_ggn_exact"], estimate, rtol=1e-12, atol=0)


def test_statistics_refuse_an_unstated_mean_over_ignored_targets() -> None:
    model, batches, _ = _case()
    batches = [batches[2], batches[0], batches[1]]  # a first batch without ignored targets
    with pytest.raises(ValueError, match="class index -100"):
        loss_statistics(model, lambda o, y: F.cross_entropy(o, y), batches, curvature=())

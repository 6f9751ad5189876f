"""The public curvature building blocks against dense float64 ground truth."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

import lanczos_optim
from lanczos_optim import (
    CURVATURES,
    GGNOperator,
    HessianOperator,
    check_data,
    curvature_mode,
    curvature_operator,
    flatten_tensors,
    ggn_product,
    hessian_product,
    iterate_batches,
    output_hessian_product,
    select_params,
    unflatten_vector,
)

F64 = torch.float64


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(10, 3, dtype=F64)
    y = torch.randint(0, 3, (10,))
    return model, nn.CrossEntropyLoss(), x, y


def _dense(model, loss_fn, x, y):
    """Dense Hessian and GGN of the loss in the flat parameters, by torch.func."""
    names = [n for n, _ in model.named_parameters()]
    flat = flatten_tensors([p.detach() for p in model.parameters()])
    params = list(model.parameters())

    def outputs(w):
        return functional_call(model, dict(zip(names, unflatten_vector(w, params), strict=True)), x)

    h = hessian(lambda w: loss_fn(outputs(w), y))(flat)
    jac = jacrev(outputs)(flat).reshape(-1, flat.numel())
    out = outputs(flat).detach()
    h_out = hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    return h, jac.T @ h_out @ jac


def test_products_on_one_graph_match_the_dense_matrices() -> None:
    model, loss_fn, x, y = _problem()
    h, g = _dense(model, loss_fn, x, y)
    params, names = select_params(model, None)
    assert names == [n for n, _ in model.named_parameters()]
    v = torch.randn(h.shape[0], dtype=F64)
    with curvature_mode(model, "eval"):
        out = model(x)
        loss = loss_fn(out, y)
        _, hvp = hessian_product(loss, params)
        pieces = unflatten_vector(v, params)
        torch.testing.assert_close(flatten_tensors(hvp(pieces)), h @ v)
        # after the Hessian products: the GGN's first backward frees the loss-to-output graph
        _, gvp = ggn_product(loss, out, params, output_hessian_product(loss_fn, out, y))
        torch.testing.assert_close(flatten_tensors(gvp(pieces)), g @ v)
        many = gvp.many([pieces, unflatten_vector(2 * v, params)])
        torch.testing.assert_close(flatten_tensors(many[1]), 2 * (g @ v))


@pytest.mark.parametrize("curvature", CURVATURES)
def test_the_factory_builds_the_named_operator(curvature: str) -> None:
    model, loss_fn, x, y = _problem()
    h, g = _dense(model, loss_fn, x, y)
    op = curvature_operator(curvature, model, loss_fn, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert type(op) is {"hessian": HessianOperator, "ggn": GGNOperator}[curvature]
    eye = torch.eye(h.shape[0], dtype=F64)
    torch.testing.assert_close(op @ eye, h if curvature == "hessian" else g)


def test_the_factory_passes_operator_keywords_and_refuses_unknown_names() -> None:
    model, loss_fn, x, y = _problem()
    op = curvature_operator("ggn", model, loss_fn, (x, y), bn_mode="train", cache_graphs=False)
    assert (op.bn_mode, op.cache_graphs) == ("train", False)
    with pytest.raises(ValueError, match=r"Invalid curvature: 'fisher'; expected one of"):
        curvature_operator("fisher", model, loss_fn, (x, y))


def test_data_helpers() -> None:
    x, y = torch.ones(3, 2, dtype=torch.float32), torch.zeros(3, dtype=torch.int64)
    assert check_data((x, y)) == [(x, y)]
    with pytest.raises(TypeError, match="re-iterable"):
        check_data(iter([(x, y)]))
    ((bx, by, n),) = list(iterate_batches([(x, y)], torch.device("cpu"), F64))
    assert (bx.dtype, by.dtype, n) == (F64, torch.int64, 3)


def test_curvature_mode_restores_batchnorm_bitwise() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with curvature_mode(model, "train"):
        assert model[1].training
        assert not model[0].training
        model(torch.randn(5, 2, dtype=F64))  # updates the running statistics
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("module", ["curvature", "validation"])
def test_public_names_are_exported_and_the_examples_run(module: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module(f"lanczos_optim.{module}")
    assert set(mod.__all__) <= set(lanczos_optim.__all__)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3
    assert result.failed == 0

"""Graphs kept between products: built once, and rebuilt whenever the model or data change."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lanczos_optim import GGNOperator, HessianOperator, lanczos


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    return model


def _batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (12,), generator=g
    )


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _fresh(op: HessianOperator | GGNOperator, v: Tensor) -> Tensor:
    """The product from scratch: a new operator without a cache."""
    again = type(op)(op.model, op.loss_fn, op.data, bn_mode=op.bn_mode, cache_graphs=False)
    return again @ v


@pytest.fixture(params=[HessianOperator, GGNOperator], ids=["hessian", "ggn"])
def curvature(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.fixture(params=["eval", "train"])
def bn_mode(request: pytest.FixtureRequest) -> str:
    return request.param


def test_default_caches_a_single_batch_only(curvature):
    model, (x, y) = _model(), _batch()
    loss_fn = nn.CrossEntropyLoss()
    assert curvature(model, loss_fn, (x, y)).cache_graphs is True
    assert curvature(model, loss_fn, [(x, y)]).cache_graphs is False
    assert curvature(model, loss_fn, [(x, y)], cache_graphs=True).cache_graphs is True


def test_one_forward_per_batch_however_many_products(curvature, bn_mode):
    model, (x, y) = _model(), _batch()
    calls = _count_forwards(model)
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    op = curvature(model, nn.CrossEntropyLoss(), batches, bn_mode=bn_mode, cache_graphs=True)
    v = torch.randn(op.shape[0], 3, dtype=torch.float64)
    results = [op @ v for _ in range(3)]
    assert calls[0] == 2
    assert torch.allclose(results[0], results[2], rtol=0, atol=1e-14)
    assert torch.allclose(results[0], _fresh(op, v), rtol=1e-12, atol=1e-14)
    before = calls[0]
    op.clear_cache()
    op @ v
    assert calls[0] == before + 2  # a rebuild after clear_cache


def _optimizer_step(model: nn.Module, x: Tensor, y: Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.step()


def _fused_optimizer_step(model: nn.Module, x: Tensor, y: Tensor) -> None:
    # Fused optimisers write the parameters without bumping their version counters.
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    nn.CrossEntropyLoss()(model(x), y).backward()
    versions = [p._version for p in model.parameters()]
    opt.step()
    assert [p._version for p in model.parameters()] == versions


def _data_write(model: nn.Module, x: Tensor, y: Tensor) -> None:
    for p in model.parameters():
        p.data.add_(0.1)  # bypasses autograd's version counters


def _running_stats(model: nn.Module, x: Tensor, y: Tensor) -> None:
    model.train()
    with torch.no_grad():
        model(x * 3 + 1)  # BatchNorm updates its running statistics, versions unchanged
    model.eval()


def _load_state(model: nn.Module, x: Tensor, y: Tensor) -> None:
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    model.load_state_dict(other.state_dict())


def _input_write(model: nn.Module, x: Tensor, y: Tensor) -> None:
    x.mul_(2.0)


def _input_data_write(model: nn.Module, x: Tensor, y: Tensor) -> None:
    x.data.mul_(2.0)  # no version bump on x


def _row_permutation(model: nn.Module, x: Tensor, y: Tensor) -> None:
    w = model[0].weight
    w.data.copy_(w.data[torch.tensor([5, 4, 3, 2, 1, 0])])  # keeps every plain sum


CHANGES: dict[str, Callable[[nn.Module, Tensor, Tensor], None]] = {
    "optimizer step": _optimizer_step,
    "fused optimizer step": _fused_optimizer_step,
    "write through .data": _data_write,
    "BatchNorm running statistics": _running_stats,
    "load_state_dict": _load_state,
    "in-place write to the data": _input_write,
    "write to the data through .data": _input_data_write,
    "row permutation through .data": _row_permutation,
}


#: Changes that bypass autograd's version counters on parameters or data: only
#: ``cache_check="full"`` (checksums of everything) sees them; "fast" documents that it does not.
FULL_CHECK_ONLY = {
    "write through .data",
    "write to the data through .data",
    "row permutation through .data",
}


@pytest.fixture(params=["fast", "full"])
def cache_check(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_stale_graphs_are_rebuilt(curvature, change, cache_check):
    model, (x, y) = _model(), _batch()
    op = curvature(model, nn.CrossEntropyLoss(), (x, y), cache_check=cache_check)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    before = op @ v
    calls = _count_forwards(model)
    CHANGES[change](model, x, y)
    builds = calls[0]
    after = op @ v
    rebuilt = calls[0] - builds
    truth = _fresh(op, v)
    assert float((before - truth).norm() / truth.norm()) > 1e-4  # the change matters
    if cache_check == "fast" and change in FULL_CHECK_ONLY:
        assert rebuilt == 0  # documented: the fast check trusts version counters
        assert not torch.allclose(after, truth, rtol=1e-6, atol=1e-8)
    else:
        assert rebuilt == 1
        assert torch.allclose(after, truth, rtol=1e-12, atol=1e-14)


def test_fast_check_reads_no_parameter_or_data(curvature, monkeypatch):
    from lanczos_optim.operators import _graph_cache

    model, (x, y) = _model(), _batch()
    seen: list[int] = []
    real = _graph_cache._checksum
    monkeypatch.setattr(
        _graph_cache,
        "_checksum",
        lambda state, batches: seen.append(len(state) + len(batches)) or real(state, batches),
    )
    op = curvature(model, nn.CrossEntropyLoss(), (x, y))
    op @ torch.randn(op.shape[0], dtype=torch.float64)
    op @ torch.randn(op.shape[0], dtype=torch.float64)
    assert seen == [len(list(model.buffers()))] * 2  # at the build and one check: buffers only


def test_cache_check_is_validated(curvature):
    with pytest.raises(ValueError, match=r"cache_check must be one of \('fast', 'full'\); got 'x'"):
        curvature(_model(), nn.CrossEntropyLoss(), _batch(), cache_check="x")


def test_unchanged_model_keeps_the_graph_across_other_operators(curvature, bn_mode):
    model, (x, y) = _model(), _batch()
    calls = _count_forwards(model)
    op = curvature(model, nn.CrossEntropyLoss(), (x, y), bn_mode=bn_mode)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    first = op @ v
    buffers = [b.clone() for b in model.buffers()]
    other = HessianOperator(model, nn.CrossEntropyLoss(), [(x, y)], bn_mode=bn_mode)
    other @ v  # runs the model in curvature mode and restores it
    assert calls[0] == 2
    assert torch.equal(op @ v, first)
    assert calls[0] == 2  # no rebuild: restoring unchanged buffers does not touch them
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_lanczos_with_cache_matches_without(curvature, bn_mode):
    model, (x, y) = _model(), _batch()
    spectra = []
    for cache in (False, True):
        op = curvature(model, nn.CrossEntropyLoss(), (x, y), bn_mode=bn_mode, cache_graphs=cache)
        res = lanczos(op, 12, generator=torch.Generator().manual_seed(3))
        spectra.append(res.ritz_values)
    assert torch.allclose(spectra[0], spectra[1], rtol=1e-10, atol=1e-12)


def test_failed_build_leaves_no_cache_and_model_intact(curvature):
    model, (x, y) = _model(), _batch()
    snapshot = [t.clone() for t in (*model.parameters(), *model.buffers())]
    op = curvature(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
    with pytest.raises(ValueError, match="scalar"):
        op @ torch.randn(op.shape[0], dtype=torch.float64)
    assert op._cache.entries is None
    after = (*model.parameters(), *model.buffers())
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after, strict=True))


def test_numpy_array_refilled_behind_the_inputs(curvature):
    model, (x, y) = _model(), _batch()
    array = x.numpy().copy()
    op = curvature(model, nn.CrossEntropyLoss(), (torch.from_numpy(array), y), cache_check="full")
    v = torch.randn(op.shape[0], dtype=torch.float64)
    before = op @ v
    array[:] = 3 * array + 1  # the tensor sees it, its version counter does not
    truth = _fresh(op, v)
    assert float((before - truth).norm() / truth.norm()) > 1e-4
    assert torch.allclose(op @ v, truth, rtol=1e-12, atol=1e-14)


def test_replaced_batch_of_a_list_is_seen(curvature):
    """float32 data for a float64 model: the graph holds cast copies, not the listed tensors."""
    model, (x, y) = _model(), _batch()
    data = [(x[:6].float(), y[:6]), (x[6:].float(), y[6:])]
    op = curvature(model, nn.CrossEntropyLoss(), data, cache_graphs=True)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    for seed in range(5):  # freed and reallocated storage must not pass for the old batch
        op @ v
        data[0] = None
        data[0] = (torch.randn(6, 4, generator=torch.Generator().manual_seed(seed)), y[:6])
        assert torch.allclose(op @ v, _fresh(op, v), rtol=1e-12, atol=1e-14)


class _Graph(nn.Module):
    """A graph network whose adjacency is a (sparse or dense) buffer."""

    def __init__(self, adjacency: Tensor) -> None:
        super().__init__()
        self.register_buffer("adj", adjacency)
        self.inp, self.out = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        return self.out(torch.sparse.mm(self.adj, h) if self.adj.is_sparse else self.adj @ h)


@pytest.mark.parametrize("cache", [None, False])
def test_sparse_buffer_falls_back_to_rebuilt_graphs(curvature, cache):
    """No cache on a model it cannot fingerprint; the GGN then avoids forward-mode AD too."""
    torch.manual_seed(4)
    adjacency = ((torch.rand(12, 12) < 0.3).double() + torch.eye(12)).double()
    dense = _Graph(adjacency).double()
    sparse = _Graph(adjacency.to_sparse()).double()
    sparse.load_state_dict(
        {k: v for k, v in dense.state_dict().items() if k != "adj"}, strict=False
    )
    sparse.train()
    x, y = _batch()
    op = curvature(sparse, nn.CrossEntropyLoss(), (x, y), cache_graphs=cache)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    truth = curvature(dense, nn.CrossEntropyLoss(), (x, y), cache_graphs=False) @ v
    assert torch.allclose(op @ v, truth, rtol=1e-12, atol=1e-14)
    assert op._cache.entries is None
    assert sparse.training
    assert sparse.adj.is_sparse


def test_inference_tensors_fall_back_to_rebuilt_graphs(curvature):
    model, (x, y) = _model(), _batch()
    with torch.inference_mode():
        xi = x.float().clone()  # cast to the model's float64 on the way in
    op = curvature(model, nn.CrossEntropyLoss(), (xi, y))
    v = torch.randn(op.shape[0], dtype=torch.float64)
    assert torch.allclose(op @ v, _fresh(op, v), rtol=1e-12, atol=1e-14)
    assert op._cache.entries is None


def test_nan_and_complex_buffers_keep_the_cache(curvature):
    model, (x, y) = _model(), _batch()
    model.register_buffer("placeholder", torch.full((3,), float("nan")))
    model.register_buffer("phase", torch.ones(2, dtype=torch.complex128))
    calls = _count_forwards(model)
    op = curvature(model, nn.CrossEntropyLoss(), (x, y))
    v = torch.randn(op.shape[0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "casting complex values discards the imaginary part"
        results = [op @ v for _ in range(4)]
    assert calls[0] == 1
    assert torch.equal(results[0], results[-1])
    assert torch.isnan(model.placeholder).all()

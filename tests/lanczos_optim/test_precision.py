"""The operators' precision policy: full, TF32 (CUDA only) and a bfloat16 forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lanczos_optim import GGNOperator, HessianOperator, lanczos


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        nn.Tanh(),
        nn.Linear(16, 5),
    )


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g))]


@pytest.fixture(params=[HessianOperator, GGNOperator], ids=["hessian", "ggn"])
def curvature(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.fixture(params=[False, True], ids=["rebuilt", "kept"])
def cache(request: pytest.FixtureRequest) -> bool:
    return request.param


def _product(curvature: type, cache: bool, precision: str) -> torch.Tensor:
    model = _model()
    op = curvature(model, nn.CrossEntropyLoss(), _data(), cache_graphs=cache, precision=precision)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2))
    return op @ torch.stack([v, v.flip(0)], 1)


def test_bf16_runs_the_forward_in_bfloat16(curvature, cache):
    full = _product(curvature, cache, "highest")
    low = _product(curvature, cache, "bf16")
    assert low.dtype == torch.float32
    err = float((low - full).norm() / full.norm())
    assert 1e-4 < err < 5e-2  # bfloat16 was used (8-bit mantissa), and the product is close


def test_tf32_changes_nothing_on_the_cpu(curvature, cache):
    assert torch.equal(_product(curvature, cache, "tf32"), _product(curvature, cache, "highest"))


def test_bf16_ritz_values_near_full_precision(curvature):
    model, data = _model(), _data()
    runs = {}
    for precision in ("highest", "bf16"):
        op = curvature(model, nn.CrossEntropyLoss(), data, precision=precision)
        gen = torch.Generator().manual_seed(0)
        runs[precision] = lanczos(op, 20, generator=gen).ritz_values
    top, low = runs["highest"][-1], runs["bf16"][-1]
    assert abs(float(low / top) - 1) < 2e-2


@pytest.mark.parametrize("global_tf32", [False, True])
def test_switches_are_restored(curvature, global_tf32):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = global_tf32
        seen = []
        model = _model()
        model.register_forward_hook(lambda *_: seen.append((matmul.allow_tf32, cudnn.allow_tf32)))
        for precision, inside in (("highest", False), ("tf32", True)):
            seen.clear()
            op = curvature(model, nn.CrossEntropyLoss(), _data(), precision=precision)
            op @ torch.ones(op.shape[0])
            assert seen
            assert all(s == (inside, inside) for s in seen)
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (global_tf32, global_tf32)
        # Restored on an error inside the product too.
        op = curvature(model, nn.CrossEntropyLoss(), _data(), precision="tf32")
        model.register_forward_hook(lambda *_: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            op @ torch.ones(op.shape[0])
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (global_tf32, global_tf32)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


@pytest.mark.parametrize("bad", ["fp16", "float32", None, 3])
def test_precision_is_validated(curvature, bad):
    with pytest.raises(ValueError, match=r"precision must be one of \('highest', 'tf32', 'bf16'\)"):
        curvature(_model(), nn.CrossEntropyLoss(), _data(), precision=bad)


def test_only_the_tf32_switches_change(curvature):
    cudnn = torch.backends.cudnn
    saved = (cudnn.enabled, cudnn.deterministic, cudnn.benchmark)
    try:
        cudnn.deterministic, cudnn.benchmark = True, True
        seen = []
        model = _model()
        model.register_forward_hook(
            lambda *_: seen.append((cudnn.enabled, cudnn.deterministic, cudnn.benchmark))
        )
        for precision in ("highest", "tf32", "bf16"):
            op = curvature(model, nn.CrossEntropyLoss(), _data(), precision=precision)
            op @ torch.ones(op.shape[0])
        assert seen
        assert all(s == (saved[0], True, True) for s in seen)
    finally:
        cudnn.enabled, cudnn.deterministic, cudnn.benchmark = saved


def test_users_of_the_new_fp32_precision_api(curvature):
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch without the fp32_precision API")
    saved = (matmul.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision = conv.fp32_precision = "tf32"  # legacy reads now raise
        seen = []
        model = _model()
        model.register_forward_hook(
            lambda *_: seen.append((matmul.fp32_precision, conv.fp32_precision))
        )
        for precision, inside in (("highest", "ieee"), ("tf32", "tf32")):
            seen.clear()
            op = curvature(model, nn.CrossEntropyLoss(), _data(), precision=precision)
            op @ torch.ones(op.shape[0])
            assert seen
            assert all(s == (inside, inside) for s in seen)
            assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved

"""Model zoo: shapes, parameter counts against closed forms, names, bad input, doctests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics.training.models import MODELS, VGG16, PreResNet, build_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _vgg16_count(classes: int, in_channels: int = 3, bn: bool = False) -> int:
    """Closed form for the classic CIFAR VGG16 (conv 3x3 + bias, [BN], 3 linear layers)."""
    total, c = 0, in_channels
    for v in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512):
        total += 9 * c * v + v + (2 * v if bn else 0)
        c = v
    return total + (512 * 512 + 512) * 2 + 512 * classes + classes


def test_vgg16_cifar100_has_the_papers_parameter_count() -> None:
    model = build_model("VGG16", input_shape=(3, 32, 32), num_classes=100)
    # The paper: P = 15,291,300 for VGG16 on CIFAR-100; Garipov et al.'s layout gives exactly that.
    assert _count(model) == 15_291_300 == _vgg16_count(100)


def test_vgg16_bn_adds_two_parameters_per_channel() -> None:
    model = build_model("vgg16_bn", input_shape=(3, 32, 32), num_classes=10)
    assert _count(model) == _vgg16_count(10, bn=True) == 15_253_578
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in VGG16(10).modules())


@pytest.mark.parametrize(("depth", "params"), [(20, 272_282), (56, 855_578), (110, 1_730_522)])
def test_preresnet_depths_and_counts(depth: int, params: int) -> None:
    model = build_model(f"PreResNet{depth}", input_shape=(3, 32, 32), num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth  # 6n + 1 convolutions and one linear layer
    assert _count(model) == params  # He et al. 2016: 0.27M, 0.85M, 1.7M


@pytest.mark.parametrize(
    ("name", "shape"),
    [(name, (1, 8, 8)) for name in MODELS]
    + [(name, (3, 12, 12)) for name in ("vgg16", "preresnet20", "small_cnn", "mlp")],
)
def test_every_model_maps_images_to_logits(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, input_shape=shape, num_classes=7).eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_small_models_are_differentiable_and_seeded() -> None:
    torch.manual_seed(0)
    a = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    torch.manual_seed(0)
    b = build_model("small-cnn", input_shape=(1, 8, 8), num_classes=10)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    loss = a(torch.randn(4, 1, 8, 8)).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in a.parameters())


def test_mlp_options() -> None:
    model = build_model("mlp", input_shape=(2, 3), num_classes=4, hidden=(5, 6), activation="tanh")
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [5, 6, 4]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: build_model("resnet50", input_shape=(3, 32, 32), num_classes=10), ValueError,
         r"Unknown model 'resnet50'; allowed: vgg16, vgg16_bn, preresnet20, .*mlp"),
        (lambda: build_model("vgg16", input_shape=(32, 32), num_classes=10), ValueError,
         r"input_shape must be 3 positive ints"),
        (lambda: build_model("mlp", input_shape=(0, 4), num_classes=10), ValueError,
         r"input_shape must be positive ints"),
        (lambda: build_model("mlp", input_shape=(4,), num_classes=0), ValueError,
         r"num_classes must be a positive int"),
        (lambda: build_model("mlp", input_shape=(4,), num_classes=2, activation="gelu"),
         ValueError, r"Unknown activation 'gelu'; allowed: relu, tanh, sigmoid"),
        (lambda: build_model("mlp", input_shape=(4,), num_classes=2, width=3), TypeError,
         r"width"),
        (lambda: PreResNet(21), ValueError, r"6n \+ 2"),
    ],
)  # fmt: skip
def test_bad_input(call, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()

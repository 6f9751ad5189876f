"""Networks of the paper's harness: VGG16 (with/without BatchNorm), PreResNets, a CNN, an MLP.

Every model maps images ``[N, C, H, W]`` to logits ``[N, num_classes]`` and is built only from
standard ``torch.nn`` layers (``nn.Flatten`` instead of a functional reshape), so BackPACK can
extend the plain feed-forward ones (:class:`VGG16` without BatchNorm, :func:`small_cnn`,
:func:`mlp`).

Example:
    >>> import torch
    >>> model = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from diagnostics.training._preresnet import PreResNet

__all__ = ["MODELS", "VGG16", "PreResNet", "build_model", "mlp", "small_cnn"]

#: Names accepted by :func:`build_model` (case, ``-`` and ``_`` are ignored when matching).
MODELS = ("vgg16", "vgg16_bn", "preresnet20", "preresnet56", "preresnet110", "small_cnn", "mlp")

_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
_VGG16_LAYOUT += (512, 512, 512, "M")


def _check_shape(input_shape: Sequence[int], dims: int | None = 3) -> tuple[int, ...]:
    shape = tuple(input_shape)
    bad = not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    if bad or not shape or (dims is not None and len(shape) != dims):
        want = f"{dims} positive ints (C, H, W)" if dims else "positive ints"
        raise ValueError(f"input_shape must be {want}; got {input_shape!r}.")
    return shape


class VGG16(nn.Sequential):
    r"""VGG16 for CIFAR-sized images (the layout of Garipov et al.'s SWA code).

    Thirteen 3x3 convolutions ``64,64,M,128,128,M,256x3,M,512x3,M,512x3,M`` (optionally each
    followed by BatchNorm), then ``Dropout-Linear(512,512)-ReLU-Dropout-Linear(512,512)-ReLU-
    Linear(512,C)``. A max-pool is skipped once the feature map is 1x1, so small inputs (8x8 digits,
    28x28 MNIST) work too; on 32x32 inputs the layout is exactly the classic one, with
    :math:`P = 15\,291\,300` parameters for CIFAR-100 without BatchNorm (as in the paper).

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels (3 for CIFAR).
        input_size: Height and width of the (square) input; ``(H, W)`` also accepted.
        batch_norm: Insert ``BatchNorm2d`` after every convolution (VGG16-BN).
        dropout: Dropout probability of the classifier.

    Example:
        >>> import torch
        >>> VGG16(num_classes=10, in_channels=1, input_size=8)(torch.zeros(1, 1, 8, 8)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int | tuple[int, int] = 32,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG16_LAYOUT:
            if v == "M":
                if height >= 2 and width >= 2:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    height, width = height // 2, width // 2
                continue
            layers.append(nn.Conv2d(channels, int(v), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            channels = int(v)
        classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(512 * height * width, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = classifier
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):  # He initialisation, as in the reference code
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)


def small_cnn(
    input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)
) -> nn.Sequential:
    """A small CNN: per entry of ``channels`` a conv3x3-ReLU-maxpool2 stage, then a linear layer.

    A max-pool is skipped once the feature map is 1x1. Only BackPACK-supported layers are used.

    Args:
        input_shape: ``(C, H, W)`` of one input.
        num_classes: Number of output logits.
        channels: Output channels of the convolutions.

    Returns:
        The model as an ``nn.Sequential``.

    Example:
        >>> sum(p.numel() for p in small_cnn((1, 8, 8), 10).parameters())
        6090
    """
    c, height, width = _check_shape(input_shape)
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * height * width, num_classes)]
    return nn.Sequential(*layers)


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (64,),
    activation: str = "relu",
) -> nn.Sequential:
    """A multilayer perceptron on the flattened input.

    Args:
        input_shape: Shape of one input (any number of dimensions).
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers.
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.

    Returns:
        The model as an ``nn.Sequential``.

    Raises:
        ValueError: Unknown activation.

    Example:
        >>> mlp((1, 8, 8), 10, hidden=(32,))
        Sequential(
          (0): Flatten(start_dim=1, end_dim=-1)
          (1): Linear(in_features=64, out_features=32, bias=True)
          (2): ReLU()
          (3): Linear(in_features=32, out_features=10, bias=True)
        )
    """
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    if activation not in acts:
        raise ValueError(f"Unknown activation {activation!r}; allowed: {', '.join(acts)}.")
    width = math.prod(_check_shape(input_shape, dims=None))
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(width, h), acts[activation]()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _canonical(name: str) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    for allowed in MODELS:
        if allowed.replace("_", "") == key:
            return allowed
    raise ValueError(f"Unknown model {name!r}; allowed: {', '.join(MODELS)}.")


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, **kwargs: object
) -> nn.Module:
    """Build a model of :data:`MODELS` by name for inputs of ``input_shape``.

    Args:
        name: One of :data:`MODELS` (``"VGG16"``, ``"PreResNet-110"`` are accepted spellings).
        input_shape: ``(C, H, W)`` of one input (see :func:`diagnostics.dataset_info`).
        num_classes: Number of output logits.
        **kwargs: Passed to the model (``batch_norm``/``dropout`` for VGG16, ``channels`` for
            ``small_cnn``, ``hidden``/``activation`` for ``mlp``).

    Returns:
        The model (freshly initialised from the global torch RNG).

    Raises:
        ValueError: Unknown name, bad shape or class count.
        TypeError: A keyword argument the model does not take.

    Example:
        >>> model = build_model("VGG16", input_shape=(3, 32, 32), num_classes=100)
        >>> sum(p.numel() for p in model.parameters())
        15291300
    """
    canonical = _canonical(name)
    shape = _check_shape(input_shape, dims=None if canonical == "mlp" else 3)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}.")
    if canonical == "mlp":
        return mlp(shape, num_classes, **kwargs)  # type: ignore[arg-type]
    if canonical == "small_cnn":
        return small_cnn(shape, num_classes, **kwargs)  # type: ignore[arg-type]
    if canonical.startswith("vgg16"):
        kwargs.setdefault("batch_norm", canonical == "vgg16_bn")
        return VGG16(num_classes, shape[0], (shape[1], shape[2]), **kwargs)  # type: ignore[arg-type]
    depth = int(canonical.removeprefix("preresnet"))
    return PreResNet(depth, num_classes, shape[0], **kwargs)  # type: ignore[arg-type]

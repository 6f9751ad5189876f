"""Pre-activation ResNets for CIFAR (He et al., 2016), exported by the models module."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PreResNet"]


class _PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the (projected) input."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + residual


class PreResNet(nn.Module):
    r"""Pre-activation ResNet for CIFAR (He et al., 2016, "Identity Mappings in Deep ResNets").

    A 3x3 convolution with 16 channels, three stages of :math:`n = (\text{depth} - 2) / 6` basic
    pre-activation blocks with 16, 32 and 64 channels (stride 2 between stages, 1x1 projection
    shortcuts), a final BN-ReLU, global average pooling and a linear layer. PreResNet-20/56/110 have
    :math:`n = 3, 9, 18`. (The MLRG reference code switches to bottleneck blocks from depth 44; this
    implementation keeps the basic blocks of He et al.'s CIFAR experiments.)

    Args:
        depth: Number of layers, with ``(depth - 2) % 6 == 0``.
        num_classes: Number of output logits.
        in_channels: Input channels.

    Raises:
        ValueError: ``depth`` is not of the form ``6n + 2``.

    Example:
        >>> PreResNet(20, num_classes=10)(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"PreResNet depth must be 6n + 2 with n >= 1; got {depth!r}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_PreActBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, C, H, W]`` to logits ``[N, num_classes]``."""
        out = self.layers(self.conv1(x))
        return self.fc(self.flatten(self.pool(self.relu(self.bn(out)))))

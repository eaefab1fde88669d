"""The CIFAR-10 baselines of the paper: He et al.'s CIFAR ResNets and VGG-16 with BN.

ResNet-(6n+2): a 3x3 stem of 16 channels, three stages of ``n`` basic blocks with 16/32/64
channels (stride 1/2/2), parameter-free shortcuts (option A: subsample and zero-pad the
channels), global average pooling and a linear classifier. ResNet-56 has 0.85M params and
125M MACs. VGG-16: thirteen 3x3 conv-BN-ReLU layers in five stages with max pooling and one
two-layer classifier on the 512-d feature (15M params, 313M MACs at 32x32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import ghostify
from .registry import register

# depth -> blocks per stage (depth = 6n + 2)
RESNET_CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
RESNET_CIFAR_WIDTHS = (16, 32, 64)

# VGG-16 conv widths; "M" is a 2x2 max pool.
# fmt: off
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")
# fmt: on


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a parameter-free shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = stride != 1 or in_planes != planes
        self.pad = (planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.downsample:  # option A: subsample, then zero-pad the new channels
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return self.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """He et al.'s ResNet for 32x32 images; ``depth`` in 20, 32, 44, 56, 110 (6n+2)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, RESNET_CIFAR_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET_CIFAR_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = RESNET_CIFAR_WIDTHS[0]
        stages = []
        for i, planes in enumerate(RESNET_CIFAR_WIDTHS):
            layers = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGGCifar(nn.Module):
    """VGG-16 with BN for 32x32 images, as used by the CIFAR pruning/compression literature
    the paper compares with (Li et al., "Pruning Filters for Efficient ConvNets", after
    Zagoruyko's cifar.torch): 13 conv-BN-ReLU layers, 5 max pools, then
    Linear(512, 512)-BN-ReLU-Dropout-Linear(512, classes). 15.0M params, 313M MACs."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, channels),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(channels, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return ResNetCifar(depth, **kwargs)

    return build


def _ghost(base: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The paper's Ghost version: every conv but the stem becomes a GhostConv2d."""

    def build(ratio: int = 2, dw_size: int = 3, inner_bn: bool = False, **kwargs: Any) -> nn.Module:
        return ghostify(base(**kwargs), ratio, dw_size, inplace=True, inner_bn=inner_bn)

    return build


_CIFAR = dict(input_size=(3, 32, 32), num_classes=10)
for _depth in RESNET_CIFAR_DEPTHS:
    register(
        f"resnet{_depth}_cifar",
        classifier="fc",
        **_CIFAR,
        description=f"He et al. CIFAR ResNet-{_depth} (option A shortcuts)",
    )(_resnet(_depth))
    register(
        f"ghost_resnet{_depth}_cifar",
        classifier="fc",
        **_CIFAR,
        description=f"Ghost-ResNet-{_depth}: ResNet-{_depth} with GhostConv2d (s, d)",
    )(_ghost(_resnet(_depth)))
register(
    "vgg16_cifar",
    classifier="classifier.4",
    **_CIFAR,
    description="VGG-16 with BN for CIFAR (15M params, 313M MACs)",
)(VGGCifar)
register(
    "ghost_vgg16_cifar",
    classifier="classifier.4",
    **_CIFAR,
    description="Ghost-VGG-16: VGG-16 with GhostConv2d (s, d)",
)(_ghost(VGGCifar))

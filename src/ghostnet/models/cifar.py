"""The CIFAR-10 baselines of the paper: He et al.'s CIFAR ResNets and VGG-16 with BN.

ResNet-(6n+2): a 3x3 stem of 16 channels, three stages of ``n`` basic blocks with 16/32/64
channels (stride 1/2/2), parameter-free shortcuts (option A: subsample and zero-pad the
channels), global average pooling and a linear classifier. ResNet-56 has 0.85M params and
125M MACs. VGG-16: thirteen 3x3 conv-BN-ReLU layers in five stages with max pooling and one
two-layer classifier on the 512-d feature (15M params, 313M MACs at 32x32). MobileNetV2
(Sandler et al.) stride-adapted for 32x32 images (see :class:`MobileNetV2Cifar`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import ghostify
from ..layers import make_divisible
from .registry import register

# depth -> blocks per stage (depth = 6n + 2)
RESNET_CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
RESNET_CIFAR_WIDTHS = (16, 32, 64)

# VGG-16 conv widths; "M" is a 2x2 max pool.
# fmt: off
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")
# fmt: on

# MobileNetV2 inverted-residual stages: (expansion t, output channels c, blocks n, stride s).
# Sandler et al.'s ImageNet table with the usual CIFAR strides: the first two of its five
# stride-2 layers (the stem conv and the 24-channel stage) run at stride 1, so 32x32 inputs
# end at 4x4 (ImageNet: 224 -> 7).
MOBILENETV2_CIFAR_TABLE = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # ImageNet: stride 2
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MOBILENETV2_STEM, MOBILENETV2_HEAD = 32, 1280


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


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (t > 1) -> BN -> ReLU6 -> 3x3 depthwise (stride) ->
    BN -> ReLU6 -> 1x1 linear projection -> BN, plus the input when the shapes match.
    Every activation is its own module, so a deploy pass can follow the channels through."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand_conv: nn.Conv2d | None = None
        if expansion != 1:
            self.expand_conv = nn.Conv2d(in_ch, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.expand_act = nn.ReLU6(inplace=True)
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = nn.ReLU6(inplace=True)
        self.project_conv = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand_conv is not None:
            out = self.expand_act(self.expand_bn(self.expand_conv(x)))
        out = self.dw_act(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        return x + out if self.residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32x32 images: :data:`MOBILENETV2_CIFAR_TABLE` (stem conv and the
    24-channel stage at stride 1, the strides of kuangliu/pytorch-cifar's port), a 1x1 head
    of 1280 maps, global pooling, dropout 0.2 and a linear classifier. ``width`` scales every
    layer (multiples of 8; the head never below 1280). Width 1.0: 2.24M params, 88.0M MACs
    at 32x32 (with the 32-channel stage at stride 1 too it would be 296M)."""

    def __init__(
        self, num_classes: int = 10, width: float = 1.0, in_chans: int = 3, dropout: float = 0.2
    ) -> None:
        super().__init__()
        channels = make_divisible(MOBILENETV2_STEM * width, 8)
        self.stem_conv = nn.Conv2d(in_chans, channels, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(channels)
        self.stem_act = nn.ReLU6(inplace=True)
        blocks = []
        for expansion, out, repeats, stride in MOBILENETV2_CIFAR_TABLE:
            out = make_divisible(out * width, 8)
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out, stride if i == 0 else 1, expansion))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        head = make_divisible(MOBILENETV2_HEAD * max(1.0, width), 8)
        self.head_conv = nn.Conv2d(channels, head, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(head)
        self.head_act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem_conv(x)))
        x = self.head_act(self.head_bn(self.head_conv(self.blocks(x))))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


# the seed's use of Ghost modules in MobileNets: only the 1x1 expansion convs become Ghost
MOBILENETV2_GHOST_INCLUDE = ("blocks.*.expand_conv",)


def _ghost_mobilenetv2(
    ratio: int = 2, dw_size: int = 3, inner_bn: bool = False, **kwargs: Any
) -> nn.Module:
    return ghostify(
        MobileNetV2Cifar(**kwargs),
        ratio,
        dw_size,
        include=list(MOBILENETV2_GHOST_INCLUDE),
        inplace=True,
        inner_bn=inner_bn,
    )


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
register(
    "mobilenetv2_cifar",
    classifier="classifier",
    **_CIFAR,
    description="MobileNetV2 for CIFAR (stem and 24-channel stage at stride 1)",
)(MobileNetV2Cifar)
register(
    "ghost_mobilenetv2_cifar",
    classifier="classifier",
    **_CIFAR,
    description="MobileNetV2-CIFAR with its 1x1 expansion convs as GhostConv2d (s, d)",
)(_ghost_mobilenetv2)

"""G-Ghost RegNetX (Han et al., "GhostNets on Heterogeneous Devices via Cheap Operations",
IJCV 2022): the official variant table as data and a small builder.

Module names follow the official ``g_ghost_pytorch/g_ghost_regnet.py``, so the released
``g_ghost_regnet_*.pth`` files load with ``strict=True`` (``pretrained=PATH``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers.g_ghost import GGhostStage, RegNetBottleneck, projection
from .registry import register


@dataclass(frozen=True)
class GGhostVariant:
    """One RegNetX variant: blocks per stage, stage widths, group width."""

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    group_width: int


# The official file's table (RegNetX-200MF ... 32GF).
# fmt: off
G_GHOST_REGNETX: dict[str, GGhostVariant] = {
    "002": GGhostVariant((1, 1, 4, 7),   (24, 56, 152, 368),     8),
    "004": GGhostVariant((1, 2, 7, 12),  (32, 64, 160, 384),     16),
    "006": GGhostVariant((1, 3, 5, 7),   (48, 96, 240, 528),     24),
    "008": GGhostVariant((1, 3, 7, 5),   (64, 128, 288, 672),    16),
    "016": GGhostVariant((2, 4, 10, 2),  (72, 168, 408, 912),    24),
    "032": GGhostVariant((2, 6, 15, 2),  (96, 192, 432, 1008),   48),
    "040": GGhostVariant((2, 5, 14, 2),  (80, 240, 560, 1360),   40),
    "064": GGhostVariant((2, 4, 10, 1),  (168, 392, 784, 1624),  56),
    "080": GGhostVariant((2, 5, 15, 1),  (80, 240, 720, 1920),   120),
    "120": GGhostVariant((2, 5, 11, 1),  (224, 448, 896, 2240),  112),
    "160": GGhostVariant((2, 6, 13, 1),  (256, 512, 896, 2048),  128),
    "320": GGhostVariant((2, 7, 13, 1),  (336, 672, 1344, 2520), 168),
}
# fmt: on
STEM_CHANNELS = 32


def _plain_stage(
    in_chs: int, out_chs: int, depth: int, group_width: int, stride: int = 2
) -> nn.Sequential:
    first = RegNetBottleneck(
        in_chs, out_chs, stride, group_width, projection(in_chs, out_chs, stride)
    )
    blocks = [first]
    blocks += [RegNetBottleneck(out_chs, out_chs, 1, group_width) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class GGhostRegNet(nn.Module):
    """Stem (3x3 s2) + four stride-2 stages + GAP, dropout, linear.

    Stage 1 is always plain; stage 3 always a G-Ghost stage; stages 2 and 4 are G-Ghost
    stages when deeper than 2 blocks (the official rule). ``ghost=False`` builds the plain
    RegNetX of the same row (every stage plain: torchvision's ``regnet_x_*`` where it has
    one), the fair baseline. ``cifar=True`` is the usual stride adaptation for 32x32
    inputs: stem and first stage at stride 1, so the last stage sees 4x4 maps (output
    stride 8, as the CIFAR ResNets)."""

    def __init__(
        self,
        variant: GGhostVariant,
        num_classes: int = 1000,
        drop_rate: float = 0.2,
        in_chans: int = 3,
        ghost: bool = True,
        cifar: bool = False,
    ) -> None:
        super().__init__()
        self.variant = variant
        first_stride = 1 if cifar else 2
        self.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, 3, first_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        in_chs = STEM_CHANNELS
        for i, (depth, width) in enumerate(zip(variant.depths, variant.widths)):
            stride = first_stride if i == 0 else 2
            if ghost and (i == 2 or (i in (1, 3) and depth > 2)):
                stage = GGhostStage(in_chs, width, depth, variant.group_width, stride=stride)
            else:
                stage = _plain_stage(in_chs, width, depth, variant.group_width, stride)
            self.add_module(f"layer{i + 1}", stage)
            in_chs = width
        self.num_features = in_chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes)
        for m in self.modules():  # the official initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(self.dropout(x))


def _make_builder(key: str, ghost: bool, cifar: bool):
    name = f"{'g_ghost_' if ghost else ''}regnetx_{key}{'_cifar' if cifar else ''}"

    def build(**kwargs) -> GGhostRegNet:
        kwargs.setdefault("num_classes", 10 if cifar else 1000)
        return GGhostRegNet(G_GHOST_REGNETX[key], ghost=ghost, cifar=cifar, **kwargs)

    build.__name__ = name
    build.__doc__ = (
        f"{'G-Ghost' if ghost else 'Plain'} RegNetX-{key}{' for CIFAR' if cifar else ''}."
    )
    return name, build


for _key in G_GHOST_REGNETX:
    _name, _build = _make_builder(_key, ghost=True, cifar=False)
    register(
        _name,
        input_size=(3, 224, 224),
        num_classes=1000,
        classifier="fc",
        description=f"G-Ghost RegNetX-{_key} (IJCV 2022), ImageNet",
    )(_build)

# RegNetX-200MF is the one row torchvision has no plain model for; the CIFAR pair is the
# like-for-like comparison of the docs' CIFAR-10 table (same widths, depths, strides).
for _ghost, _cifar, _what in (
    (False, False, "Plain RegNetX-002 (the G-Ghost table's row, no Ghost stages), ImageNet"),
    (True, True, "G-Ghost RegNetX-002, CIFAR strides (stem and stage 1 at stride 1)"),
    (False, True, "Plain RegNetX-002, CIFAR strides (the G-Ghost CIFAR model's baseline)"),
):
    _name, _build = _make_builder("002", ghost=_ghost, cifar=_cifar)
    register(
        _name,
        input_size=(3, 32, 32) if _cifar else (3, 224, 224),
        num_classes=10 if _cifar else 1000,
        classifier="fc",
        description=_what,
    )(_build)

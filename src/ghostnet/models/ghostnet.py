"""GhostNet (Han et al., CVPR 2020): the paper's Table 1 as data, and a small builder.

The module names and the grouping of blocks into ``blocks.<stage>.<index>`` follow the
official code and timm, so their checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import ConvBnAct, GhostBottleneck, make_divisible
from .registry import register


@dataclass(frozen=True)
class Bneck:
    """One Ghost bottleneck row of Table 1 (channel counts at width 1.0)."""

    stage: int  # blocks.<stage>: rows with the same stage form one nn.Sequential
    kernel: int  # depthwise kernel of the stride-2 conv and the shortcut
    exp: int  # #exp: expansion (hidden) width
    out: int  # #out: output width
    se: bool  # squeeze-and-excite (ratio 0.25)
    stride: int


# Table 1 of the paper, top to bottom (input resolution for a 224x224 image on the right).
# fmt: off
GHOSTNET_TABLE: tuple[Bneck, ...] = (
    #     stage  k  #exp #out  SE     stride      input
    Bneck(0,     3,  16,  16, False,  1),       # 112^2 x 16
    Bneck(1,     3,  48,  24, False,  2),       # 112^2 x 16
    Bneck(2,     3,  72,  24, False,  1),       #  56^2 x 24
    Bneck(3,     5,  72,  40, True,   2),       #  56^2 x 24
    Bneck(4,     5, 120,  40, True,   1),       #  28^2 x 40
    Bneck(5,     3, 240,  80, False,  2),       #  28^2 x 40
    Bneck(6,     3, 200,  80, False,  1),       #  14^2 x 80
    Bneck(6,     3, 184,  80, False,  1),       #  14^2 x 80
    Bneck(6,     3, 184,  80, False,  1),       #  14^2 x 80
    Bneck(6,     3, 480, 112, True,   1),       #  14^2 x 80
    Bneck(6,     3, 672, 112, True,   1),       #  14^2 x 112
    Bneck(7,     5, 672, 160, True,   2),       #  14^2 x 112
    Bneck(8,     5, 960, 160, False,  1),       #   7^2 x 160
    Bneck(8,     5, 960, 160, True,   1),       #   7^2 x 160
    Bneck(8,     5, 960, 160, False,  1),       #   7^2 x 160
    Bneck(8,     5, 960, 160, True,   1),       #   7^2 x 160
)
# fmt: on
STEM_CHANNELS = 16  # conv2d 3x3, stride 2
LAST_CHANNELS = 960  # conv2d 1x1 after the bottlenecks (blocks.9)
HEAD_CHANNELS = 1280  # conv2d 1x1 with bias, no BN, after global average pooling
SE_RATIO = 0.25

# builds block ``layer`` (its index in the table, counted from 0) of a GhostNet:
# (layer, in_chs, mid_chs, out_chs, kernel, stride, se_ratio, ratio, dw_size) -> module.
# V2 and V3 (ghostnet_v2.py, ghostnet_v3.py) reuse the table and builder with their own block.
BlockFn = Callable[[int, int, int, int, int, int, float, int, int], nn.Module]


def v1_block(
    layer: int,
    in_chs: int,
    mid_chs: int,
    out_chs: int,
    kernel: int,
    stride: int,
    se_ratio: float,
    ratio: int,
    dw_size: int,
) -> nn.Module:
    """GhostNet (V1)'s block: the same bottleneck at every position of the table."""
    return GhostBottleneck(
        in_chs, mid_chs, out_chs, kernel, stride, se_ratio=se_ratio, ratio=ratio, dw_size=dw_size
    )


class GhostNet(nn.Module):
    """GhostNet for image classification.

    ``width`` scales every channel count (rounded with ``make_divisible(., 4)``) except the
    1280-wide head; ``ratio``/``dw_size`` are the Ghost modules' s and d (paper: 2 and 3).
    ``block`` builds each table row's bottleneck (V1's by default; see ``BlockFn``).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        in_chans: int = 3,
        dropout: float = 0.2,
        ratio: int = 2,
        dw_size: int = 3,
        table: tuple[Bneck, ...] = GHOSTNET_TABLE,
        block: BlockFn = v1_block,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        stem = make_divisible(STEM_CHANNELS * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU(inplace=True)

        stages: list[list[nn.Module]] = []
        prev = stem
        for layer, row in enumerate(table):
            if row.stage == len(stages):
                stages.append([])
            out = make_divisible(row.out * width, 4)
            mid = make_divisible(row.exp * width, 4)
            se_ratio = SE_RATIO if row.se else 0.0
            stages[row.stage].append(
                block(layer, prev, mid, out, row.kernel, row.stride, se_ratio, ratio, dw_size)
            )
            prev = out
        last = make_divisible(LAST_CHANNELS * width, 4)
        stages.append([ConvBnAct(prev, last, 1)])
        self.blocks = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.num_features = last

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(last, HEAD_CHANNELS, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = (
            nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()
        )
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal classifier (the usual ImageNet start)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def register_widths(
    family: str,
    build: Callable[..., GhostNet],
    widths: dict[str, float],
    title: str,
    note: str,
) -> None:
    """Register one ImageNet GhostNet family: a name per published width (``build`` with
    that width fixed, e.g. ``ghostnet_100``) and ``family`` itself, which takes ``width=W``."""

    def fixed(width: float) -> Callable[..., GhostNet]:
        def build_at_width(**kwargs: Any) -> GhostNet:
            return build(width=width, **kwargs)

        build_at_width.__doc__ = f"{title}-{width}x ({note})."
        return build_at_width

    common = dict(input_size=(3, 224, 224), num_classes=1000, classifier="classifier")
    for name, width in widths.items():
        register(name, **common, description=f"{title} {width}x ({note})")(fixed(width))
    register(family, **common, description=f"{title} with any width=W (default 1.0)")(build)


register_widths(
    "ghostnet",
    GhostNet,
    {"ghostnet_050": 0.5, "ghostnet_100": 1.0, "ghostnet_130": 1.3},
    "GhostNet",
    "paper Table 1; timm/official key layout",
)

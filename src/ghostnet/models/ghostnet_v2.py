"""GhostNetV2 (Tang et al., NeurIPS 2022): GhostNet's table with DFC attention on ghost1.

The table, widths, stem and head are V1's (``GHOSTNET_TABLE``); from the third bottleneck
on (table index > 1, as in the official code and timm) the expanding Ghost module is a
:class:`~ghostnet.layers.GhostModuleV2`. Key names are timm's ``ghostnetv2_*`` (the official
checkpoints' too, once ``module.`` prefixes are stripped).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layers import GhostModuleV2
from .ghostnet import GhostNet, register_widths, v1_block

FIRST_DFC_LAYER = 2  # blocks 0 and 1 (112x112 and the first stride 2) keep plain ghost1


def v2_block(
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
    """V1's bottleneck whose ghost1 carries the DFC gate from ``FIRST_DFC_LAYER`` on."""
    block = v1_block(layer, in_chs, mid_chs, out_chs, kernel, stride, se_ratio, ratio, dw_size)
    if layer >= FIRST_DFC_LAYER:
        block.ghost1 = GhostModuleV2(in_chs, mid_chs, ratio=ratio, dw_size=dw_size, relu=True)
    return block


def ghostnetv2(width: float = 1.0, **kwargs: Any) -> GhostNet:
    """GhostNetV2 with any width multiplier (kwargs as :class:`GhostNet`)."""
    return GhostNet(width=width, block=v2_block, **kwargs)


register_widths(
    "ghostnetv2",
    ghostnetv2,
    {"ghostnetv2_100": 1.0, "ghostnetv2_130": 1.3, "ghostnetv2_160": 1.6},
    "GhostNetV2",
    "DFC attention; timm/official key layout",
)

"""GhostNetV3 (Liu et al., 2024): GhostNet's table with re-parameterizable blocks.

Every bottleneck is a :class:`~ghostnet.layers.GhostBottleneckV3`; from table index 2 on
its ghost1 also has V2's DFC gate (timm's "shortcut" mode). ``deploy=False`` (default)
builds the training form, whose keys load timm's ``ghostnetv3_*`` weights;
``deploy=True`` builds the folded form directly (the keys timm has after
``reparameterize_model``), and ``ghostnet.reparameterize`` turns one into the other.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ..layers import GhostBottleneckV3
from .ghostnet import GhostNet, register_widths
from .ghostnet_v2 import FIRST_DFC_LAYER


def v3_block(
    layer: int,
    in_chs: int,
    mid_chs: int,
    out_chs: int,
    kernel: int,
    stride: int,
    se_ratio: float,
    ratio: int,
    dw_size: int,
    deploy: bool = False,
) -> nn.Module:
    """The V3 bottleneck, with the DFC gate on ghost1 from ``FIRST_DFC_LAYER`` on."""
    return GhostBottleneckV3(
        in_chs,
        mid_chs,
        out_chs,
        kernel,
        stride,
        se_ratio=se_ratio,
        ratio=ratio,
        dw_size=dw_size,
        dfc=layer >= FIRST_DFC_LAYER,
        deploy=deploy,
    )


def ghostnetv3(width: float = 1.0, deploy: bool = False, **kwargs: Any) -> GhostNet:
    """GhostNetV3 with any width; ``deploy=True`` builds the re-parameterized form."""
    return GhostNet(width=width, block=partial(v3_block, deploy=deploy), **kwargs)


register_widths(
    "ghostnetv3",
    ghostnetv3,
    {"ghostnetv3_050": 0.5, "ghostnetv3_100": 1.0, "ghostnetv3_130": 1.3, "ghostnetv3_160": 1.6},
    "GhostNetV3",
    "re-parameterizable; deploy=True for the folded form",
)

"""GhostNetV3 (Liu et al., 2024): GhostNet's table with re-parameterizable blocks.

Every bottleneck is a :class:`~ghostnet.layers.GhostBottleneckV3`; from table index 2 on
its ghost1 also has V2's DFC gate (timm's "shortcut" mode). ``deploy=False`` (default)
builds the training form, whose keys load timm's ``ghostnetv3_*`` weights;
``deploy=True`` builds the folded form directly (the keys timm has after
``reparameterize_model``), and ``ghostnet.reparameterize`` turns one into the other.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from ..layers import GhostBottleneckV3
from .ghostnet import GhostNet
from .ghostnet_v2 import FIRST_DFC_LAYER
from .registry import register


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


def _ghostnetv3(width: float) -> Callable[..., GhostNet]:
    def build(**kwargs: Any) -> GhostNet:
        return ghostnetv3(width, **kwargs)

    build.__doc__ = f"GhostNetV3-{width}x (GhostNet table, re-parameterizable blocks)."
    return build


for _name, _width in (
    ("ghostnetv3_050", 0.5),
    ("ghostnetv3_100", 1.0),
    ("ghostnetv3_130", 1.3),
    ("ghostnetv3_160", 1.6),
):
    register(
        _name,
        input_size=(3, 224, 224),
        num_classes=1000,
        classifier="classifier",
        description=f"GhostNetV3 {_width}x (re-parameterizable; deploy=True for the folded form)",
    )(_ghostnetv3(_width))

register(
    "ghostnetv3",
    input_size=(3, 224, 224),
    num_classes=1000,
    classifier="classifier",
    description="GhostNetV3 with any width=W (default 1.0), deploy=True for the folded form",
)(ghostnetv3)

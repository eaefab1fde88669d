"""Ghost-ResNet-50: torchvision's ResNet-50 with every conv but the stem made a Ghost layer."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from ..convert import ghostify
from .registry import register


@register(
    "ghost_resnet50",
    input_size=(3, 224, 224),
    num_classes=1000,
    classifier="fc",
    description="Ghost-ResNet-50: torchvision ResNet-50 ghostified (s=2, d=3 by default)",
)
def ghost_resnet50(
    ratio: int = 2, dw_size: int = 3, inner_bn: bool = False, **kwargs: Any
) -> nn.Module:
    """ResNet-50 (torchvision layout) with all convs except ``conv1`` as GhostConv2d."""
    base = torchvision.models.resnet50(weights=None, **kwargs)
    return ghostify(base, ratio, dw_size, inplace=True, inner_bn=inner_bn)

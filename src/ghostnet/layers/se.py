"""Squeeze-and-excite with a hard-sigmoid gate, as used by GhostNet and MobileNetV3."""

from __future__ import annotations

import torch
from torch import nn

from .helpers import make_divisible


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> 1x1 reduce -> ReLU -> 1x1 expand -> gate.

    The reduced width is ``make_divisible(channels * se_ratio, divisor)``. Submodule names
    (``conv_reduce``, ``conv_expand``) follow the official/timm checkpoints.
    """

    def __init__(self, channels: int, se_ratio: float = 0.25, divisor: int = 4) -> None:
        super().__init__()
        reduced = make_divisible(channels * se_ratio, divisor)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.conv_expand(self.act1(self.conv_reduce(scale)))
        return x * self.gate(scale)

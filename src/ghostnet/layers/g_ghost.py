"""G-GhostNet stage (Han et al., IJCV 2022) and the RegNetX bottleneck it is built from.

Module names (``conv1``/``bn1``..., ``base``, ``layers``, ``merge``, ``cheap``, ``end``)
are those of the official ``g_ghost_pytorch`` code, so its state_dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class RegNetBottleneck(nn.Module):
    """RegNetX block: 1x1 -> grouped 3x3 (stride, group width) -> 1x1, residual, ReLU."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        group_width: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        width = out_chs  # bottleneck ratio 1 in RegNetX
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # groups as the official code: width // min(width, group_width)
        groups = width // min(width, group_width)
        self.conv2 = nn.Conv2d(
            width,
            width,
            3,
            stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    """1x1 strided conv + BN shortcut (``downsample.0``/``downsample.1``)."""
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


def g_ghost_split(channels: int, group_width: int, cheap_ratio: float = 0.5) -> tuple[int, int]:
    """(raw, cheap) channel split of a stage, rounded as the official code does.

    The intrinsic blocks use group width ``int(0.75 * group_width)`` and ``raw`` is the
    largest multiple of it not above ``channels * (1 - cheap_ratio)``."""
    gw = int(group_width * 0.75)
    raw = int(channels * (1 - cheap_ratio) / gw) * gw
    return raw, channels - raw


class GGhostStage(nn.Module):
    """A stage of ``depth`` (> 2) RegNetX blocks where the inner ``depth - 2`` blocks see only
    the first ``raw`` channels; the rest come from a 1x1 conv + BN of the first block's
    output plus a "mix" of all intermediate features (GAP -> 1x1 -> BN -> ReLU -> 1x1 -> BN).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        group_width: int,
        stride: int = 2,
        cheap_ratio: float = 0.5,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"a G-Ghost stage needs depth > 2, got {depth}")
        downsample = (
            projection(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else None
        )
        self.base = RegNetBottleneck(in_chs, out_chs, stride, group_width, downsample)
        self.end = RegNetBottleneck(out_chs, out_chs, 1, group_width, dilation=dilation)
        raw, cheap = g_ghost_split(out_chs, group_width, cheap_ratio)
        self.raw_planes, self.cheap_planes = raw, cheap
        inner_gw = int(group_width * 0.75)
        self.merge = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_chs + raw * (depth - 2), cheap, 1, bias=False),
            nn.BatchNorm2d(cheap),
            nn.ReLU(inplace=True),
            nn.Conv2d(cheap, cheap, 1, bias=False),
            nn.BatchNorm2d(cheap),
        )
        self.cheap = nn.Sequential(nn.Conv2d(cheap, cheap, 1, bias=False), nn.BatchNorm2d(cheap))
        self.cheap_relu = nn.ReLU(inplace=True)
        # the official first inner block has a slicing "downsample" on a raw-channel input,
        # i.e. an identity: a plain residual is the same computation and has no parameters
        self.layers = nn.Sequential(
            *(RegNetBottleneck(raw, raw, 1, inner_gw, dilation=dilation) for _ in range(depth - 2))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.base(x)
        feats = [x0]
        e = x0[:, : self.raw_planes]
        for block in self.layers:
            e = block(e)
            feats.append(e)
        m = self.merge(torch.cat(feats, 1))
        c = self.cheap_relu(self.cheap(x0[:, self.raw_planes :]) + m)
        return self.end(torch.cat((e, c), 1))

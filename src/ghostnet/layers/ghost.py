"""Ghost building blocks: the Ghost module, its drop-in Conv2d form, and the Ghost bottleneck.

A Ghost module makes ``m = ceil(n / s)`` *intrinsic* feature maps with an ordinary
convolution and the remaining ``n - m`` *ghost* maps with a cheap depthwise ``d x d``
convolution of the intrinsic maps (the paper's "linear transformation"), then concatenates
both and keeps the first ``n`` channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.common_types import _size_2_t

from ..errors import GhostnetError
from .se import SqueezeExcite


def check_ghost_args(out_chs: int, ratio: int, dw_size: int) -> None:
    """Raise a ``GhostnetError`` (a ``ValueError``) naming any invalid Ghost argument."""
    if isinstance(out_chs, bool) or not isinstance(out_chs, int) or out_chs < 1:
        raise GhostnetError(f"out channels must be an int >= 1, got {out_chs!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        raise GhostnetError(
            f"ratio s must be an int >= 1 (1 = plain conv, 2 = half the maps are ghosts), "
            f"got {ratio!r}"
        )
    if isinstance(dw_size, bool) or not isinstance(dw_size, int) or dw_size < 1 or dw_size % 2 == 0:
        raise GhostnetError(
            f"dw_size d must be an odd int >= 1 (1, 3, 5, 7 ...) so the cheap op keeps the "
            f"spatial size, got {dw_size!r}"
        )


def intrinsic_channels(out_chs: int, ratio: int) -> int:
    """Number of intrinsic maps a Ghost layer computes for ``out_chs`` outputs."""
    return math.ceil(out_chs / ratio)


class GhostModule(nn.Module):
    """The Ghost module with the official semantics and state_dict layout.

    ``primary_conv`` = conv(k x k, stride) + BN (+ReLU) -> ``ceil(out/ratio)`` intrinsic maps;
    ``cheap_operation`` = depthwise conv(dw_size) + BN (+ReLU) -> ``ratio - 1`` ghosts per map.
    ``ratio=1`` builds no cheap branch (a plain conv + BN).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        check_ghost_args(out_chs, ratio, dw_size)
        if isinstance(in_chs, bool) or not isinstance(in_chs, int) or in_chs < 1:
            raise GhostnetError(f"in channels must be an int >= 1, got {in_chs!r}")
        self.out_chs = out_chs
        self.ratio = ratio
        self.dw_size = dw_size
        init_chs = intrinsic_channels(out_chs, ratio)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_chs),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )
        self.cheap_operation: nn.Sequential | None = None
        if ratio > 1:
            self.cheap_operation = nn.Sequential(
                # the cheap op: ratio-1 ghosts per intrinsic map (a depthwise conv)
                nn.Conv2d(
                    init_chs,
                    init_chs * (ratio - 1),
                    dw_size,
                    1,
                    dw_size // 2,
                    groups=init_chs,
                    bias=False,
                ),
                nn.BatchNorm2d(init_chs * (ratio - 1)),
                nn.ReLU(inplace=True) if relu else nn.Identity(),
            )
        self._sliced = init_chs * ratio != out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            return intrinsic
        out = torch.cat([intrinsic, self.cheap_operation(intrinsic)], dim=1)
        return out[:, : self.out_chs] if self._sliced else out


class GhostConv2d(nn.Module):
    """A drop-in replacement for ``nn.Conv2d`` built as a Ghost layer.

    ``primary_conv`` is a Conv2d with the original kernel, stride, padding, dilation and
    padding mode producing ``m = ceil(n/ratio)`` intrinsic maps; ``cheap_operation`` is a
    depthwise ``dw_size x dw_size`` conv (stride 1, same padding) producing exactly the
    ``n - m`` ghost maps, ghost ``j`` made from intrinsic map ``j // (ratio - 1)`` (the
    official order). Nothing is computed and then sliced away, so every registered
    parameter is used. The output has exactly the shape ``nn.Conv2d`` would give.

    By default the layer is *linear* like the conv it replaces: no BN or ReLU sits between
    the primary and the cheap op, because the host network's own BN/activation follow the
    layer and apply to all ``n`` maps (for the linear projection convs of MobileNetV2 a ReLU
    would change the architecture). ``inner_bn=True`` inserts a BatchNorm on the intrinsic
    maps before the cheap op (still linear at inference, so still foldable); the CIFAR
    experiment in the README compares both.

    ``inherited=True`` is the layout of a layer made from a trained conv
    (``ghostify(init="inherit")``): the intrinsic maps are any ``m`` of the conv's maps,
    each ghost is made from any intrinsic map (``ghost_sources``), and ``output_order``
    permutes ``cat(intrinsic, ghosts)`` back into the conv's channel order, so the layers
    after it need no change. Both index buffers are persistent (a checkpoint rebuilds the
    layer from plain data and ``load_state_dict`` fills them), and the cheap op always has
    a bias: it holds the intercept of each ghost's least-squares fit, which a bias-free
    conv followed by BN would otherwise lose at inference.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t | str = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,  # as nn.Conv2d: a true drop-in (ghostify copies the conv's choice)
        padding_mode: str = "zeros",
        ratio: int = 2,
        dw_size: int = 3,
        inner_bn: bool = False,
        inherited: bool = False,
    ) -> None:
        super().__init__()
        check_ghost_args(out_channels, ratio, dw_size)
        if inherited and inner_bn:
            raise GhostnetError(
                "inherited Ghost layers reproduce a trained conv, whose maps the cheap op sees "
                "un-normalised: use inner_bn=False with inherited=True"
            )
        if groups != 1:
            raise GhostnetError(
                f"GhostConv2d replaces ordinary convs (groups=1); got groups={groups}. "
                "Grouped and depthwise convs are already cheap: leave them as they are."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ratio = ratio
        self.dw_size = dw_size
        init_chs = intrinsic_channels(out_channels, ratio)
        ghosts = out_channels - init_chs
        self.primary_conv = nn.Conv2d(
            in_channels,
            init_chs,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            padding_mode=padding_mode,
        )
        self.inner_bn = nn.BatchNorm2d(init_chs) if (inner_bn and ghosts > 0) else None
        self.cheap_operation: nn.Conv2d | None = None
        if ghosts > 0:
            self.cheap_operation = nn.Conv2d(
                ghosts, ghosts, dw_size, 1, dw_size // 2, groups=ghosts, bias=bias or inherited
            )
        # Which intrinsic map feeds each ghost (the official order by default; with ratio 2
        # ghost j comes from intrinsic map j, so a slice replaces the gather).
        sources = torch.arange(ghosts) // max(ratio - 1, 1)
        self.inherited = inherited
        self._first_maps = ratio == 2 and not inherited
        self.register_buffer("ghost_sources", sources, persistent=inherited)
        # output channel c is channel output_order[c] of cat(intrinsic, ghosts); None keeps
        # plain layers free of the gather (and their state_dict keys unchanged)
        order = torch.arange(out_channels) if inherited else None
        self.register_buffer("output_order", order, persistent=inherited)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        ratio: int = 2,
        dw_size: int = 3,
        inner_bn: bool = False,
        inherited: bool = False,
    ) -> GhostConv2d:
        """A GhostConv2d with the hyper-parameters of ``conv`` (fresh weights), on its device."""
        ghost = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            ratio=ratio,
            dw_size=dw_size,
            inner_bn=inner_bn,
            inherited=inherited,
        )
        return ghost.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def set_layout(self, sources: torch.Tensor, order: torch.Tensor) -> None:
        """Set which intrinsic map feeds each ghost and the output permutation (checked)."""
        if not self.inherited:
            raise GhostnetError("set_layout needs a GhostConv2d built with inherited=True")
        m = self.primary_conv.out_channels
        sources, order = torch.as_tensor(sources).long(), torch.as_tensor(order).long()
        if sources.shape != self.ghost_sources.shape or (
            len(sources) and (sources.min() < 0 or sources.max() >= m)
        ):
            raise GhostnetError(
                f"ghost sources must be {len(self.ghost_sources)} indices in [0, {m}), got "
                f"{sources.tolist()}"
            )
        if not torch.equal(torch.sort(order).values, torch.arange(self.out_channels)):
            raise GhostnetError(
                f"output order must be a permutation of 0..{self.out_channels - 1}, got "
                f"{order.tolist()}"
            )
        self.ghost_sources.copy_(sources)
        assert self.output_order is not None
        self.output_order.copy_(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            return intrinsic
        if self.inner_bn is not None:
            intrinsic = self.inner_bn(intrinsic)
        if self._first_maps:
            source = intrinsic[:, : self.cheap_operation.in_channels]
        else:
            source = intrinsic.index_select(1, self.ghost_sources)
        out = torch.cat([intrinsic, self.cheap_operation(source)], dim=1)
        return out if self.output_order is None else out.index_select(1, self.output_order)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, ratio={self.ratio}, dw_size={self.dw_size}"
            + (", inherited=True" if self.inherited else "")
        )


class GhostBottleneck(nn.Module):
    """The Ghost bottleneck of GhostNet (official semantics and state_dict layout).

    ghost1 (expand, ReLU) -> [depthwise conv + BN if stride 2] -> [SE] -> ghost2 (project, no
    ReLU) -> + shortcut. The shortcut is the identity when shapes match, otherwise a
    depthwise conv + BN followed by a 1x1 conv + BN.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        ratio: int = 2,
        dw_size: int = 3,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(in_chs, mid_chs, ratio=ratio, dw_size=dw_size, relu=True)
        self.conv_dw: nn.Conv2d | None = None
        self.bn_dw: nn.BatchNorm2d | None = None
        if stride > 1:
            self.conv_dw = nn.Conv2d(
                mid_chs,
                mid_chs,
                dw_kernel_size,
                stride,
                (dw_kernel_size - 1) // 2,
                groups=mid_chs,
                bias=False,
            )
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, ratio=ratio, dw_size=dw_size, relu=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_chs,
                    in_chs,
                    dw_kernel_size,
                    stride,
                    (dw_kernel_size - 1) // 2,
                    groups=in_chs,
                    bias=False,
                ),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.conv_dw is not None and self.bn_dw is not None:
            out = self.bn_dw(self.conv_dw(out))
        if self.se is not None:
            out = self.se(out)
        out = self.ghost2(out)
        return out + self.shortcut(x)


class ConvBnAct(nn.Module):
    """Conv + BN + ReLU with the official GhostNet key names (``conv``, ``bn1``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))

"""GhostNetV3's re-parameterizable Ghost module and bottleneck (Liu et al., 2024).

In training form each conv of a Ghost block is a sum of parallel linear branches, each
conv + BN: three copies of the conv itself, a 1x1 "scale" branch and, where input and output
channels match at stride 1, a BN-only identity branch. All of them are linear in the input,
so after training the sum folds into one conv with a bias (:meth:`reparameterize`, or
``ghostnet.reparameterize(model)`` for a whole network): the deploy form costs what a plain
Ghost block costs. Module and key names follow timm's ``ghostnetv3_*`` in both forms, so its
state_dicts load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .ghost import check_ghost_args, intrinsic_channels
from .ghost_v2 import dfc_branch, dfc_downsample, dfc_gate
from .se import SqueezeExcite

# torch.fx.wrap patches the names in the module that calls it: register the imported DFC
# helpers here too, or tracing a V3 model would step into their size checks
torch.fx.wrap("dfc_downsample")
torch.fx.wrap("dfc_gate")

NUM_BRANCHES = 3  # parallel copies of each conv in training form (paper and timm)


class ConvBn(nn.Module):
    """One training branch: conv (no bias) + BN, keys ``conv`` / ``bn1`` (timm's layout)."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))


def _fold_bn(
    weight: torch.Tensor | None, bn: nn.BatchNorm2d, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, bias) of ``bn(conv(x))`` in float64; ``weight=None`` is the identity kernel.

    float64 because folding a BN with a small running variance scales the kernel up, and
    the three-plus branches are summed before rounding back to the model's dtype."""
    std = (bn.running_var.double() + bn.eps).sqrt()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    if weight is None:  # identity of a depthwise conv: 1 at the kernel centre
        weight = torch.zeros(shape, dtype=torch.float64, device=std.device)
        weight[:, 0, shape[2] // 2, shape[3] // 2] = 1.0
    kernel = weight.double() * (gamma / std).reshape(-1, 1, 1, 1)
    return kernel, beta - bn.running_mean.double() * gamma / std


def fold_branches(
    convs: nn.ModuleList, scale: ConvBn | None, skip: nn.BatchNorm2d | None
) -> nn.Conv2d:
    """One conv with bias equal (in eval) to ``sum(convs) + scale + skip`` of its input."""
    ref = convs[0].conv
    shape = tuple(ref.weight.shape)
    kernel = torch.zeros(shape, dtype=torch.float64, device=ref.weight.device)
    bias = torch.zeros(shape[0], dtype=torch.float64, device=ref.weight.device)
    for branch in convs:
        k, b = _fold_bn(branch.conv.weight, branch.bn1, shape)
        kernel, bias = kernel + k, bias + b
    if scale is not None:  # a 1x1 kernel sits at the centre of the k x k one
        k, b = _fold_bn(scale.conv.weight, scale.bn1, tuple(scale.conv.weight.shape))
        ph, pw = (shape[2] - k.shape[2]) // 2, (shape[3] - k.shape[3]) // 2
        kernel, bias = kernel + F.pad(k, [pw, pw, ph, ph]), bias + b
    if skip is not None:
        k, b = _fold_bn(None, skip, shape)
        kernel, bias = kernel + k, bias + b
    fused = nn.Conv2d(
        ref.in_channels,
        ref.out_channels,
        ref.kernel_size,
        ref.stride,
        ref.padding,
        ref.dilation,
        ref.groups,
        bias=True,
    ).to(device=ref.weight.device, dtype=ref.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
    return fused


class GhostModuleV3(nn.Module):
    """The re-parameterizable Ghost module; ``dfc=True`` adds V2's DFC gate (timm "shortcut").

    Training form: ``primary_rpr_conv`` (3 conv+BN branches; a 1x1 ``primary_rpr_scale``
    only when the primary kernel is larger than 1, which GhostNet never uses), ReLU, then the
    cheap op as ``cheap_rpr_conv`` (3 depthwise d x d conv+BN) + ``cheap_rpr_scale``
    (depthwise 1x1 conv+BN) + ``cheap_rpr_skip`` (BN identity, when ``ratio == 2``), ReLU.
    Deploy form (``deploy=True`` or after :meth:`reparameterize`): ``primary_conv`` and
    ``cheap_operation``, each ``Sequential(conv with bias, activation)``.
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
        dfc: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        check_ghost_args(out_chs, ratio, dw_size)
        self.out_chs = out_chs
        self.deployed = deploy
        init_chs = intrinsic_channels(out_chs, ratio)
        new_chs = init_chs * (ratio - 1)
        self._sliced = init_chs * ratio != out_chs
        self.primary_activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.cheap_activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        if deploy:
            pad = kernel_size // 2
            self.primary_conv = nn.Sequential(
                nn.Conv2d(in_chs, init_chs, kernel_size, stride, pad), self.primary_activation
            )
            self.cheap_operation = nn.Sequential(
                nn.Conv2d(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs),
                self.cheap_activation,
            )
        else:
            self.primary_rpr_conv = nn.ModuleList(
                ConvBn(in_chs, init_chs, kernel_size, stride) for _ in range(NUM_BRANCHES)
            )
            self.primary_rpr_scale = (
                ConvBn(in_chs, init_chs, 1, stride) if kernel_size > 1 else None
            )
            self.cheap_rpr_conv = nn.ModuleList(
                ConvBn(init_chs, new_chs, dw_size, 1, groups=init_chs) for _ in range(NUM_BRANCHES)
            )
            self.cheap_rpr_scale = ConvBn(init_chs, new_chs, 1, 1, groups=init_chs)
            # identity only where each ghost has exactly one source map
            self.cheap_rpr_skip = nn.BatchNorm2d(init_chs) if ratio == 2 else None
        self.short_conv = dfc_branch(in_chs, out_chs, kernel_size, stride) if dfc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            x1 = self.primary_conv(x)
            x2 = self.cheap_operation(x1)
        else:
            x1 = self.primary_rpr_conv[0](x)
            for branch in self.primary_rpr_conv[1:]:
                x1 = x1 + branch(x)
            if self.primary_rpr_scale is not None:
                x1 = x1 + self.primary_rpr_scale(x)
            x1 = self.primary_activation(x1)
            x2 = self.cheap_rpr_scale(x1)
            if self.cheap_rpr_skip is not None:
                x2 = x2 + self.cheap_rpr_skip(x1)
            for branch in self.cheap_rpr_conv:
                x2 = x2 + branch(x1)
            x2 = self.cheap_activation(x2)
        out = torch.cat([x1, x2], dim=1)
        if self._sliced:
            out = out[:, : self.out_chs]
        if self.short_conv is None:
            return out
        return dfc_gate(out, self.short_conv(dfc_downsample(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the training branches into ``primary_conv`` / ``cheap_operation`` (in place)."""
        if self.deployed:
            return
        primary = fold_branches(self.primary_rpr_conv, self.primary_rpr_scale, None)
        cheap = fold_branches(self.cheap_rpr_conv, self.cheap_rpr_scale, self.cheap_rpr_skip)
        self.primary_conv = nn.Sequential(primary, self.primary_activation)
        self.cheap_operation = nn.Sequential(cheap, self.cheap_activation)
        for name in (
            "primary_rpr_conv",
            "primary_rpr_scale",
            "cheap_rpr_conv",
            "cheap_rpr_scale",
            "cheap_rpr_skip",
        ):
            delattr(self, name)
        self.deployed = True


class GhostBottleneckV3(nn.Module):
    """The GhostNetV3 bottleneck: V1's structure with re-parameterizable convs.

    ghost1 (:class:`GhostModuleV3`, ReLU, optional DFC) -> stride-2 depthwise conv (training:
    ``dw_rpr_conv`` 3 k x k conv+BN + ``dw_rpr_scale`` 1x1 conv+BN; deploy: ``conv_dw`` with
    bias) -> [SE] -> ghost2 (linear) -> + shortcut (identity, or depthwise+BN, 1x1+BN).
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
        dfc: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.deployed = deploy
        ghost = {"ratio": ratio, "dw_size": dw_size, "deploy": deploy}
        self.ghost1 = GhostModuleV3(in_chs, mid_chs, relu=True, dfc=dfc, **ghost)
        if stride > 1:
            pad = (dw_kernel_size - 1) // 2
            if deploy:
                self.conv_dw = nn.Conv2d(
                    mid_chs, mid_chs, dw_kernel_size, stride, pad, groups=mid_chs
                )
            else:
                self.dw_rpr_conv = nn.ModuleList(
                    ConvBn(mid_chs, mid_chs, dw_kernel_size, stride, groups=mid_chs)
                    for _ in range(NUM_BRANCHES)
                )
                self.dw_rpr_scale = ConvBn(mid_chs, mid_chs, 1, stride, groups=mid_chs)
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModuleV3(mid_chs, out_chs, relu=False, **ghost)
        if in_chs == out_chs and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            pad = (dw_kernel_size - 1) // 2
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride, pad, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.stride > 1:
            if self.deployed:
                out = self.conv_dw(out)
            else:
                dw = self.dw_rpr_scale(out)
                for branch in self.dw_rpr_conv:
                    dw = dw + branch(out)
                out = dw
        if self.se is not None:
            out = self.se(out)
        out = self.ghost2(out)
        return out + self.shortcut(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the stride-2 depthwise branches into ``conv_dw`` and both Ghost modules."""
        self.ghost1.reparameterize()
        self.ghost2.reparameterize()
        if self.deployed:
            return
        if self.stride > 1:
            self.conv_dw = fold_branches(self.dw_rpr_conv, self.dw_rpr_scale, None)
            del self.dw_rpr_conv, self.dw_rpr_scale
        self.deployed = True

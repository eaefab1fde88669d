"""GhostNetV2's DFC attention (Tang et al., NeurIPS 2022) and the Ghost layers that use it.

The decoupled fully connected (DFC) gate sees the module's input at half resolution: a
conv + BN, then a depthwise ``1 x 5`` and a depthwise ``5 x 1`` conv (each + BN, the
"fully connected along W, then along H" of the paper with a short kernel), a sigmoid, and
a nearest upsample back to the Ghost output. The upsample goes to the output's *exact*
size and the 2x pooling shrinks a side only when it has two pixels to pool, so odd,
non-square and tiny inputs (down to 1x1 maps) run; the official code and timm fail there.
Where timm does run, both functions compute exactly what it computes.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .ghost import GhostConv2d, GhostModule

DFC_KERNEL = 5  # the long side of the 1 x 5 and 5 x 1 depthwise convs (paper and timm)


def dfc_branch(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """The DFC branch ``short_conv``: conv+BN, depthwise (1,5)+BN, depthwise (5,1)+BN.

    Indices 0..5 are the official/timm state_dict layout (``short_conv.<i>``)."""
    pad = DFC_KERNEL // 2
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.Conv2d(out_chs, out_chs, (1, DFC_KERNEL), 1, (0, pad), groups=out_chs, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.Conv2d(out_chs, out_chs, (DFC_KERNEL, 1), 1, (pad, 0), groups=out_chs, bias=False),
        nn.BatchNorm2d(out_chs),
    )


# Both helpers look at tensor sizes in Python, which torch.fx cannot trace symbolically:
# wrapping them keeps each one a single call node, so deploy.fuse and split can trace the
# models that use them (the BNs of the DFC branch stay visible to the BN folding).
@torch.fx.wrap
def dfc_downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling, stride 2; a side of one pixel is left as it is (no crash)."""
    kh = 2 if x.shape[-2] >= 2 else 1
    kw = 2 if x.shape[-1] >= 2 else 1
    return F.avg_pool2d(x, (kh, kw), (kh, kw))


@torch.fx.wrap
def dfc_gate(out: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``out * sigmoid(attention)`` upsampled (nearest) to ``out``'s exact height and width."""
    gate = F.interpolate(torch.sigmoid(attention), size=out.shape[-2:], mode="nearest")
    return out * gate


class GhostModuleV2(GhostModule):
    """A Ghost module gated by DFC attention (GhostNetV2's ``GhostModuleV2``, "attn" mode).

    ``primary_conv`` and ``cheap_operation`` are the V1 module's (same keys); ``short_conv``
    is the DFC branch computed from the module's input. timm's ``ghostnetv2_*`` and the
    official V2 checkpoints load with ``strict=True``.
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
        super().__init__(in_chs, out_chs, kernel_size, ratio, dw_size, stride, relu)
        self.short_conv = dfc_branch(in_chs, out_chs, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.short_conv(dfc_downsample(x))
        return dfc_gate(super().forward(x), attention)


class DFCGhostConv2d(nn.Module):
    """A :class:`GhostConv2d` gated by DFC attention: what ``ghostify(attention="dfc")`` makes.

    ``ghost`` is the drop-in Ghost layer; ``short_conv`` is the DFC branch on the pooled
    layer input. Its first conv is 1x1 (with the layer's stride) whatever the layer's kernel:
    at a quarter of the pixels a k x k conv would still cost a quarter of the original
    conv, while the long-range context comes from the 1x5/5x1 convs anyway (GhostNetV2 uses
    1x1 there too, its Ghost modules' primary convs being 1x1).
    """

    def __init__(self, ghost: GhostConv2d) -> None:
        super().__init__()
        self.ghost = ghost
        stride = ghost.primary_conv.stride[0]
        self.short_conv = dfc_branch(ghost.in_channels, ghost.out_channels, 1, stride).to(
            device=ghost.primary_conv.weight.device, dtype=ghost.primary_conv.weight.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.short_conv(dfc_downsample(x))
        return dfc_gate(self.ghost(x), attention)

    def extra_repr(self) -> str:
        return "attention=dfc"

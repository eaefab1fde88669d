"""Detectors from torchvision's detection models over any ghostnet feature backbone.

``create_detector(kind, backbone, num_classes)``: ``fasterrcnn``, ``retinanet`` and
``fcos`` get an FPN over the backbone's last levels; ``ssdlite`` gets SSDlite's head over
the last two levels plus extra stride-2 blocks. Labels are 1..num_classes for every kind
(0 is background), so the same data feeds all four.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import GhostnetError
from ..models.registry import create_features

KINDS = ("fasterrcnn", "retinanet", "fcos", "ssdlite")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DetectorSpec:
    """Plain data from which a checkpoint rebuilds its detector."""

    kind: str
    backbone: str
    num_classes: int
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    ghostify: dict[str, Any] | None = None
    levels: int = 3  # the backbone's last N levels feed the FPN / head
    output_stride: int = 32
    fpn_channels: int = 128
    head_convs: int = 4  # FCOS: 3x3 convs per head branch
    image_size: int = 256

    def build(self, pretrained_backbone: bool | str = False) -> nn.Module:
        return create_detector(
            self.kind,
            self.backbone,
            self.num_classes,
            backbone_kwargs=self.backbone_kwargs,
            ghostify=self.ghostify,
            levels=self.levels,
            output_stride=self.output_stride,
            fpn_channels=self.fpn_channels,
            head_convs=self.head_convs,
            image_size=self.image_size,
            pretrained_backbone=pretrained_backbone,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorSpec:
        return cls(**data)


class BackboneFPN(nn.Module):
    """Feature model -> FPN; returns an OrderedDict of maps, all ``out_channels`` wide."""

    def __init__(self, body: nn.Module, channels: list[int], out_channels: int, extra: Any):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def _extra_block(cin: int, cout: int) -> nn.Sequential:
    """SSDlite's extra layer: 1x1 reduce, 3x3 depthwise stride 2, 1x1 expand (BN + ReLU6)."""
    mid = cout // 2
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU6(inplace=True),
        nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU6(inplace=True),
        nn.Conv2d(mid, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class SSDBackbone(nn.Module):
    """The backbone's last two levels plus ``extra`` stride-2 blocks, as SSDlite uses them."""

    def __init__(self, body: nn.Module, channels: list[int], extra: int, width: int) -> None:
        super().__init__()
        self.body = body
        self.extra = nn.ModuleList()
        prev = channels[-1]
        for _ in range(extra):
            self.extra.append(_extra_block(prev, width))
            prev = width
        self.out_channels = [*channels, *([width] * extra)]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = list(self.body(x))
        for block in self.extra:
            maps.append(block(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def build_backbone(
    backbone: str | nn.Module,
    levels: int,
    output_stride: int = 32,
    backbone_kwargs: dict[str, Any] | None = None,
    ghostify: dict[str, Any] | None = None,
    pretrained: bool | str = False,
) -> nn.Module:
    """A feature model returning the last ``levels`` levels of ``backbone`` (a name, or a
    feature model with ``feature_info``)."""
    if isinstance(backbone, nn.Module):
        if not hasattr(backbone, "feature_info"):
            raise GhostnetError(
                "a backbone module needs feature_info: build it with "
                "create_model(name, features_only=True) or features_from_model(model)"
            )
        return backbone
    if levels < 1:
        raise GhostnetError(f"levels must be >= 1, got {levels}")
    return create_features(
        backbone,
        pretrained=pretrained,
        out_indices=tuple(range(-levels, 0)),
        output_stride=output_stride,
        ghostify=ghostify,
        **dict(backbone_kwargs or {}),
    )


def create_detector(
    kind: str,
    backbone: str | nn.Module = "ghostnet_100",
    num_classes: int = 10,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    ghostify: dict[str, Any] | None = None,
    levels: int = 3,
    output_stride: int = 32,
    fpn_channels: int = 128,
    head_convs: int = 4,
    image_size: int = 256,
    pretrained_backbone: bool | str = False,
) -> nn.Module:
    """A torchvision detector (``kind`` in fasterrcnn, retinanet, fcos, ssdlite) for
    ``num_classes`` object classes (labels 1..num_classes) over ``backbone``'s last
    ``levels`` feature levels. Images are resized so their longer side is ``image_size``.
    ``head_convs`` (FCOS only) sets the depth of the head's two towers: at 256x256 and 128
    channels FCOS's four 3x3 convs per branch are ~90% of a GhostNet detector's MACs."""
    if kind not in KINDS:
        raise GhostnetError(f"detector must be one of {', '.join(KINDS)}, got {kind!r}")
    if num_classes < 1:
        raise GhostnetError(f"num_classes must be >= 1, got {num_classes}")
    if head_convs != 4 and kind != "fcos":
        raise GhostnetError(
            f"head_convs (--head-convs) sets FCOS's head; {kind}'s head is fixed: leave it at 4"
        )
    if kind == "fcos" and fpn_channels % 16:
        # FCOS's head normalises with GroupNorm(16, channels)
        raise GhostnetError(
            f"fpn_channels (--fpn-channels) must be a multiple of 16 for fcos, got {fpn_channels}"
        )
    levels = 2 if kind == "ssdlite" and levels > 2 else levels
    body = build_backbone(
        backbone, levels, output_stride, backbone_kwargs, ghostify, pretrained_backbone
    )
    channels = body.feature_info.channels()
    reductions = body.feature_info.reduction()
    common = dict(
        min_size=image_size, max_size=image_size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    if kind == "ssdlite":
        # extra maps down to 2x2 (a 1x1 map cannot be batch-normalised with one image)
        extra = max(1, (image_size // reductions[-1]).bit_length() - 2)
        net = SSDBackbone(body, channels, extra, width=max(64, fpn_channels))
        maps = len(net.out_channels)
        anchors = DefaultBoxGenerator([[2, 3]] * maps, min_ratio=0.2, max_ratio=0.95)
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        head = SSDLiteHead(
            net.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm
        )
        return SSD(
            net,
            anchors,
            (image_size, image_size),
            num_classes + 1,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
            head=head,
        )
    if kind == "fasterrcnn":
        net = BackboneFPN(body, channels, fpn_channels, LastLevelMaxPool())
        strides = [*reductions, reductions[-1] * 2]
        sizes = tuple((2 * s,) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        names = [str(i) for i in range(len(channels))]
        pool = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
        return FasterRCNN(
            net, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pool, **common
        )
    # RetinaNet and FCOS: P6/P7 from the last FPN map, as in their papers
    net = BackboneFPN(body, channels, fpn_channels, LastLevelP6P7(fpn_channels, fpn_channels))
    strides = [*reductions, reductions[-1] * 2, reductions[-1] * 4]
    if kind == "retinanet":
        sizes = tuple(tuple(int(2 * s * 2 ** (k / 3)) for k in range(3)) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        return RetinaNet(net, num_classes + 1, anchor_generator=anchors, **common)
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSHead(fpn_channels, 1, num_classes + 1, num_convs=head_convs)
    return FCOS(net, num_classes + 1, anchor_generator=anchors, head=head, **common)


class DenseCore(nn.Module):
    """Backbone + FPN + dense head of a detector, on normalised images: the part that
    exports to ONNX. Anchor decoding and NMS (data-dependent sizes) stay in Python."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        if isinstance(detector, FasterRCNN):
            # the second stage runs on NMS-selected proposals: its input size depends on
            # the data, so only the region-proposal head is part of the dense export
            self.head = detector.rpn.head
            self.kind = "fasterrcnn"
        else:
            self.head = detector.head
            self.kind = type(detector).__name__.lower()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = list(self.backbone(x).values())
        out = self.head(maps)
        if self.kind == "fasterrcnn":
            objectness, deltas = out
            return (*objectness, *deltas)
        return tuple(out[k] for k in sorted(out))


def detector_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

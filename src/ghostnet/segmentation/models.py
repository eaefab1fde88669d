"""Semantic segmenters from torchvision's heads over any ghostnet feature backbone.

``create_segmenter(kind, backbone, num_classes)``:

- ``lraspp``: torchvision's LR-ASPP head (Searching for MobileNetV3, Sec. 6.3) on a
  low-level map (the backbone's first level at stride 8) and the last level (output stride
  16 by default, as torchvision's ``lraspp_mobilenet_v3_large``);
- ``deeplabv3``: ``DeepLabHead`` (ASPP) on the last level (output stride 8 by default);
- ``fcn``: ``FCNHead`` on the last level (output stride 8 by default).

``deeplabv3`` and ``fcn`` take an optional auxiliary ``FCNHead`` on the second-last level
(``aux=True``), as torchvision's ``aux_loss``. With ``backbone_kwargs={"norm_layer":
"groupnorm"}`` (timm) the heads' BatchNorms become GroupNorm as well. Logits are upsampled
(bilinear) to the input size. ``forward`` returns a dict like torchvision's segmentation
models, ``{"out": logits}`` (plus ``"aux"`` when the model has an auxiliary head), so one
training loop feeds ours and torchvision's reference models alike; :class:`LogitsOnly`
gives the plain tensor for export.

``kind="torchvision:NAME"`` builds torchvision's own model NAME (e.g.
``lraspp_mobilenet_v3_large``) with ``weights=None, weights_backbone=None``: the reference
the benchmark trains the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tv_segmentation
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from ..errors import GhostnetError
from ..models.registry import create_features

KINDS = ("lraspp", "deeplabv3", "fcn")
DEFAULT_OUTPUT_STRIDE = {"lraspp": 16, "deeplabv3": 8, "fcn": 8}
REFERENCES = (
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SegmenterSpec:
    """Plain data from which a checkpoint rebuilds its segmenter."""

    kind: str
    backbone: str
    num_classes: int
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    ghostify: dict[str, Any] | None = None
    output_stride: int | None = None  # None: the kind's default (DEFAULT_OUTPUT_STRIDE)
    aux: bool = False
    inter_channels: int = 128  # LR-ASPP's width, as torchvision's

    def build(self, pretrained_backbone: bool | str = False) -> nn.Module:
        return create_segmenter(
            self.kind,
            self.backbone,
            self.num_classes,
            output_stride=self.output_stride,
            aux=self.aux,
            backbone_kwargs=self.backbone_kwargs,
            ghostify=self.ghostify,
            inter_channels=self.inter_channels,
            pretrained_backbone=pretrained_backbone,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise GhostnetError(
                f"segmenter spec has unknown fields {unknown}: written by a newer ghostnet?"
            )
        return cls(**data)


class Segmenter(nn.Module):
    """Feature model + torchvision head (+ auxiliary head); ``{"out": logits[, "aux"]}`` at
    the input size. ``low``/``high``/``aux_level`` index the backbone's returned maps."""

    def __init__(
        self,
        kind: str,
        backbone: nn.Module,
        head: nn.Module,
        high: int,
        low: int | None = None,
        aux_head: nn.Module | None = None,
        aux_level: int | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.high = high
        self.low = low
        self.aux_level = aux_level

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        maps = self.backbone(x)
        if self.low is not None:
            logits = self.head({"low": maps[self.low], "high": maps[self.high]})
        else:
            logits = self.head(maps[self.high])
        out = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None and self.aux_level is not None:
            aux = self.aux_head(maps[self.aux_level])
            out["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return out


class LogitsOnly(nn.Module):
    """A segmenter returning the ``"out"`` logits as a tensor (what ONNX export and
    ``deploy.export_onnx``'s check take)."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x)["out"]


def _reference(name: str, num_classes: int, aux: bool) -> nn.Module:
    if name not in REFERENCES:
        raise GhostnetError(
            f"torchvision segmenter must be one of {', '.join(REFERENCES)}, got {name!r}"
        )
    builder = getattr(tv_segmentation, name)
    kwargs: dict[str, Any] = dict(weights=None, weights_backbone=None, num_classes=num_classes)
    if not name.startswith("lraspp"):
        kwargs["aux_loss"] = aux
    elif aux:
        raise GhostnetError("lraspp has no auxiliary head: leave aux off")
    return builder(**kwargs)


def create_segmenter(
    kind: str,
    backbone: str | nn.Module = "ghostnet_100",
    num_classes: int = 21,
    *,
    output_stride: int | None = None,
    aux: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    ghostify: dict[str, Any] | None = None,
    inter_channels: int = 128,
    pretrained_backbone: bool | str = False,
) -> nn.Module:
    """A segmenter (``kind`` in lraspp, deeplabv3, fcn) for ``num_classes`` classes
    (background included) over ``backbone``: a registry name, ``torchvision:NAME``,
    ``timm:NAME``, or a feature model with ``feature_info``. ``kind="torchvision:NAME"``
    is torchvision's own model NAME, untrained (``backbone`` is then not used)."""
    if num_classes < 2:
        raise GhostnetError(f"num_classes must be >= 2 (background + 1), got {num_classes}")
    if kind.startswith("torchvision:"):
        return _reference(kind.split(":", 1)[1], num_classes, aux)
    if kind not in KINDS:
        raise GhostnetError(
            f"segmenter must be one of {', '.join(KINDS)} or torchvision:NAME, got {kind!r}"
        )
    if kind == "lraspp" and aux:
        raise GhostnetError("lraspp has no auxiliary head: leave aux off")
    stride = DEFAULT_OUTPUT_STRIDE[kind] if output_stride is None else output_stride
    if stride not in (8, 16):
        raise GhostnetError(f"a segmenter's output_stride must be 8 or 16, got {stride}")
    if isinstance(backbone, nn.Module):
        if not hasattr(backbone, "feature_info"):
            raise GhostnetError(
                "a backbone module needs feature_info: build it with "
                "create_features(name) or features_from_model(model)"
            )
        body = backbone
    else:
        # every level: the ones a head does not use cost nothing extra (they lie on the
        # path to the last one), and their strides tell which level is LR-ASPP's low one
        body = create_features(
            backbone,
            pretrained=pretrained_backbone,
            output_stride=stride,
            ghostify=ghostify,
            **dict(backbone_kwargs or {}),
        )
    channels = body.feature_info.channels()
    reductions = body.feature_info.reduction()
    high = len(channels) - 1
    if reductions[high] > stride:  # a backbone that never goes past it (CIFAR nets) is fine
        raise GhostnetError(
            f"backbone {backbone!r} ends at stride {reductions[high]}, past the asked "
            f"output stride {stride}"
        )
    if kind == "lraspp":
        lows = [i for i, r in enumerate(reductions[:high]) if r == 8]
        if not lows:
            raise GhostnetError(
                f"lraspp needs a stride-8 level before the last; {backbone!r} has strides "
                f"{reductions}"
            )
        head = LRASPPHead(channels[lows[0]], channels[high], num_classes, inter_channels)
        model = Segmenter(kind, body, head, high, low=lows[0])
    else:
        head = (
            DeepLabHead(channels[high], num_classes)
            if kind == "deeplabv3"
            else FCNHead(channels[high], num_classes)
        )
        aux_head = FCNHead(channels[high - 1], num_classes) if aux and high >= 1 else None
        model = Segmenter(kind, body, head, high, aux_head=aux_head, aux_level=high - 1)
    if (backbone_kwargs or {}).get("norm_layer") in ("groupnorm", "gn"):
        _group_norm_like_backbone(model.head)
        if model.aux_head is not None:
            _group_norm_like_backbone(model.aux_head)
    return model


def _group_norm_like_backbone(head: nn.Module) -> None:
    """The head's BatchNorms as GroupNorm (32 groups where the width allows), in place: a
    backbone built with ``norm_layer=groupnorm`` gets a head without batch statistics too,
    so the whole model is independent of how a batch is split across processes."""
    for name, child in list(head.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(head, name, nn.GroupNorm(math.gcd(32, channels), channels))
        else:
            _group_norm_like_backbone(child)


def segmenter_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

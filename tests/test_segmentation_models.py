"""create_segmenter: every kind over a ghostnet, a torchvision and a timm backbone, output at
the input size, output stride 8/16, the spec round trip and the torchvision reference."""

from __future__ import annotations

import pytest
import torch

from ghostnet.errors import GhostnetError
from ghostnet.models.registry import create_features
from ghostnet.segmentation import KINDS, Segmenter, SegmenterSpec, create_segmenter

BACKBONES = ("ghostnet_050", "torchvision:mobilenet_v3_small", "timm:mobilenetv3_small_050")
_FEATURES: dict[tuple[str, int], torch.nn.Module] = {}


def features(name: str, stride: int) -> torch.nn.Module:
    """One traced feature model per (backbone, stride) for the whole module (tracing is
    the slow part); create_segmenter takes a feature model as its backbone."""
    if (name, stride) not in _FEATURES:
        _FEATURES[(name, stride)] = create_features(name, output_stride=stride)
    return _FEATURES[(name, stride)]


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_logits_at_the_input_size(kind: str, backbone: str, stride: int) -> None:
    torch.manual_seed(0)
    model = create_segmenter(kind, features(backbone, stride), 5, output_stride=stride)
    model.eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        out = model(x)
    assert set(out) == {"out"}
    assert out["out"].shape == (2, 5, 64, 48)
    assert torch.isfinite(out["out"]).all()
    # the head reads the last level at the asked stride: 64 / stride rows
    maps = model.backbone(x)
    assert maps[model.high].shape[-2] == 64 // stride
    if kind == "lraspp":
        assert maps[model.low].shape[-2] == 64 // 8


def test_aux_head_and_backward() -> None:
    model = create_segmenter("fcn", features("timm:mobilenetv3_small_050", 8), 3, aux=True)
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 3, 64, 64)
    (out["out"].mean() + out["aux"].mean()).backward()
    assert model.aux_head[0].weight.grad is not None


def test_spec_round_trip_builds_by_name() -> None:
    spec = SegmenterSpec("lraspp", "timm:mobilenetv3_small_050", 4, output_stride=16)
    model = spec.build()
    assert isinstance(model, Segmenter)
    again = SegmenterSpec.from_dict(spec.to_dict()).build()
    again.load_state_dict(model.state_dict())
    model.eval()
    again.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], again(x)["out"])


def test_ghostified_backbone() -> None:
    spec = SegmenterSpec(
        "deeplabv3", "timm:mobilenetv3_small_050", 3, output_stride=16, ghostify={"ratio": 2}
    )
    model = spec.build().eval()
    names = {type(m).__name__ for m in model.backbone.modules()}
    assert "GhostConv2d" in names
    assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_torchvision_reference() -> None:
    model = create_segmenter("torchvision:lraspp_mobilenet_v3_large", num_classes=11).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 11, 64, 64)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: create_segmenter("unet", "ghostnet_050", 3), "segmenter must be one of"),
        (lambda: create_segmenter("lraspp", "ghostnet_050", 1), "num_classes must be >= 2"),
        (lambda: create_segmenter("fcn", "x", 3, output_stride=32), "output_stride must be 8"),
        (lambda: create_segmenter("lraspp", "x", 3, aux=True), "no auxiliary head"),
        (lambda: create_segmenter("torchvision:unet", num_classes=3), "torchvision segmenter"),
        (lambda: create_segmenter("fcn", torch.nn.Conv2d(3, 3, 1), 3), "needs feature_info"),
        (
            lambda: SegmenterSpec.from_dict(
                {"kind": "fcn", "backbone": "x", "num_classes": 2, "new": 1}
            ),
            "unknown fields",
        ),
    ],
)
def test_bad_arguments_are_one_line(call, message: str) -> None:
    with pytest.raises(GhostnetError, match=message):
        call()


def test_groupnorm_backbone_gets_a_groupnorm_head() -> None:
    spec = SegmenterSpec(
        "fcn", "timm:resnet18", 3, backbone_kwargs={"norm_layer": "groupnorm"}, aux=True
    )
    model = spec.build()
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds

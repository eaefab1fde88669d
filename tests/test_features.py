"""Feature backbones: levels and feature_info of every registered model and five
torchvision models at output stride 32/16/8, outputs equal to the classifier's own
activations, dilation equal to torchvision's, classifier weights loading."""

from __future__ import annotations

import pytest
import torch
import torchvision

import ghostnet
from ghostnet.errors import GhostnetError
from ghostnet.models.features import features_from_model

from .conftest import swept_models

TORCHVISION = (
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_large",
    "torchvision:efficientnet_b0",
    "torchvision:regnet_x_400mf",
    "torchvision:convnext_tiny",
)
FAST = ("resnet20_cifar", "ghostnet_050", "torchvision:resnet18")
SIZE = 64


def _check(name: str, output_stride: int) -> None:
    model = ghostnet.create_model(name, features_only=True, output_stride=output_stride).eval()
    info = model.feature_info
    with torch.no_grad():
        maps = model(torch.rand(1, 3, SIZE, SIZE))
    assert len(maps) == len(info) >= 3
    reductions = info.reduction()
    assert reductions == sorted(reductions) and max(reductions) <= output_stride
    for out, channels, reduction in zip(maps, info.channels(), reductions, strict=True):
        assert out.shape[1] == channels
        assert out.shape[-1] == SIZE // reduction, (name, output_stride, info)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", FAST)
def test_feature_shapes_fast(name, output_stride):
    _check(name, output_stride)


@pytest.mark.slow  # every registered model and five torchvision ones, three strides each
@pytest.mark.parametrize("name", [*swept_models(), *TORCHVISION])
def test_feature_shapes_every_model(name):
    for output_stride in (32, 16, 8):
        _check(name, output_stride)


def test_ghostnet_levels_follow_the_table():
    info = ghostnet.create_model("ghostnet_100", features_only=True).feature_info
    assert info.channels() == [16, 24, 40, 112, 960]
    assert info.reduction() == [2, 4, 8, 16, 32]


def test_outputs_are_the_classifiers_activations():
    torch.manual_seed(0)
    clf = ghostnet.create_model("ghostnet_050").eval()
    feats = features_from_model(ghostnet.create_model("ghostnet_050").eval())
    feats.load_backbone_state_dict(clf.state_dict())
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        maps = feats.eval()(x)
        h = clf.act1(clf.bn1(clf.conv_stem(x)))
        stages = []
        for stage in clf.blocks:
            h = stage(h)
            stages.append(h)
    # the last stage at each resolution: blocks 0, 2, 4, 6, 9 (Table 1)
    for got, want in zip(maps, [stages[i] for i in (0, 2, 4, 6, 9)], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow  # ResNet-50 traced and run twice
def test_dilation_matches_torchvision_resnet():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    mine = torchvision.models.resnet50()
    mine.load_state_dict(reference.state_dict())
    feats = features_from_model(mine, out_indices=(-1,), output_stride=8).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        r = reference.eval()
        want = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        torch.testing.assert_close(feats(x)[0], want)
    assert feats.feature_info.reduction() == [8]


def test_classifier_weights_load(tmp_path):
    clf = ghostnet.create_model("resnet20_cifar")
    path = tmp_path / "w.pt"
    torch.save(clf.state_dict(), path)
    feats = ghostnet.create_model("resnet20_cifar", pretrained=str(path), features_only=True)
    for key, value in feats.body.state_dict().items():
        assert torch.equal(value, clf.state_dict()[key]), key
    dropped = feats.load_backbone_state_dict(clf.state_dict())
    assert dropped == ["fc.bias", "fc.weight"]
    with pytest.raises(GhostnetError, match="backbone keys"):
        feats.load_backbone_state_dict({})


def test_timm_features_and_bad_arguments():
    pytest.importorskip("timm")
    model = ghostnet.create_model("timm:resnet18", features_only=True, output_stride=16)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 16]
    with pytest.raises(GhostnetError, match="output_stride must be 8, 16 or 32"):
        ghostnet.create_model("resnet20_cifar", features_only=True, output_stride=4)
    with pytest.raises(GhostnetError, match="out_indices"):
        ghostnet.create_model("resnet20_cifar", features_only=True, out_indices=(5,))
    with pytest.raises(GhostnetError, match="needs features_only"):
        ghostnet.create_model("resnet20_cifar", output_stride=16)

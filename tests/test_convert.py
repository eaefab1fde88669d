import pytest
import torch
import torchvision
from torch import nn

import ghostnet
from ghostnet import GhostConv2d, GhostnetError, ghostify, ghostify_report

from .conftest import all_params_have_grad

TORCHVISION = [
    "resnet18",
    "resnet50",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "densenet121",
]


def _convs(model, kind=nn.Conv2d):
    return [n for n, m in model.named_modules() if type(m) is kind]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models(name):
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    converted, report = ghostify_report(model, input_size=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    converted.eval()
    assert converted(x).shape == model(x).shape
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert report.converted, "nothing converted"
    # the original is untouched (inplace=False) and the stem stays
    assert not any(isinstance(m, GhostConv2d) for m in model.modules())
    first = _convs(model)[0]
    assert type(converted.get_submodule(first)) is nn.Conv2d
    traced = torch.fx.symbolic_trace(converted)  # FX-traceable like the original
    with torch.no_grad():
        assert torch.allclose(traced(x), converted(x), atol=1e-5)
    converted.train()
    converted(x).sum().backward()
    assert all_params_have_grad(converted) == []


def test_mobilenet_v2_expansion_and_projection_convs():
    model = torchvision.models.mobilenet_v2(weights=None)
    converted = ghostify(model)
    block = converted.features[2].conv  # expand 1x1, depthwise 3x3, project 1x1
    assert isinstance(block[0][0], GhostConv2d)  # 1x1 expansion
    assert type(block[1][0]) is nn.Conv2d and block[1][0].groups > 1  # depthwise stays
    assert isinstance(block[2], GhostConv2d)  # linear projection


def test_timm_model():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", num_classes=4)
    converted = ghostify(model)
    x = torch.randn(2, 3, 32, 32)
    assert converted(x).shape == (2, 4)


def test_include_exclude_and_ratio_map():
    model = ghostnet.create_model("resnet20_cifar")
    only = ghostify(model, include="layer1.*")
    assert all(
        n.startswith("layer1.") for n, m in only.named_modules() if isinstance(m, GhostConv2d)
    )
    no_l3 = ghostify(model, exclude=["layer3.*"])
    assert not any(
        n.startswith("layer3.") for n, m in no_l3.named_modules() if isinstance(m, GhostConv2d)
    )
    mapped = ghostify(model, {"layer2.0.conv1": 4, "layer3.1.conv2": 3})
    ghosts = {n: m.ratio for n, m in mapped.named_modules() if isinstance(m, GhostConv2d)}
    assert ghosts == {"layer2.0.conv1": 4, "layer3.1.conv2": 3}
    stem = ghostify(model, skip_first=False)
    assert isinstance(stem.conv1, GhostConv2d)


def test_inplace_and_device_dtype():
    model = ghostnet.create_model("resnet20_cifar").double()
    same = ghostify(model, inplace=True)
    assert same is model
    assert model.layer1[0].conv1.primary_conv.weight.dtype == torch.float64


def test_fx_and_export_of_converted_model():
    model = ghostify(torchvision.models.resnet18(weights=None, num_classes=3), ratio=3).eval()
    x = torch.randn(1, 3, 32, 32)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
        exported = torch.export.export(model, (x,))
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def test_report_lists_changes():
    _, report = ghostify_report(ghostnet.create_model("resnet20_cifar"), input_size=(3, 32, 32))
    assert len(report.changes) == 19 and len(report.converted) == 18
    assert report.changes[0].reason == "kept: first conv (skip_first)"
    text = report.summary()
    assert "converted 18 of 19 convs" in text and "fewer" in text


def test_errors():
    class NoConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

    with pytest.raises(GhostnetError, match=r"no nn\.Conv2d"):
        ghostify(NoConv())
    depthwise_only = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3, groups=3))
    with pytest.raises(GhostnetError, match="nothing to convert"):
        ghostify(depthwise_only)
    with pytest.raises(GhostnetError, match="ratio"):
        ghostify(ghostnet.create_model("resnet20_cifar"), ratio=0)
    with pytest.raises(GhostnetError, match="dw_size"):
        ghostify(ghostnet.create_model("resnet20_cifar"), dw_size=4)

import logging

import pytest
import torch

import ghostnet
from ghostnet import GhostnetError, ModelSpec, save_weights
from ghostnet.models import get_entry


def test_list_models_names_and_pattern():
    names = ghostnet.list_models()
    for expected in (
        "ghostnet_050",
        "ghostnet_100",
        "ghostnet_130",
        "resnet56_cifar",
        "ghost_resnet56_cifar",
        "vgg16_cifar",
        "ghost_vgg16_cifar",
        "ghost_resnet50",
    ):
        assert expected in names
    assert ghostnet.list_models("ghostnet_*") == ["ghostnet_050", "ghostnet_100", "ghostnet_130"]


def test_unknown_name_lists_close_matches():
    with pytest.raises(GhostnetError, match="ghostnet_100"):
        ghostnet.create_model("ghostnet_10")


def test_external_sources():
    m = ghostnet.create_model("torchvision:resnet18", num_classes=5).eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(GhostnetError, match="resnet18"):
        ghostnet.create_model("torchvision:resnet19")
    with pytest.raises(GhostnetError, match="torchvision:NAME"):
        ghostnet.create_model("keras:resnet")
    pytest.importorskip("timm")
    timm_model = ghostnet.create_model("timm:resnet18", num_classes=3).eval()
    assert timm_model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(GhostnetError, match="unknown model"):
        ghostnet.create_model("timm:resnet_nope")


def test_pretrained_local_path_and_class_change(tmp_path, caplog):
    source = ghostnet.create_model("ghostnet_050")
    path = save_weights(source, tmp_path / "w.safetensors")
    same = ghostnet.create_model("ghostnet_050", pretrained=path)
    for k, v in source.state_dict().items():
        assert torch.equal(same.state_dict()[k], v)
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        ten = ghostnet.create_model("ghostnet_050", pretrained=path, num_classes=10)
    assert "classifier" in caplog.text and "num_classes=10" in caplog.text
    assert ten.classifier.out_features == 10
    assert torch.equal(ten.conv_stem.weight, source.conv_stem.weight)


def test_pretrained_true_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GHOSTNET_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(GhostnetError, match="pretrained='PATH'"):
        ghostnet.create_model("ghostnet_100", pretrained=True)
    with pytest.raises(GhostnetError, match="no pretrained weights"):
        ghostnet.create_model("ghostnet_130", pretrained=True)


def test_model_spec_round_trip():
    spec = ModelSpec("resnet20_cifar", {"num_classes": 4}, {"ratio": 2, "dw_size": 3})
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    model = again.build()
    assert any(isinstance(m, ghostnet.GhostConv2d) for m in model.modules())
    assert spec.input_size == get_entry("resnet20_cifar").input_size == (3, 32, 32)

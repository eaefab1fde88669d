import pytest
import torch

import ghostnet
from ghostnet import GhostConv2d

from .conftest import all_params_have_grad


@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("resnet56_cifar", 0.85e6, 125e6),
        ("vgg16_cifar", 15.0e6, 313e6),
        ("resnet20_cifar", 0.27e6, 41e6),
        ("resnet110_cifar", 1.7e6, 253e6),
        ("mobilenetv2_cifar", 2.24e6, 88.0e6),
    ],
)
def test_baseline_sizes(name, params, macs):
    result = ghostnet.profile(ghostnet.create_model(name), (3, 32, 32))
    assert result.params == pytest.approx(params, rel=0.02)
    assert result.macs == pytest.approx(macs, rel=0.02)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_resnet_depths(depth):
    model = ghostnet.create_model(f"resnet{depth}_cifar")
    blocks = sum(len(stage) for stage in (model.layer1, model.layer2, model.layer3))
    assert 6 * (blocks // 3) + 2 == depth
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name", ["ghost_resnet20_cifar", "ghost_vgg16_cifar", "ghost_mobilenetv2_cifar"]
)
def test_ghost_versions(name, ratio=3):
    model = ghostnet.create_model(name, ratio=ratio, dw_size=5, num_classes=7)
    ghosts = [m for m in model.modules() if isinstance(m, GhostConv2d)]
    assert ghosts and all(g.ratio == ratio and g.dw_size == 5 for g in ghosts)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all_params_have_grad(model) == []


def test_ghost_resnet50_default_ratio():
    model = ghostnet.create_model("ghost_resnet50")
    assert type(model.conv1) is torch.nn.Conv2d
    assert isinstance(model.layer1[0].conv1, GhostConv2d) and model.layer1[0].conv1.ratio == 2


def test_mobilenetv2_cifar_strides_and_expansion_ghosts():
    model = ghostnet.create_model("mobilenetv2_cifar")
    strides = [block.dw_conv.stride[0] for block in model.blocks]
    assert model.stem_conv.stride == (1, 1) and strides[:3] == [1, 1, 1]  # CIFAR strides
    assert strides.count(2) == 3  # 32 -> 4 before pooling
    ghost = ghostnet.create_model("ghost_mobilenetv2_cifar", width=0.5)
    converted = [n for n, m in ghost.named_modules() if isinstance(m, GhostConv2d)]
    expansions = [b for b in ghost.blocks if b.expand_conv is not None]
    # only the 1x1 expansion convs become Ghost layers; projections and head stay
    assert converted == [f"blocks.{i}.expand_conv" for i in range(1, len(ghost.blocks))]
    assert len(converted) == len(expansions) == 16
    assert type(ghost.head_conv) is torch.nn.Conv2d

import operator

import pytest
import torch
from torch import nn

import ghostnet
from ghostnet.deploy import fuse
from ghostnet.split import split_concats

from .conftest import randomise_bn as _randomise_bn
from .conftest import small_size as _small_size


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.target is target)


@pytest.mark.parametrize("name", ghostnet.list_models())
def test_split_matches_eager_for_every_registered_model(name):
    kwargs = {"ratio": 3} if name.startswith("ghost_") else {}
    size = _small_size(name)
    model = _randomise_bn(ghostnet.create_model(name, **kwargs), size)
    split = split_concats(fuse(model), size)
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(split(x), expected, atol=1e-4 * max(1.0, expected.abs().max()))


@pytest.mark.parametrize("name, most_cats", [("ghostnet_050", 0), ("ghost_resnet50", 1)])
def test_concats_disappear(name, most_cats):
    model = ghostnet.create_model(name).eval()
    split = split_concats(fuse(model), (3, 64, 64))
    assert _count(split, torch.cat) <= most_cats
    assert _count(split, operator.getitem) <= 2  # only tiny SE gates, if anything


def test_rules_on_a_small_graph():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 5, 3, padding=1)
            self.b = nn.Conv2d(5, 5, 3, padding=1, groups=5)
            self.dw = nn.Conv2d(10, 20, 3, padding=1, groups=10)  # channel multiplier 2
            self.pw = nn.Conv2d(20, 4, 1)
            self.side = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            t = torch.cat([y, self.b(y)], 1)
            t = self.dw(t) * 2.0
            gate = torch.sigmoid(t.mean((2, 3), keepdim=True))
            return self.pw(t * gate) + self.side(x)

    net = Net().eval()
    split = split_concats(net, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(split(x), net(x), atol=1e-5)
    assert _count(split, torch.cat) <= 1  # "* 2.0" (a scalar) makes one materialise

import operator

import pytest
import torch
import torch.nn.functional as F
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
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
        for pad_to in (0, 16):  # plain split, and split with parts padded to 16 channels
            split = split_concats(fuse(model), size, pad_to=pad_to)
            got = split(x)
            assert torch.allclose(got, expected, atol=1e-4 * max(1.0, expected.abs().max()))


def _convs(gm):
    return [m for m in gm.modules() if isinstance(m, nn.Conv2d)]


def test_padding_makes_every_ghostnet_conv_a_block_multiple():
    """GhostNet's halves (8, 12, 20, 36... channels) all become multiples of 16, the only
    ops added are the first block's shortcut slices, and real outputs do not change."""
    model = _randomise_bn(ghostnet.create_model("ghostnet_100"), (3, 64, 64))
    plain = split_concats(fuse(model), (3, 64, 64))
    padded = split_concats(fuse(model), (3, 64, 64), pad_to=16)
    assert any(c.out_channels % 16 for c in _convs(plain))
    odd = [(c.in_channels, c.out_channels) for c in _convs(padded) if c.out_channels % 16]
    assert odd == []
    reading_rgb = [c for c in _convs(padded) if c.in_channels == 3]  # the stem (and its rows)
    assert all(c.in_channels % 16 == 0 for c in _convs(padded) if c.in_channels != 3)
    # computed once, as the two padded row parts the first residual add needs (8 -> 16 each)
    assert [c.out_channels for c in reading_rgb] == [16, 16]
    # the RGB stem feeds the first residual add too: it is emitted split into padded rows
    # (27 weights per output) rather than sliced and padded
    assert _count(padded, torch.cat) == 0 and _count(padded, F.pad) == 0
    assert _count(padded, operator.getitem) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(padded(x), model(x), atol=1e-4)


def test_padding_keeps_real_channels_apart_from_padding():
    """Padding must never leak into a real channel: make the padded weights non-zero after
    the rewrite and the output must change only if it does (here: it does not, because
    consumers read only real columns)."""
    conv = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1)).eval()
    padded = split_concats(conv, (3, 4, 4), pad_to=8)
    first, second = _convs(padded)
    assert (first.out_channels, second.in_channels) == (8, 8)
    assert first.weight[6:].abs().sum() == 0 and second.weight[:, 6:].abs().sum() == 0
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        reference = conv(x)
        first.bias[6:] = 5.0  # garbage in the padded channels...
        assert torch.allclose(padded(x), reference, atol=1e-6)  # ...never reaches the output
    with pytest.raises(ValueError, match="pad_to"):
        split_concats(conv, (3, 4, 4), pad_to=-1)


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


def test_padding_leaves_non_zero_padding_modes_alone():
    net = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect"), nn.ReLU()).eval()
    padded = split_concats(net, (4, 5, 5), pad_to=8)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(padded(x), net(x), atol=1e-6)

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
from .conftest import swept_models


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.target is target)


@pytest.mark.parametrize("name", swept_models())
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


@pytest.mark.parametrize(
    ("name", "stem_parts"),
    # 1.0x: the first Ghost modules (8 + 8 maps) fit one 16-channel block and are merged,
    # so the stem is one 16-row conv. 1.3x: their halves (10 + 10) are padded parts, and
    # the stem, which feeds the first residual add too, is computed once as the two padded
    # row parts that add needs (27 weights per output) rather than sliced and padded.
    [("ghostnet_100", [16]), ("ghostnet_130", [16, 16])],
)
def test_padding_makes_every_ghostnet_conv_a_block_multiple(name, stem_parts):
    """GhostNet's halves (8, 12, 20, 36... channels) all become multiples of 16, no concat,
    pad or slice is left, and real outputs do not change."""
    model = _randomise_bn(ghostnet.create_model(name), (3, 64, 64))
    plain = split_concats(fuse(model), (3, 64, 64))
    padded = split_concats(fuse(model), (3, 64, 64), pad_to=16)
    assert any(c.out_channels % 16 for c in _convs(plain))
    odd = [(c.in_channels, c.out_channels) for c in _convs(padded) if c.out_channels % 16]
    assert odd == []
    reading_rgb = [c for c in _convs(padded) if c.in_channels == 3]  # the stem (and its rows)
    assert all(c.in_channels % 16 == 0 for c in _convs(padded) if c.in_channels != 3)
    assert [c.out_channels for c in reading_rgb] == stem_parts
    assert _count(padded, torch.cat) == 0 and _count(padded, F.pad) == 0
    assert _count(padded, operator.getitem) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(padded(x), model(x), atol=1e-4)


@pytest.mark.parametrize("relu", [True, False])
def test_a_ghost_module_that_fits_one_block_is_computed_as_one_tensor(relu):
    """8 + 8 maps with blocks of 16: one conv of 16 rows (the primary filters twice) and one
    depthwise conv (identity taps, then the cheap filters), no concat; 12 + 12 maps would
    need 32 primary rows instead of 16 and stay two padded parts."""
    for channels, merged in ((16, True), (24, False)):
        module = _randomise_bn(
            ghostnet.layers.GhostModule(16, channels, kernel_size=1, ratio=2, relu=relu),
            (16, 12, 12),
        )
        out = split_concats(fuse(module), (16, 12, 12), pad_to=16)
        names = [name for name, _ in out.named_children()]
        assert any(n.startswith("merged_ghost") for n in names) == merged
        if merged:
            convs = _convs(out)
            assert [(c.out_channels, c.groups) for c in convs] == [(16, 1), (16, 16)]
            assert _count(out, torch.cat) == 0
        x = torch.randn(3, 16, 12, 12)
        with torch.no_grad():
            assert torch.allclose(out(x), module(x), atol=1e-5)


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


# -- adversarial graphs: the rewrite must match eager (or keep the concat) ---------------


def _check(net, size=(3, 6, 6)):
    """``net`` rewritten (plain and padded to 16) gives eager's output on the same input."""
    net = net.eval()
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = net(x.clone())
        for pad_to in (0, 16):
            got = split_concats(net, size, pad_to=pad_to)(x.clone())
            assert got.shape == expected.shape, pad_to
            assert torch.allclose(got, expected, atol=1e-5), pad_to


class _Ghost(nn.Module):
    """``cat([a(x), b(x)], 1)`` (4 + 6 channels), then ``kind`` decides what follows."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 5, 1)
        self.d = nn.Conv2d(4, 5, 1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.w = nn.Parameter(torch.randn(10, 1, 1))
        self.v = nn.Parameter(torch.randn(1, 10))
        self.s = nn.Parameter(torch.tensor(0.5))
        self.pre = nn.Conv2d(3, 3, 1)
        self.side = nn.Conv2d(3, 10, 1)

    def forward(self, x):
        k = self.kind
        if k == "moved_conv":  # side(h) runs before h changes in place; its add after
            h = self.pre(x)
            y = self.side(h)
            h.relu_()
            return torch.cat([self.a(h), self.b(h)], 1) + y
        a = self.a(x)
        t = torch.cat([a, self.b(x)], 1)
        if k in ("module", "function", "method", "view"):
            v = t[:, 2:6] if k == "view" else None  # a view of t, taken before the change
            if k == "module":
                r = self.act(t)
            elif k == "function":
                r = F.relu(t, inplace=True)
            else:
                r = t.relu_()
            out = self.c(t) + self.c(r) * 0.5 + self.d(a)  # t changed, a (a cat input) not
            return out if v is None else out + v.sum(1, keepdim=True)
        if k == "input_changed":  # a cat input changed after the cat: t keeps a's old values
            a.relu_()
            return self.c(t) + self.d(a)
        if k == "lone_module":  # nothing else reads t: the split is kept
            return self.c(self.act(t))
        if k == "mean_neg":
            return t.mean(dim=-3, keepdim=True) + torch.mean(t, dim=(-3,), keepdim=True)
        if k == "mean_batch":  # channels move to dim 0
            return t.mean(0).unsqueeze(0) + t.mean(dim=(0, 2), keepdim=True)
        if k == "mean_3d_pool":  # a 3-D (N, C, H) map: the pool reads it as unbatched
            return self.gap(t.mean(3))
        if k == "mul_c11":
            return t * self.w + self.s
        if k == "mul_1c":  # (1, C) broadcasts against W (W == C here)
            return t * self.v
        if k == "mul_2d":  # (N, C) parts times a (1, C) tensor
            return self.c(t).sum() + t.mean((2, 3)) * self.v
        if k == "cat_keyword":
            return self.c(torch.cat(tensors=[a, self.b(x)], dim=1))
        if k == "cat_negative":
            return self.c(torch.cat([a, self.b(x)], -3))
        if k == "chunk":
            return self.c(torch.cat(t.chunk(2, 1), 1) + torch.cat(torch.split(t, [3, 7], 1), 1))
        if k == "unpacked_chunk":
            p, q = t.chunk(2, 1)
            return self.c(torch.cat([q, p], 1))
        if k == "pool_indices":
            values, indices = self.pool(t)
            return values + indices.float()
        raise ValueError(k)


@pytest.mark.parametrize(
    "kind", ["module", "function", "method", "view", "input_changed", "lone_module"]
)
def test_in_place_activations_of_a_split_concat(kind):
    _check(_Ghost(kind))
    if kind == "lone_module":  # a lone in-place activation of the concat is still split
        assert _count(split_concats(_Ghost(kind).eval(), (3, 6, 6)), torch.cat) == 0


@pytest.mark.parametrize("kind", ["mean_neg", "mean_batch", "mean_3d_pool"])
def test_means_over_channels_or_batch_are_not_taken_per_part(kind):
    _check(_Ghost(kind))


@pytest.mark.parametrize("kind", ["mul_c11", "mul_1c", "mul_2d"])
def test_broadcast_operands_of_another_rank(kind):
    _check(_Ghost(kind), (3, 5, 10))


@pytest.mark.parametrize("kind", ["cat_keyword", "cat_negative", "chunk", "unpacked_chunk"])
def test_concat_forms_and_chunked_concats(kind):
    _check(_Ghost(kind))
    if kind in ("cat_keyword", "cat_negative"):  # still split: c is emitted per part
        assert _count(split_concats(_Ghost(kind).eval(), (3, 6, 6)), torch.cat) == 0


def test_max_pool_with_indices_of_a_split_concat():
    _check(_Ghost("pool_indices"))


def test_conv_is_not_emitted_again_after_its_input_changes_in_place():
    _check(_Ghost("moved_conv"))

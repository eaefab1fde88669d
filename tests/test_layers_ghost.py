import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ghostnet import GhostBottleneck, GhostConv2d, GhostModule, GhostnetError
from ghostnet.layers import SqueezeExcite, make_divisible

from .conftest import all_params_have_grad


def test_ghost_module_matches_definition():
    """Output = cat(primary(x), cheap(primary(x)))[:, :out], cheap op a depthwise conv."""
    m = GhostModule(8, 10, ratio=3, dw_size=3).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        intrinsic = m.primary_conv(x)
        ghosts = m.cheap_operation(intrinsic)
        expected = torch.cat([intrinsic, ghosts], 1)[:, :10]
        assert torch.equal(m(x), expected)
    assert intrinsic.shape[1] == math.ceil(10 / 3)
    cheap = m.cheap_operation[0]
    assert cheap.groups == cheap.in_channels == 4 and cheap.out_channels == 8


def test_ghost_module_state_dict_names():
    keys = set(GhostModule(4, 8).state_dict())
    assert "primary_conv.0.weight" in keys and "primary_conv.1.running_var" in keys
    assert "cheap_operation.0.weight" in keys and "cheap_operation.1.bias" in keys


def test_ratio_one_is_plain_conv_bn():
    m = GhostModule(4, 6, ratio=1)
    assert m.cheap_operation is None
    assert m(torch.randn(1, 4, 5, 5)).shape == (1, 6, 5, 5)
    assert not any(k.startswith("cheap_operation") for k in m.state_dict())


def test_relu_flag():
    m = GhostModule(4, 8, relu=False).eval()
    m.primary_conv[1].bias.data.fill_(-5.0)
    assert (m(torch.randn(1, 4, 5, 5)) < 0).any()
    r = GhostModule(4, 8, relu=True).eval()
    assert (r(torch.randn(1, 4, 5, 5)) >= 0).all()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"ratio": 0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"dw_size": 2}, "dw_size"),
        ({"dw_size": 0}, "dw_size"),
        ({"dw_size": -3}, "dw_size"),
        ({"out_chs": 0}, "out channels"),
        ({"in_chs": 0}, "in channels"),
    ],
)
def test_invalid_module_arguments(kwargs, fragment):
    args = {"in_chs": 4, "out_chs": 8, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        GhostModule(**args)


@settings(max_examples=40, deadline=None)
@given(
    out_chs=st.integers(1, 13),
    ratio=st.integers(1, 5),
    dw_size=st.sampled_from([1, 3, 5, 7]),
    stride=st.sampled_from([1, 2]),
    kernel=st.sampled_from([1, 3]),
    size=st.integers(3, 9),
)
def test_ghost_module_shapes_and_gradients(out_chs, ratio, dw_size, stride, kernel, size):
    m = GhostModule(3, out_chs, kernel, ratio, dw_size, stride)
    x = torch.randn(2, 3, size, size)
    y = m(x)
    ref = nn.Conv2d(3, out_chs, kernel, stride, kernel // 2)(x)
    assert y.shape == ref.shape
    y.square().mean().backward()
    assert all_params_have_grad(m) == []


@settings(max_examples=60, deadline=None)
@given(
    in_ch=st.integers(1, 6),
    out_ch=st.integers(1, 13),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    ratio=st.integers(1, 5),
    dw_size=st.sampled_from([1, 3, 5]),
    bias=st.booleans(),
    height=st.integers(7, 12),
    width=st.integers(7, 12),
)
def test_ghost_conv2d_same_shape_as_conv2d(
    in_ch, out_ch, kernel, stride, padding, dilation, ratio, dw_size, bias, height, width
):
    args = (in_ch, out_ch, kernel, stride, padding, dilation)
    conv = nn.Conv2d(*args, bias=bias)
    ghost = GhostConv2d(*args, bias=bias, ratio=ratio, dw_size=dw_size)
    x = torch.randn(2, in_ch, height, width)
    y = ghost(x)
    assert y.shape == conv(x).shape
    y.square().mean().backward()
    # every registered parameter is used: all get a non-zero gradient somewhere
    for name, p in ghost.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ghost_conv2d_string_padding(padding):
    conv = nn.Conv2d(3, 7, 3, padding=padding)
    ghost = GhostConv2d(3, 7, 3, padding=padding)
    x = torch.randn(1, 3, 8, 8)
    assert ghost(x).shape == conv(x).shape


def test_ghost_conv2d_exact_ghost_count_and_sources():
    g = GhostConv2d(4, 8, 3, padding=1, ratio=3)  # m = 3 intrinsic, 5 ghosts
    assert g.primary_conv.out_channels == 3
    assert g.cheap_operation.out_channels == 5 and g.cheap_operation.groups == 5
    assert g.ghost_sources.tolist() == [0, 0, 1, 1, 2]
    g.eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        intrinsic = g.primary_conv(x)
        expected = torch.cat([intrinsic, g.cheap_operation(intrinsic[:, [0, 0, 1, 1, 2]])], 1)
        assert torch.equal(g(x), expected)


def test_ghost_conv2d_defaults_are_conv2d_defaults():
    """Same constructor defaults as nn.Conv2d (bias included), so it drops in unchanged."""
    import inspect

    conv, ghost = inspect.signature(nn.Conv2d), inspect.signature(GhostConv2d)
    for name, param in conv.parameters.items():
        if name in ("device", "dtype"):
            continue
        assert ghost.parameters[name].default == param.default, name
    g = GhostConv2d(4, 8, 3)
    assert g.primary_conv.bias is not None and g.cheap_operation.bias is not None
    assert GhostConv2d(4, 8, 3, bias=False).primary_conv.bias is None


def test_ghost_conv2d_rejects_groups():
    with pytest.raises(GhostnetError, match="groups"):
        GhostConv2d(4, 4, 3, groups=4)


def test_ghost_conv2d_inner_bn():
    g = GhostConv2d(4, 8, 3, padding=1, inner_bn=True)
    assert isinstance(g.inner_bn, nn.BatchNorm2d)
    g(torch.randn(2, 4, 5, 5)).sum().backward()
    assert g.inner_bn.weight.grad is not None


@pytest.mark.parametrize("stride, in_chs, out_chs", [(1, 16, 16), (2, 16, 24), (1, 16, 24)])
@pytest.mark.parametrize("se", [0.0, 0.25])
def test_bottleneck_shapes_and_shortcut(stride, in_chs, out_chs, se):
    b = GhostBottleneck(in_chs, 32, out_chs, 3, stride, se_ratio=se)
    x = torch.randn(2, in_chs, 8, 8)
    y = b(x)
    assert y.shape == (2, out_chs, 8 // stride, 8 // stride)
    identity = in_chs == out_chs and stride == 1
    assert isinstance(b.shortcut, nn.Identity) == identity
    assert (b.conv_dw is not None) == (stride == 2)
    assert (b.se is not None) == (se > 0)
    y.sum().backward()
    assert all_params_have_grad(b) == []


def test_se_reduced_width_and_gate():
    se = SqueezeExcite(72)
    assert se.conv_reduce.out_channels == make_divisible(72 * 0.25, 4) == 20
    x = torch.randn(1, 72, 4, 4)
    gate = (se(x) / x)[0, :, 0, 0]
    assert ((gate >= 0) & (gate <= 1)).all()


@pytest.mark.parametrize("value, expected", [(18, 20), (16 * 0.5, 8), (960 * 1.3, 1248), (2, 4)])
def test_make_divisible(value, expected):
    assert make_divisible(value, 4) == expected


def test_inherited_layout_matches_definition_and_round_trips():
    """cat(intrinsic, cheap(intrinsic[sources]))[:, order], with persistent layout buffers."""
    layer = GhostConv2d(4, 7, 3, padding=1, ratio=3, bias=False, inherited=True).eval()
    sources, order = torch.tensor([2, 2, 0, 1]), torch.tensor([3, 0, 6, 1, 4, 2, 5])
    layer.set_layout(sources, order)
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        intrinsic = layer.primary_conv(x)
        ghosts = layer.cheap_operation(intrinsic[:, sources])
        expected = torch.cat([intrinsic, ghosts], 1)[:, order]
        assert torch.equal(layer(x), expected)
    keys = set(layer.state_dict())
    assert {"ghost_sources", "output_order", "cheap_operation.bias"} <= keys
    plain = GhostConv2d(4, 7, 3, padding=1, ratio=3, bias=False)
    assert set(plain.state_dict()) == {"primary_conv.weight", "cheap_operation.weight"}
    assert plain.output_order is None
    fresh = GhostConv2d(4, 7, 3, padding=1, ratio=3, bias=False, inherited=True)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.eval()(x), layer(x))


def test_inherited_layout_is_checked():
    layer = GhostConv2d(4, 6, 1, inherited=True)
    with pytest.raises(GhostnetError, match="permutation"):
        layer.set_layout(torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1, 2, 3, 4]))
    with pytest.raises(GhostnetError, match="indices in"):
        layer.set_layout(torch.tensor([0, 1, 3]), torch.arange(6))
    with pytest.raises(GhostnetError, match="inherited=True"):
        GhostConv2d(4, 6, 1).set_layout(torch.zeros(3), torch.arange(6))
    with pytest.raises(GhostnetError, match="inner_bn=False"):
        GhostConv2d(4, 6, 1, inner_bn=True, inherited=True)

"""ghostnet.kernels: the one-pass Ghost cheap op + concat kernel, its graph rewrite and the
``-kernel`` bench backends. The kernel is built with the machine's compiler on first use."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ghostnet.bench import _parse_backend, build_runner
from ghostnet.convert import ghostify
from ghostnet.deploy import fuse
from ghostnet.errors import GhostnetError
from ghostnet.kernels import CheapCat, GhostConvKernel, cheap_cat, fuse_cheap_ops, load_extension
from ghostnet.kernels.fused_cheap import _cheap_cat_op
from ghostnet.layers.ghost import GhostModule
from ghostnet.models import create_model


def _reference(a, weight, bias, relu):
    g = weight.shape[0]
    out = F.conv2d(a[:, :g], weight, bias, padding=weight.shape[-1] // 2, groups=g)
    return torch.cat([a, F.relu(out) if relu else out], 1)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("ghosts", [6, 4])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_kernel_equals_depthwise_conv_and_concat(k, ghosts, relu, channels_last):
    torch.manual_seed(0)
    a = torch.randn(2, 6, 5, 7)  # odd, unequal sides: every border case
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(ghosts, 1, k, k), torch.randn(ghosts)
    out = cheap_cat(a, weight, bias, relu)
    assert out.shape == (2, 6 + ghosts, 5, 7)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, _reference(a, weight, bias, relu), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ghosts", [32, 16])
def test_kernel_vector_path_equals_depthwise_conv_and_concat(ghosts):
    """Multiples of 16 channels take the AVX-512 path (streaming stores) where the CPU has it."""
    torch.manual_seed(1)
    a = torch.randn(3, 32, 7, 9).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(ghosts, 1, 3, 3), torch.randn(ghosts)
    for relu in (True, False):
        out = cheap_cat(a, weight, bias, relu)
        expected = _reference(a, weight, bias, relu)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels", [6, 32])  # scalar and vector paths
def test_kernel_with_an_affine_first_half(channels):
    """scale * a + shift for the intrinsic half, the ghosts from the raw a (FusedGhostConv2d)."""
    torch.manual_seed(2)
    a = torch.randn(2, channels, 5, 6)
    weight, bias = torch.randn(channels, 1, 3, 3), torch.randn(channels)
    scale, shift = torch.randn(channels), torch.randn(channels)
    out = cheap_cat(a, weight, bias, False, scale, shift)
    expected = _reference(a, weight, bias, False)
    expected[:, :channels] = a * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(GhostnetError, match="both scale and shift"):
        cheap_cat(a, weight, bias, False, scale)


@pytest.mark.parametrize("channels", [6, 32])  # scalar and vector (AVX512-BF16) paths
@pytest.mark.parametrize("affine", [False, True])
def test_kernel_in_bfloat16(channels, affine):
    """bf16 maps in and out, float32 filters and accumulation: within bf16's rounding of
    the float32 result computed from the same bf16 inputs."""
    torch.manual_seed(3)
    a = torch.randn(2, channels, 5, 6).bfloat16().contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(channels, 1, 3, 3), torch.randn(channels)
    scale, shift = (torch.randn(channels), torch.randn(channels)) if affine else (None, None)
    out = cheap_cat(a, weight, bias, True, scale, shift)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 2 * channels, 5, 6)
    expected = _reference(a.float(), weight, bias, True)
    if affine:
        expected[:, :channels] = a.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    else:  # the copy is exact
        assert torch.equal(out[:, :channels], a)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [False, True])
def test_portable_loops_equal_the_vector_paths(dtype, affine):
    """The plain C++ loops (CPUs without AVX-512) against the vector code on 24 channels
    (one whole block, one masked) and 32 (streaming stores)."""
    torch.manual_seed(4)
    extension = load_extension()
    for channels in (24, 32):
        a = torch.randn(2, channels, 5, 6).to(dtype)
        weight, bias = torch.randn(channels, 1, 3, 3), torch.randn(channels)
        none = torch.empty(0)
        scale, shift = (torch.randn(channels), torch.randn(channels)) if affine else (none, none)
        fast = extension.cheap_cat(a, weight, bias, scale, shift, True)
        portable = extension.cheap_cat_portable(a, weight, bias, scale, shift, True)
        expected = _reference(a.float(), weight, bias, True)
        if affine:
            expected[:, :channels] = a.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        tolerance = {"atol": 2e-2, "rtol": 1e-2} if dtype == torch.bfloat16 else {}
        for out in (fast, portable):
            torch.testing.assert_close(out.float(), expected, **tolerance)


def test_custom_op_registration_is_consistent():
    """Real and fake (torch.compile) implementations agree on shapes, strides and dtype."""
    a = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    w, b, none = torch.randn(3, 1, 3, 3), torch.randn(3), torch.empty(0)
    torch.library.opcheck(_cheap_cat_op, (a, w, b, none, none, True))
    torch.library.opcheck(_cheap_cat_op, (a, w, b, torch.randn(4), torch.randn(4), False))


def test_kernel_refuses_bad_shapes_in_one_line():
    with pytest.raises(RuntimeError, match="ghosts <= intrinsic"):
        cheap_cat(torch.randn(1, 2, 4, 4), torch.randn(3, 1, 3, 3), torch.randn(3), True)
    with pytest.raises(RuntimeError, match="k odd"):
        cheap_cat(torch.randn(1, 4, 4, 4), torch.randn(4, 1, 2, 2), torch.randn(4), True)


def _cat_count(gm):
    return sum(n.op == "call_function" and n.target is torch.cat for n in gm.graph.nodes)


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnet_130"])
def test_fuse_cheap_ops_on_ghostnet_is_the_same_function(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    fused = fuse(model)
    rewritten = fuse_cheap_ops(fused)
    assert sum(isinstance(m, CheapCat) for m in rewritten.modules()) == 32  # 16 blocks x 2
    assert _cat_count(rewritten) == 0 and _cat_count(fused) == 32  # the input is not changed
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(rewritten(x), expected, atol=1e-4, rtol=1e-4)
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(
            rewritten.to(memory_format=torch.channels_last)(cl), expected, atol=1e-4, rtol=1e-4
        )


def test_fuse_cheap_ops_on_ghostified_convs_is_the_same_function():
    """ghost_resnet50 (every conv but the stem a GhostConv2d, its BN folded into an affine
    intrinsic half) and a ghostified torchvision ResNet-18 with odd widths."""
    torch.manual_seed(0)
    for model, size in (
        (create_model("ghost_resnet50"), 64),
        (ghostify(torchvision.models.resnet18(num_classes=7), ratio=2, dw_size=3), 48),
    ):
        model.eval()
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)  # folded BNs that are not the identity
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
        fused = fuse(model)
        rewritten = fuse_cheap_ops(fused)
        kernels = [m for m in rewritten.modules() if isinstance(m, GhostConvKernel)]
        assert kernels and all(k.cheap_cat.scale is not None for k in kernels)
        x = torch.randn(2, 3, size, size)
        with torch.inference_mode():
            expected = model(x)
            got = rewritten(x)
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.body(x) if x.sum() > 0 else self.body(-x)  # data-dependent: no FX


def test_untraceable_model_gets_the_kernel_in_its_ghostified_convs():
    model = ghostify(_Untraceable(), ratio=2, dw_size=3).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
    rewritten = fuse_cheap_ops(model)
    assert sum(isinstance(m, GhostConvKernel) for m in rewritten.modules()) == 1  # not the stem
    x = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        for sign in (1, -1):
            torch.testing.assert_close(rewritten(sign * x), model(sign * x), atol=1e-5, rtol=1e-5)


def test_sliced_ghost_module_keeps_only_the_ghosts_it_needs():
    module = GhostModule(8, 13, kernel_size=1, ratio=2).eval()  # m = 7, 6 of 7 ghosts kept
    rewritten = fuse_cheap_ops(module)
    (cheap,) = [m for m in rewritten.modules() if isinstance(m, CheapCat)]
    assert cheap.weight.shape == (6, 1, 3, 3)
    x = torch.randn(2, 8, 9, 9)
    with torch.inference_mode():
        torch.testing.assert_close(rewritten(x), module(x), atol=1e-5, rtol=1e-5)


class _NotGhost(nn.Module):
    """Concats the kernel must not take: stride-2 or dilated depthwise convs, a dense conv,
    another tensor than the conv's input, a cheap op read elsewhere too, intrinsic maps
    changed in place after the concat."""

    def __init__(self):
        super().__init__()
        self.strided = nn.Conv2d(4, 4, 3, 2, 1, groups=4)
        self.dilated = nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=4)
        self.dense = nn.Conv2d(4, 4, 3, 1, 1)
        self.dw = nn.Conv2d(4, 4, 3, 1, 1, groups=4)
        self.dw2 = nn.Conv2d(4, 4, 3, 1, 1, groups=4)

    def forward(self, x):
        s = torch.cat([x[:, :, ::2, ::2], self.strided(x)], 1)
        d = torch.cat([x, self.dilated(x)], 1)
        e = torch.cat([x, torch.relu(self.dense(x))], 1)
        y = x * 2
        f = torch.cat([y, self.dw(x)], 1)  # the conv reads x, the cat keeps y
        g = self.dw(y)
        h = torch.cat([y, g], 1) + g.sum()  # g is read elsewhere too
        z = x * 3
        i = torch.cat([z, self.dw2(z)], 1)
        z.relu_()  # the cat holds z's old values, a kernel reading z later would not
        return s.sum() + d + e + f + h + i + z.sum()


def test_fuse_cheap_ops_leaves_other_concats_alone():
    net = _NotGhost().eval()
    rewritten = fuse_cheap_ops(torch.fx.symbolic_trace(net))
    assert not any(isinstance(m, CheapCat) for m in rewritten.modules())
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(rewritten(x), net(x))


def test_cheap_cat_module_falls_back_off_the_kernels_ground():
    """float64 input, or a gradient needed (the kernel has no backward): standard ops."""
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    module = CheapCat(conv, 4, relu=True)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    out = module(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    expected = _reference(x.detach(), conv.weight.detach(), conv.bias.detach(), True)
    torch.testing.assert_close(out.detach(), expected)
    with torch.inference_mode():
        double = module(x.detach().double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), expected, atol=1e-5, rtol=1e-5)


def test_compiled_graph_calls_the_kernel():
    """torch.compile sees ghostnet::cheap_cat as one opaque op (fake kernel for shapes)."""
    module = fuse_cheap_ops(GhostModule(8, 8, kernel_size=1, ratio=2).eval())
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 8, 6, 6)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), module(x))


def test_kernel_backends_are_parsed_and_run(tmp_path):
    assert _parse_backend("fused-kernel") == ("fused", "kernel", "fp32")
    assert _parse_backend("compile-kernel") == ("compile", "kernel", "fp32")
    assert _parse_backend("fused-kernel-bf16") == ("fused", "kernel", "bf16")
    for bad in ("onnxruntime-kernel", "eager-kernel", "fused-kernel-int8", "openvino-kernel"):
        with pytest.raises(GhostnetError, match="unknown backend"):
            _parse_backend(bad)
    module = GhostModule(16, 16, kernel_size=1, ratio=2).eval()
    run = build_runner(module, "fused-kernel", (16, 8, 8), 2, 1, tmp_path)
    x = torch.randn(2, 16, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(run(x), module(x), atol=1e-5, rtol=1e-5)


def test_a_failed_build_is_one_line(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'x'\ng++: not found\nmore lines")

    load_extension()  # the real one is built: clear the cache around the failure
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    load_extension.cache_clear()
    try:
        with pytest.raises(GhostnetError) as info:
            fuse_cheap_ops(GhostModule(4, 4).eval())
        message = str(info.value)
        assert "\n" not in message and "C++ compiler" in message and "-kernel" in message
    finally:
        monkeypatch.undo()
        load_extension.cache_clear()
    assert load_extension() is not None  # built again (from the cache)

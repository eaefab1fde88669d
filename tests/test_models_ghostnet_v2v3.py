"""GhostNetV2 / V3: timm-equal logits and counts, odd input sizes, tools on every new model.

fuse, ONNX export (checked in ONNX Runtime) and split run on every registered model,
these included, in tests/test_deploy.py and tests/test_split.py.
"""

import copy

import pytest
import torch
from torch import nn

import ghostnet
from ghostnet import GhostnetError
from ghostnet.deploy import count_batchnorm, fuse
from ghostnet.layers import DFCGhostConv2d, GhostBottleneckV3, GhostModuleV2, GhostModuleV3

timm = pytest.importorskip("timm")

V2 = ["ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160"]
V3 = ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"]
ODD_SIZES = [(97, 131), (64, 64), (32, 32)]


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def _calibrate(model: nn.Module, size=(64, 64)) -> nn.Module:
    """Non-trivial BN affine parameters and statistics measured on random images (so deep
    random nets keep sane activations and the comparisons mean something), then eval."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, *size, generator=g))
        # a classifier at the usual init gives logits of ~0.1: scale it so that 1e-5 is tight
        model.classifier.weight.mul_(30)
    return model.eval()


@pytest.mark.parametrize("name", V2 + V3)
def test_timm_state_dict_loads_strict_and_logits_match(name):
    torch.manual_seed(0)
    reference = _calibrate(timm.create_model(name))
    ours = ghostnet.create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    for size in [(224, 224), (256, 192)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected, got = reference(x), ours(x)
        assert expected.abs().max() > 1.0  # logits of a useful scale
        assert (got - expected).abs().max().item() <= 1e-5, size
    if name in V3:  # the folded form loads timm's folded weights too, same logits
        reference.convert_to_deploy()
        deploy = ghostnet.create_model(name, deploy=True).eval()
        deploy.load_state_dict(reference.state_dict(), strict=True)
        with torch.no_grad():
            assert (deploy(x) - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", V2 + V3)
def test_params_and_macs_match_timm(name):
    size = (3, 224, 224)
    forms = [({}, {})] if name in V2 else [({}, {}), ({"deploy": True}, {})]
    for kwargs, _ in forms:
        ours = ghostnet.create_model(name, **kwargs)
        reference = timm.create_model(name).eval()
        if kwargs.get("deploy"):
            reference.convert_to_deploy()
        a, b = ghostnet.profile(ours, size), ghostnet.profile(reference, size)
        assert abs(a.params - b.params) <= 0.01 * b.params
        assert abs(a.macs - b.macs) <= 0.01 * b.macs


def test_structure_follows_the_table():
    v2 = ghostnet.create_model("ghostnetv2_100")
    blocks = [b for stage in v2.blocks[:-1] for b in stage]
    assert len(blocks) == len(ghostnet.GHOSTNET_TABLE) == 16
    # DFC on ghost1 from table index 2 on, as official and timm; ghost2 stays plain
    assert [isinstance(b.ghost1, GhostModuleV2) for b in blocks] == [False] * 2 + [True] * 14
    assert not any(isinstance(b.ghost2, GhostModuleV2) for b in blocks)
    v3 = ghostnet.create_model("ghostnetv3_100")
    v3_blocks = [b for stage in v3.blocks[:-1] for b in stage]
    assert all(isinstance(b, GhostBottleneckV3) for b in v3_blocks)
    assert [b.ghost1.short_conv is not None for b in v3_blocks] == [False] * 2 + [True] * 14
    # V1 is untouched by the pluggable block: same keys as timm's ghostnet_100
    v1 = ghostnet.create_model("ghostnet_100")
    assert list(v1.state_dict()) == list(timm.create_model("ghostnet_100").state_dict())
    # any width, like V1
    assert ghostnet.create_model("ghostnetv2", width=0.75).width == 0.75


@pytest.mark.parametrize("name", V3)
def test_reparameterize_equals_training_form(name):
    torch.manual_seed(0)
    model = _calibrate(ghostnet.create_model(name))
    deploy = ghostnet.reparameterize(model)
    assert deploy is not model and not any(
        isinstance(m, GhostModuleV3) and not m.deployed for m in deploy.modules()
    )
    # no training branch left; DFC and SE kept; keys are those of deploy=True
    assert not any("_rpr_" in k for k in deploy.state_dict())
    # (the same keys; their order differs, which load_state_dict does not care about)
    assert sorted(deploy.state_dict()) == sorted(
        ghostnet.create_model(name, deploy=True).state_dict()
    )
    # The folding is checked in float64, where it is exact up to rounding (~1e-14): in
    # float32 a random-init deep net amplifies the reassociation rounding of the folded
    # convs to ~1e-4 of the logits (seen on ghostnetv3_160), which says nothing about
    # the folding. The float32 deploy form must still run and agree loosely.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), deploy(x)
        assert _relative_error(got, expected) <= 1e-2
        model64 = copy.deepcopy(model).double()
        expected64 = model64(x.double())
        got64 = ghostnet.reparameterize(model64)(x.double())
    assert got64.dtype == torch.float64
    assert _relative_error(got64, expected64) <= 1e-10
    # the deploy form costs what the folded convs cost: fewer params and MACs
    a, b = ghostnet.profile(model, (3, 64, 64)), ghostnet.profile(deploy, (3, 64, 64))
    assert b.params < a.params and b.macs < a.macs


def test_reparameterize_with_nothing_to_fold_says_so(caplog):
    model = ghostnet.create_model("ghostnetv2_100")
    with caplog.at_level("INFO", logger="ghostnet"):
        assert ghostnet.reparameterize(model) is model
    assert "no multi-branch" in caplog.text
    deployed = ghostnet.create_model("ghostnetv3_050", deploy=True)
    assert ghostnet.reparameterize(deployed) is deployed


@pytest.mark.parametrize("name", ["ghostnetv2_100", "ghostnetv3_100"])
def test_odd_non_square_and_tiny_inputs(name):
    """Every size runs through the model and its deploy form with the same result. The
    equality is checked in float64: BN statistics measured at 64x64 let a random-init net
    reach ~1e4 activations at 97x131, where float32 rounding alone differs by ~1e-2
    relative between two exact rewrites of the same function."""
    torch.manual_seed(0)
    model = _calibrate(ghostnet.create_model(name))
    folded = fuse(model)  # V3: re-parameterized, then BN folded (DFC's BNs included)
    assert count_batchnorm(folded) == 0
    model64 = copy.deepcopy(model).double()
    folded64 = fuse(model64)
    for h, w in ODD_SIZES:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            out, out_folded = model(x), folded(x)
            assert out.shape == out_folded.shape == (1, 1000)
            assert torch.isfinite(out).all() and torch.isfinite(out_folded).all()
            expected64, got64 = model64(x.double()), folded64(x.double())
        assert got64.dtype == torch.float64
        assert _relative_error(got64, expected64) <= 1e-10, (h, w)
    # timm's V2/V3 cannot pool the 1x1 maps a 32x32 image reaches
    with pytest.raises(RuntimeError, match="too small"):
        timm.create_model(name).eval()(torch.randn(1, 3, 32, 32))


def test_dfc_gate_is_exact_size_for_every_shape():
    module = GhostModuleV2(8, 16).eval()
    for h, w in [(1, 1), (1, 7), (5, 2), (7, 7), (13, 6)]:
        assert module(torch.randn(1, 8, h, w)).shape == (1, 16, h, w)


@pytest.mark.parametrize("name", V2 + V3)
def test_profile_ghostify_and_analyze_on_every_new_model(name):
    from ghostnet.analysis.report import analyze_model

    size = (3, 64, 64)
    model = ghostnet.create_model(name).eval()
    counts = ghostnet.profile(model, size)
    assert counts.params == sum(p.numel() for p in model.parameters()) and counts.macs > 0
    converted, report = ghostnet.ghostify_report(model, input_size=size)
    assert report.converted and report.params_after < report.params_before
    with torch.no_grad():
        assert converted.eval()(torch.randn(1, *size)).shape == (1, 1000)
    images = torch.randn(4, *size)
    analysis, _ = analyze_model(model, images, ["conv_stem", "blocks.3.0.ghost1"])
    assert [layer["name"] for layer in analysis["layers"]] == ["conv_stem", "blocks.3.0.ghost1"]


# One width per family: the harness is the same code at every width, and the ONNX export of
# every width is already checked by tests/test_deploy.py's every-model sweep.
BENCHED = ["ghostnetv2_100", "ghostnetv3_050"]


@pytest.mark.slow
def test_bench_on_the_new_families():
    pytest.importorskip("onnxruntime")
    from ghostnet.bench import run_benchmark

    # run_benchmark checks each backend's outputs against eager before timing
    records = run_benchmark(
        BENCHED,
        batch_sizes=(1,),
        backends=("eager", "onnxruntime"),
        repeats=1,
        warmup=1,
        input_size=(3, 64, 64),
    )
    assert {(r.model, r.backend) for r in records} == {
        (n, b) for n in BENCHED for b in ("eager", "onnxruntime")
    }
    assert all(r.median_ms > 0 for r in records)
    # V3 is timed (and counted) in its deploy form on every backend, eager included
    for name in (n for n in BENCHED if n in V3):
        deploy_macs = ghostnet.profile(ghostnet.create_model(name, deploy=True), (3, 64, 64)).macs
        assert {r.macs for r in records if r.model == name} == {deploy_macs}


def test_ghostify_dfc_attention_round_trips_through_model_spec():
    spec = ghostnet.ModelSpec("resnet20_cifar", {}, {"ratio": 2, "attention": "dfc"})
    model = spec.build().eval()
    gated = [m for m in model.modules() if isinstance(m, DFCGhostConv2d)]
    assert len(gated) == 18  # every converted conv (the stem stays)
    rebuilt = ghostnet.ModelSpec.from_dict(spec.to_dict()).build().eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 37, 29)  # odd sizes: the gate is upsampled to each exact size
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(rebuilt(x), expected)
        assert torch.allclose(fuse(model)(x), expected, atol=1e-5)
    with pytest.raises(GhostnetError, match="attention"):
        ghostnet.ghostify(model, attention="se")

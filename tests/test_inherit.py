"""ghostify(init="inherit"): Ghost layers that inherit a trained conv's weights."""

import math

import pytest
import torch
from torch import nn

from ghostnet import GhostConv2d, GhostnetError, ghostify
from ghostnet.analysis.redundancy import choose_intrinsic
from ghostnet.inherit import MIN_CALIBRATION_IMAGES, inherit_weights
from ghostnet.models import ModelSpec


def planted_conv(
    in_ch: int, out_ch: int, ratio: int, generator: torch.Generator, bias: bool = False
) -> tuple[nn.Conv2d, list[int]]:
    """A 3x3 conv whose maps are m = ceil(n/s) intrinsic maps (centre-tap filters, so zero
    padding of their output is exact) and n - m *exact* 3x3 depthwise filters of them,
    at random channel positions. Returns the conv and its intrinsic channels."""
    m = math.ceil(out_ch / ratio)
    perm = torch.randperm(out_ch, generator=generator)
    intrinsic, ghosts = perm[:m].tolist(), perm[m:].tolist()
    weight = torch.zeros(out_ch, in_ch, 3, 3)
    weight[intrinsic, :, 1, 1] = torch.randn(m, in_ch, generator=generator) / math.sqrt(in_ch)
    for g in ghosts:
        source = intrinsic[int(torch.randint(m, (1,), generator=generator))]
        k = torch.randn(3, 3, generator=generator) / 2
        # y_g = k * y_source exactly: W_g[c] = k * W_source[c] (y_source has a 1x1 support)
        weight[g] = k.view(1, 3, 3) * weight[source, :, 1, 1].view(in_ch, 1, 1)
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias:  # a ghost's bias is free; an intrinsic bias would break exactness at borders
            conv.bias.zero_()
            conv.bias[ghosts] = torch.randn(len(ghosts), generator=generator)
    return conv, sorted(intrinsic)


def _bn(channels: int, generator: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():  # trained-looking statistics, so a wrong channel order shows
        bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return bn


class PlantedNet(nn.Module):
    """stem -> c1 (12 maps, s=3 planted) -> c2 (16 maps, s=2 planted, bias) -> c3 (no
    ghosts planted, kept) -> pool -> fc; the residual add after c2 keeps its output order
    from being folded into the next layer."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the layers' default init (stem, skip, c3, fc)
            self._build(g)

    def _build(self, g: torch.Generator) -> None:
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = _bn(8, g)
        self.c1, self.intrinsic1 = planted_conv(8, 12, 3, g)
        self.bn1 = _bn(12, g)
        self.c2, self.intrinsic2 = planted_conv(12, 16, 2, g, bias=True)
        self.bn2 = _bn(16, g)
        self.skip = nn.Conv2d(12, 16, 1, bias=False)
        self.c3 = nn.Conv2d(16, 10, 3, padding=1, bias=False)
        self.bn3 = _bn(10, g)
        self.fc = nn.Linear(10, 5)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.stem(x)))
        x = self.relu(self.bn1(self.c1(x)))
        x = self.relu(self.bn2(self.c2(x)) + self.skip(x))
        x = self.relu(self.bn3(self.c3(x)))
        return self.fc(x.mean(dim=(2, 3)))


PLANTED_RATIOS = {"c1": 3, "c2": 2}


def planted_model() -> PlantedNet:
    return PlantedNet().eval()


def calibration(count: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fit_on", ["converted", "original"])
def test_inherit_reproduces_planted_ghosts(fit_on):
    model = planted_model()
    ghost = ghostify(
        model, PLANTED_RATIOS, 3, init="inherit", calibration=calibration(), fit_on=fit_on
    ).eval()
    for name, intrinsic in (("c1", model.intrinsic1), ("c2", model.intrinsic2)):
        layer = ghost.get_submodule(name)
        assert isinstance(layer, GhostConv2d) and layer.inherited
        # exactly m = ceil(n/s) trained filters kept: the planted intrinsic ones
        kept = torch.argsort(layer.output_order)[: layer.primary_conv.out_channels]
        assert sorted(kept.tolist()) == intrinsic
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        expected, got = model(x), ghost(x)
        for name in ("c1", "c2"):  # each layer alone, on the same input
            conv, layer = model.get_submodule(name), ghost.get_submodule(name)
            inp = torch.randn(2, conv.in_channels, 7, 9)
            assert (conv(inp) - layer(inp)).abs().max() < 1e-4
    assert (expected - got).abs().max() < 1e-4
    assert type(ghost.c3) is nn.Conv2d  # not in the ratio mapping: kept


def test_inherit_inplace_and_original_untouched():
    model = planted_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ghostify(model, PLANTED_RATIOS, 3, init="inherit", calibration=calibration())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 12, 12)
    reference = planted_model()(x)
    ghostify(model, PLANTED_RATIOS, 3, init="inherit", calibration=calibration(), inplace=True)
    assert isinstance(model.c1, GhostConv2d)
    assert (model.eval()(x) - reference).abs().max() < 1e-4


def test_calibration_from_a_dataloader():
    images = calibration(40)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, torch.zeros(40)), batch_size=16
    )
    a = ghostify(planted_model(), PLANTED_RATIOS, 3, init="inherit", calibration=loader)
    b = ghostify(planted_model(), PLANTED_RATIOS, 3, init="inherit", calibration=images)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.allclose(va.float(), vb.float(), atol=1e-6)


@pytest.mark.slow  # > 20 s while the machine is loaded; ~1-10 s when quiet
def test_rebuilt_from_plain_data():
    """The spec's ghostify options rebuild the layout; load_state_dict fills the buffers."""
    torch.manual_seed(0)
    options = {"ratio": 2, "dw_size": 3, "inherited": True}
    spec = ModelSpec("resnet20_cifar", {"num_classes": 10}, options)
    original = ModelSpec("resnet20_cifar", {"num_classes": 10}).build().eval()
    inherited = ghostify(original, 2, 3, init="inherit", calibration=torch.randn(16, 3, 16, 16))
    rebuilt = ModelSpec.from_dict(spec.to_dict()).build()
    rebuilt.load_state_dict(inherited.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), inherited.eval()(x))
    layer = inherited.layer1[0].conv1
    assert not torch.equal(layer.output_order, torch.arange(16))  # a real permutation


def test_too_few_calibration_images_is_one_line():
    with pytest.raises(GhostnetError, match=f"at least {MIN_CALIBRATION_IMAGES}") as info:
        ghostify(planted_model(), 2, init="inherit", calibration=calibration(3))
    assert "\n" not in str(info.value)
    with pytest.raises(GhostnetError, match="needs calibration images"):
        ghostify(planted_model(), 2, init="inherit")
    with pytest.raises(GhostnetError, match="4-D"):
        ghostify(planted_model(), 2, init="inherit", calibration=torch.randn(20, 12, 12))


def test_nothing_to_convert_is_one_line():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(GhostnetError, match="nothing to convert") as info:
        ghostify(model, 2, init="inherit", calibration=torch.randn(16, 3, 8, 8))
    assert "\n" not in str(info.value)


def test_bad_init_and_stray_calibration():
    with pytest.raises(GhostnetError, match="init"):
        ghostify(planted_model(), 2, init="copy")
    with pytest.raises(GhostnetError, match="only used with"):
        ghostify(planted_model(), 2, calibration=calibration())
    with pytest.raises(GhostnetError, match="fit_on"):
        inherit_weights(planted_model(), planted_model(), ["c1"], calibration(), fit_on="x")


def test_choose_intrinsic_finds_the_exact_cover():
    # maps 0 and 3 explain everything; greedy alone would start from map 1 (most partial fits)
    error = torch.tensor(
        [
            [0.0, 0.0, 0.0, 1.0, 1.0],
            [0.3, 0.0, 0.3, 0.3, 0.3],
            [1.0, 1.0, 0.0, 1.0, 1.0],
            [1.0, 1.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 0.0],
        ]
    )
    error.fill_diagonal_(float("inf"))
    assert choose_intrinsic(error, 2) == [0, 3]
    assert choose_intrinsic(error, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(GhostnetError, match="between 1 and 5"):
        choose_intrinsic(error, 0)


def test_analysis_of_an_inherited_layer_follows_its_output_order():
    """`ghostnet analyze` on an inherited model: each ghost map is found exactly where the
    output order put it, as a near-perfect fit of its designated source."""
    from ghostnet.analysis import analyze_model

    ghost = ghostify(planted_model(), PLANTED_RATIOS, 3, init="inherit", calibration=calibration())
    report, _ = analyze_model(ghost, calibration(24, seed=5), ["c1", "c2"])
    for layer in report["layers"]:
        ratio = PLANTED_RATIOS[layer["name"]]
        ghosts = layer["channels"] - math.ceil(layer["channels"] / ratio)
        assert layer["ghost_layer"]["ghost_maps"] == ghosts
        assert layer["ghost_layer"]["designated_error_median"] < 1e-3


def test_refine_keeps_exact_planted_ghosts():
    """Refinement starts from exact fits: it may not make them worse (it keeps the better)."""
    model = planted_model()
    converted = ghostify(model, PLANTED_RATIOS, 3, inherited=True)
    fits = inherit_weights(model, converted, ["c1", "c2"], calibration(), refine_steps=20)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert (model(x) - converted.eval()(x)).abs().max() < 1e-4
    for fit in fits:
        assert fit.output_error_before < 1e-8 and fit.output_error_after <= fit.output_error_before


def test_refine_lowers_the_output_error_of_a_conv_without_ghosts():
    """A random conv has no exact ghosts: the least-squares start leaves an error that the
    joint refinement of primary and cheap filters must lower, on the calibration images and
    on images it never saw."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1)
    ).eval()
    images, unseen = calibration(64, seed=1), calibration(32, seed=2)

    def unseen_error(converted: nn.Module) -> float:
        with torch.no_grad():
            target, got = model(unseen), converted.eval()(unseen)
        return float((got - target).pow(2).sum() / (target - target.mean()).pow(2).sum())

    plain = ghostify(model, {"3": 2}, 3, inherited=True)
    inherit_weights(model, plain, ["3"], images)
    refined = ghostify(model, {"3": 2}, 3, inherited=True)
    (fit,) = inherit_weights(model, refined, ["3"], images, refine_steps=200)
    assert fit.output_error_after < 0.9 * fit.output_error_before
    assert unseen_error(refined) < 0.9 * unseen_error(plain)


def test_refine_needs_the_converted_fits():
    model = planted_model()
    converted = ghostify(model, PLANTED_RATIOS, 3, inherited=True)
    with pytest.raises(GhostnetError, match="refine_steps"):
        inherit_weights(model, converted, ["c1"], calibration(), fit_on="original", refine_steps=5)

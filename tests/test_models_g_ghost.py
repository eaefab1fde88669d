"""G-Ghost RegNetX: parameter counts, FLOPs and logits against the official code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ghostnet
from ghostnet.counting import profile
from ghostnet.errors import GhostnetError
from ghostnet.layers.g_ghost import g_ghost_split
from ghostnet.models.g_ghost_regnet import G_GHOST_REGNETX

FIXTURE = Path(__file__).parent / "fixtures" / "g_ghost_regnetx_002_golden.pt"

# Parameter counts from running the official huawei-noah/Efficient-AI-Backbones
# g_ghost_pytorch/g_ghost_regnet.py (1000 classes); its state_dict keys and shapes were
# also checked equal to ours, in the same order.
OFFICIAL_PARAMS = {
    "002": 1_825_440,
    "004": 2_884_456,
    "006": 4_029_776,
    "008": 5_248_328,
    "016": 7_109_660,
    "032": 10_511_000,
    "040": 15_726_268,
    "064": 17_993_748,
    "080": 24_586_928,
    "120": 30_627_208,
    "160": 32_381_704,
    "320": 62_815_448,
}
# The official README table: FLOPs (= multiply-adds, the paper convention) at 224x224.
README_FLOPS = {"032": 1.8e9, "040": 2.2e9, "080": 4.2e9, "160": 9.0e9}


def seeded_state(reference: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic non-trivial state_dict with the keys/shapes (and order) of ``reference``.

    Weights ~ N(0, 1/fan_in) so activations stay O(1); BN statistics random but positive."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, ref in reference.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(ref)
        elif name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(ref.shape, generator=g)
        elif name.endswith(("running_mean", ".bias")):
            out[name] = 0.1 * torch.randn(ref.shape, generator=g)
        elif ref.dim() == 1:  # BN weight
            out[name] = 1.0 + 0.1 * torch.randn(ref.shape, generator=g)
        else:
            fan_in = ref[0].numel()
            out[name] = torch.randn(ref.shape, generator=g) / fan_in**0.5
    return out


def golden_input() -> torch.Tensor:
    return torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))


def test_every_official_variant_is_registered():
    names = {f"g_ghost_regnetx_{k}" for k in OFFICIAL_PARAMS}
    imagenet = {n for n in ghostnet.list_models("g_ghost_regnetx_*") if not n.endswith("_cifar")}
    assert names == imagenet
    assert set(G_GHOST_REGNETX) == set(OFFICIAL_PARAMS)


@pytest.mark.parametrize("key", sorted(OFFICIAL_PARAMS))
def test_params_equal_official(key):
    model = ghostnet.create_model(f"g_ghost_regnetx_{key}")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[key]


# The plain RegNetX rows (ghost=False) are torchvision's regnet_x_* where it has the row:
# equal parameter counts check the table's widths, depths and group widths. Its 400MF rounds
# the last stage to 400 channels where the official G-Ghost table (and pycls) has 384.
TORCHVISION_ROWS = {
    "008": "regnet_x_800mf",
    "016": "regnet_x_1_6gf",
    "032": "regnet_x_3_2gf",
    "080": "regnet_x_8gf",
    "160": "regnet_x_16gf",
    "320": "regnet_x_32gf",
}


@pytest.mark.parametrize("key", sorted(TORCHVISION_ROWS))
def test_plain_rows_equal_torchvision_regnetx(key):
    import torchvision

    from ghostnet.models.g_ghost_regnet import GGhostRegNet

    ours = GGhostRegNet(G_GHOST_REGNETX[key], ghost=False)
    theirs = torchvision.models.get_model(TORCHVISION_ROWS[key])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", ["g_ghost_regnetx_002_cifar", "regnetx_002_cifar"])
def test_cifar_pair_keeps_resolution(name):
    model = ghostnet.create_model(name).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # stem and stage 1 at stride 1: the last stage sees 4x4 maps at 32x32
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_cifar_pair_differs_only_in_the_ghost_stages():
    ghost = profile(ghostnet.create_model("g_ghost_regnetx_002_cifar"), (3, 32, 32))
    plain = profile(ghostnet.create_model("regnetx_002_cifar"), (3, 32, 32))
    assert ghost.params < plain.params and ghost.macs < 0.7 * plain.macs


@pytest.mark.parametrize("key", sorted(README_FLOPS))
def test_flops_within_2_percent_of_readme(key):
    model = ghostnet.create_model(f"g_ghost_regnetx_{key}")
    macs = profile(model, (3, 224, 224)).macs
    assert abs(macs - README_FLOPS[key]) / README_FLOPS[key] < 0.02, macs


def test_channel_split_matches_official_rounding():
    # x032 stage 3: 432 channels, group width 48 -> inner gw 36, raw = int(216/36)*36 = 216
    assert g_ghost_split(432, 48) == (216, 216)
    # x002 stage 4: 368 channels, gw 8 -> inner gw 6, raw = int(184/6)*6 = 180
    assert g_ghost_split(368, 8) == (180, 188)
    stage = ghostnet.create_model("g_ghost_regnetx_002").layer4
    assert (stage.raw_planes, stage.cheap_planes) == (180, 188)
    assert len(stage.layers) == 7 - 2


def test_which_stages_are_g_ghost():
    m = ghostnet.create_model("g_ghost_regnetx_016")  # depths (2, 4, 10, 2)
    kinds = [type(getattr(m, f"layer{i}")).__name__ for i in range(1, 5)]
    assert kinds == ["Sequential", "GGhostStage", "GGhostStage", "Sequential"]


def test_golden_logits_equal_official():
    # The fixture holds the logits the official g_ghost_pytorch/g_ghost_regnet.py computes
    # for g_ghost_regnetx_002 loaded with seeded_state(...) on golden_input(); it was made by
    # running the official file from the fetched repository, which is not part of this one.
    model = ghostnet.create_model("g_ghost_regnetx_002").eval()
    model.load_state_dict(seeded_state(model.state_dict()), strict=True)
    with torch.no_grad():
        ours = model(golden_input())
    expected = torch.load(FIXTURE, weights_only=True)["logits"]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_official_layout_file_loads_via_pretrained_path(tmp_path):
    model = ghostnet.create_model("g_ghost_regnetx_002")
    state = seeded_state(model.state_dict())
    path = tmp_path / "g_ghost_regnet_0.2g.pth"
    torch.save(state, path)
    loaded = ghostnet.create_model("g_ghost_regnetx_002", pretrained=path)
    assert torch.equal(loaded.state_dict()["layer4.cheap.0.weight"], state["layer4.cheap.0.weight"])
    few = ghostnet.create_model("g_ghost_regnetx_002", pretrained=path, num_classes=10)
    assert few.fc.out_features == 10


def test_ghostnet_v1_file_and_reverse_name_the_mismatch(tmp_path):
    v1 = tmp_path / "v1.pth"
    torch.save(ghostnet.create_model("ghostnet_100").state_dict(), v1)
    with pytest.raises(GhostnetError) as err:
        ghostnet.create_model("g_ghost_regnetx_002", pretrained=v1)
    msg = str(err.value)
    assert "GhostNet (V1) checkpoint but the model is a G-GhostNet" in msg and "\n" not in msg
    gg = tmp_path / "gg.pth"
    torch.save(ghostnet.create_model("g_ghost_regnetx_002").state_dict(), gg)
    with pytest.raises(GhostnetError) as err:
        ghostnet.create_model("ghostnet_100", pretrained=gg)
    msg = str(err.value)
    assert "G-GhostNet (RegNetX) checkpoint" in msg and "g_ghost_regnetx_*" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("size", [(97, 131), (64, 64)])
def test_non_square_and_small_inputs(size):
    model = ghostnet.create_model("g_ghost_regnetx_002").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_features_only_and_output_stride(output_stride):
    model = ghostnet.create_model(
        "g_ghost_regnetx_002", features_only=True, output_stride=output_stride
    ).eval()
    assert model.feature_info.channels() == [32, 24, 56, 152, 368]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 97, 131))
    last = max(1, output_stride)
    assert feats[-1].shape[-2:] == (-(-97 // last), -(-131 // last))


def test_detection_and_segmentation_over_a_g_ghost_backbone():
    """G-Ghost's feature levels feed torchvision's detection heads and the segmenters: one
    FCOS training step reaches the backbone's G-Ghost stages, and LR-ASPP at output stride
    16 gives logits at the input size."""
    from ghostnet.detection import create_detector
    from ghostnet.segmentation.models import create_segmenter

    torch.manual_seed(0)
    detector = create_detector("fcos", "g_ghost_regnetx_002", num_classes=2, image_size=64)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]
    total = sum(detector.train()(images, targets).values())
    assert torch.isfinite(total)
    total.backward()
    merge_grads = [
        p.grad for n, p in detector.named_parameters() if ".merge." in n and p.requires_grad
    ]
    assert merge_grads and all(g is not None and g.abs().sum() > 0 for g in merge_grads)

    segmenter = create_segmenter("lraspp", "g_ghost_regnetx_002", 5, output_stride=16).eval()
    with torch.no_grad():
        out = segmenter(torch.randn(1, 3, 97, 131))["out"]
    assert out.shape == (1, 5, 97, 131) and torch.isfinite(out).all()


def test_ghostify_converts_the_g_ghost_blocks(capsys):
    """The 1x1 convs of the RegNetX blocks inside a G-Ghost stage become Ghost layers; the
    grouped 3x3 convs are kept (a Ghost module of a grouped conv is not defined)."""
    from ghostnet.cli import main

    assert (
        main(["ghostify", "g_ghost_regnetx_002_cifar", "--input-size", "3,32,32", "--ghostify"])
        == 0
    )
    out = capsys.readouterr().out
    assert "layer3.layers.0.conv1" in out and "kept: grouped" in out
    assert "converted 36 of 50 convs" in out

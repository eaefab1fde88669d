import pytest
from torch import nn

import ghostnet
from ghostnet import GhostnetError
from ghostnet.counting import compare_module, theoretical_ratios


def test_conv_and_linear_macs_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 8*3*9 per pixel at 16x16
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise, 8*9 at 8x8
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    result = ghostnet.profile(model, (3, 16, 16))
    expected = 8 * 3 * 9 * 16 * 16 + 8 * 9 * 8 * 8 + 8 * 5
    assert result.macs == expected
    assert result.params == sum(p.numel() for p in model.parameters())
    by_name = {layer.name: layer for layer in result.layers}
    assert by_name["0"].macs == 8 * 3 * 9 * 256 and by_name["1"].macs == 0
    assert by_name["6"].params == 8 * 5 + 5
    assert sum(layer.macs for layer in result.layers) == result.macs


def test_grouping_and_table():
    result = ghostnet.profile(ghostnet.create_model("ghostnet_050"))
    groups = result.grouped(2)
    assert [g.name for g in groups][:3] == ["conv_stem", "bn1", "blocks.0"]
    assert sum(g.macs for g in groups) == result.macs
    assert "blocks.8" in result.table(2) and "total" in result.table(2)


def test_unused_params_are_reported():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 4, 1)
            self.unused = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.used(x)

    result = ghostnet.profile(Partly(), (3, 4, 4))
    assert result.params == 32 and result.params_used == 16


def test_training_mode_restored_and_bad_sizes():
    model = ghostnet.create_model("resnet20_cifar").train()
    ghostnet.profile(model, (3, 32, 32))
    assert model.training
    with pytest.raises(GhostnetError, match="C,H,W"):
        ghostnet.profile(model, (32, 32))
    with pytest.raises(GhostnetError, match="cannot run"):
        ghostnet.profile(model, (1, 32, 32))


def test_theoretical_ratio_formula():
    r_s, r_c = theoretical_ratios(256, 256, 1, 2, 3)
    assert r_s == pytest.approx(256 * 256 / (128 * 256 + 128 * 9))
    assert r_c == r_s
    assert theoretical_ratios(256, 256, 3, 4, 3)[0] == pytest.approx(4 * 256 / (256 + 3), rel=1e-9)


def test_module_compare_measures_ratios():
    row = compare_module(
        channels=32, kernel_size=3, ratio=2, dw_size=3, spatial=8, batch=1, repeats=2
    )
    assert row.measured_speedup == pytest.approx(row.theoretical_speedup, rel=0.01)
    assert row.conv_ms > 0 and row.ghost_ms > 0
    assert row.ghost_macs < row.conv_macs and row.ghost_params < row.conv_params


def test_the_profile_function_does_not_hide_a_module():
    """ghostnet.profile is the counting function; the module is ghostnet.counting."""
    import ghostnet
    import ghostnet.counting

    assert callable(ghostnet.profile) and ghostnet.profile is ghostnet.counting.profile

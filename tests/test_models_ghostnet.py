import pytest
import torch

import ghostnet
from ghostnet.models import GHOSTNET_TABLE, GhostNet

from .conftest import all_params_have_grad

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", ["ghostnet_050", "ghostnet_100", "ghostnet_130"])
def test_loads_timm_state_dict_and_gives_same_logits(name):
    reference = timm.create_model(name).eval()
    ours = ghostnet.create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-6


def test_timm_loads_ours_too():
    ours = ghostnet.create_model("ghostnet_100")
    timm.create_model("ghostnet_100").load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("ghostnet_050", 2.59e6, 42.3e6),
        ("ghostnet_100", 5.18e6, 141.2e6),
        ("ghostnet_130", 7.36e6, 227e6),
    ],
)
def test_params_and_macs_match_paper(name, params, macs):
    result = ghostnet.profile(ghostnet.create_model(name), (3, 224, 224))
    assert result.params == pytest.approx(params, rel=0.01)
    assert result.macs == pytest.approx(macs, rel=0.01)


def test_table_reads_like_paper():
    assert len(GHOSTNET_TABLE) == 16
    assert [r.exp for r in GHOSTNET_TABLE[:3]] == [16, 48, 72]
    assert sum(r.se for r in GHOSTNET_TABLE) == 7
    assert [r.stride for r in GHOSTNET_TABLE].count(2) == 4


def test_arguments_and_gradients():
    model = GhostNet(num_classes=7, width=0.5, in_chans=1, dropout=0.0)
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all_params_have_grad(model) == []


def test_fx_and_export():
    model = ghostnet.create_model("ghostnet_050").eval()
    x = torch.randn(1, 3, 64, 64)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)
        exported = torch.export.export(model, (x,))
        assert torch.allclose(exported.module()(x), model(x), atol=1e-6)

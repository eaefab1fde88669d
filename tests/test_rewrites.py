"""PyTorch-level rewrites keep outputs equal (1e-5 relative) on random-weight models with
measured BN statistics, and do what they say in the graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ghostnet.deploy import fuse, settle_batchnorm
from ghostnet.errors import GhostnetError
from ghostnet.models import create_model
from ghostnet.rewrites import REWRITES, apply_rewrites

SIZE = (3, 32, 32)


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100", "ghostnetv3_100"])
def test_rewrite_keeps_outputs(rewrite, name):
    torch.manual_seed(0)
    model = settle_batchnorm(create_model(name, num_classes=10), SIZE)
    rewritten = apply_rewrites(model, [rewrite], SIZE)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():  # against the deploy form the rewrite starts from
        expected, got = fuse(model)(x), rewritten(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_pool_rewrite_replaces_every_se_mean():
    model = create_model("ghostnet_100").eval()
    graph = apply_rewrites(model, ["pool"]).graph
    means = [n for n in graph.nodes if n.target == "mean"]
    pools = [n for n in graph.nodes if n.target is F.adaptive_avg_pool2d]
    se_blocks = sum(type(m).__name__ == "SqueezeExcite" for m in model.modules())
    assert not means and len(pools) == se_blocks == 7


def test_unknown_rewrite_is_one_line():
    with pytest.raises(GhostnetError, match="unknown rewrite x: choose from pool"):
        apply_rewrites(create_model("resnet20_cifar"), ["x"])

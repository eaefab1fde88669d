"""Shared fixtures and helpers: a fixed seed, threads pinned to the machine's cores."""

from __future__ import annotations

import os

import pytest
import torch

from ghostnet.models import default_input_size

# under pytest-xdist each worker gets one core, so the workers do not steal each other's
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1))
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def all_params_have_grad(model: torch.nn.Module) -> list[str]:
    """Names of trainable parameters that got no gradient (empty list = all fine)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.fixture(scope="session")
def cifar10_path():
    """The real CIFAR-10 copy ($GHOSTNET_CIFAR10, default ../shared/data/cifar10).

    Missing data skips the test on a developer machine but fails it in CI (CI=true)."""
    from pathlib import Path

    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
    path = Path(os.environ.get("GHOSTNET_CIFAR10", default))
    if not (path / "train").is_dir():
        message = f"real CIFAR-10 not found at {path} (set GHOSTNET_CIFAR10)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# small inputs keep the sweep fast; every architecture runs at these sizes
SMALL = {"ghost_resnet50": (3, 64, 64), "ghostnet": (3, 64, 64)}


def small_size(name: str) -> tuple[int, int, int]:
    """A small input size every registered architecture runs at (keeps sweeps fast)."""
    size = default_input_size(name)
    return SMALL.get(name, size if size[1] <= 64 else (3, 64, 64))


def randomise_bn(model: torch.nn.Module, size=None) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine parameters, then eval mode.

    With ``size`` the statistics are measured (a few train-mode passes over random images),
    as in a real network, so deep models keep sane activations; otherwise they are drawn."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if size is None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            else:
                m.momentum = None  # cumulative average over the calibration passes
    if size is not None:
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, *size, generator=g))
    return model.eval()


# The sweeps over the registered models (fuse, ONNX, split, features) take one member per
# distinct code path: widths of one family and depths of one CIFAR ResNet are the same
# blocks at other table rows (their parameter counts are checked one by one in the model
# tests), aliases are the same models, and with them the sweeps dominated CI's run time.
# Kept: the narrowest widths (channel rounding), a deep CIFAR ResNet (rounding over depth),
# G-Ghost at its smallest and its best-known width.
SWEPT = (
    "g_ghost_regnetx_002",
    "g_ghost_regnetx_032",
    "ghost_mobilenetv2_cifar",
    "ghost_resnet20_cifar",
    "ghost_resnet56_cifar",
    "ghost_resnet50",
    "ghost_vgg16_cifar",
    "ghostnet_050",
    "ghostnet_100",
    "ghostnetv2_100",
    "ghostnetv2_160",
    "ghostnetv3_050",
    "ghostnetv3_100",
    "mobilenetv2_cifar",
    "resnet20_cifar",
    "vgg16_cifar",
)


def swept_models() -> list[str]:
    """Registered model names for the sweeps (each is checked to be registered)."""
    import ghostnet

    names = set(ghostnet.list_models())
    missing = [n for n in SWEPT if n not in names]
    assert not missing, f"swept models no longer registered: {missing}"
    return list(SWEPT)

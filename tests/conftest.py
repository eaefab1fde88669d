"""Shared fixtures and helpers: a fixed seed, threads pinned to the machine's cores."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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

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

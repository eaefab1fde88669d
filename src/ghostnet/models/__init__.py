"""Architectures: each family a file, all reachable through the registry."""

from . import (  # noqa: F401  (registers)
    cifar,
    g_ghost_regnet,
    ghostnet,
    ghostnet_v2,
    ghostnet_v3,
    resnet,
)
from .cifar import ResNetCifar, VGGCifar
from .ghostnet import GHOSTNET_TABLE, GhostNet
from .registry import ModelSpec, create_model, default_input_size, get_entry, list_models

__all__ = [
    "GHOSTNET_TABLE",
    "GhostNet",
    "ModelSpec",
    "ResNetCifar",
    "VGGCifar",
    "create_model",
    "default_input_size",
    "get_entry",
    "list_models",
]

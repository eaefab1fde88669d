"""Capture the output feature maps of named layers with forward hooks, for any nn.Module."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import GhostnetError
from ..layers import GhostConv2d, GhostModule


def conv_layer_names(model: nn.Module) -> list[str]:
    """The layers ``all-convs`` means: ordinary convs (groups == 1) and Ghost layers
    (whose inner convs are then left out)."""
    names: list[str] = []
    ghost_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in ghost_prefixes):
            continue
        if isinstance(module, (GhostModule, GhostConv2d)):
            names.append(name)
            ghost_prefixes.append(name)
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            names.append(name)
    return names


def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """``"all-convs"``, a comma-separated string or a list of module names -> checked names."""
    if isinstance(layers, str):
        if layers == "all-convs":
            names = conv_layer_names(model)
            if not names:
                raise GhostnetError(f"{type(model).__name__} has no conv layers to analyse")
            return names
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    available = dict(model.named_modules())
    for name in layers:
        if name not in available or not name:
            close = difflib.get_close_matches(name, list(available), n=5, cutoff=0.4)
            convs = conv_layer_names(model)
            shown = ", ".join(convs[:12]) + (" ..." if len(convs) > 12 else "")
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise GhostnetError(f"unknown layer {name!r}: {hint}conv layers: {shown}")
    return list(layers)


@torch.no_grad()
def capture(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Run ``images`` (N, C, H, W) through ``model`` in eval mode and return each named
    layer's output maps (N, C', H', W') on the CPU."""
    modules = dict(model.named_modules())
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    hooks = []

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                raise GhostnetError(
                    f"layer {name!r} gives {shape}, not 4-D feature maps (N, C, H, W); "
                    "choose a conv or block layer"
                )
            outputs[name].append(output.detach().float().cpu().clone())

        return hook

    for name in layers:
        hooks.append(modules[name].register_forward_hook(keep(name)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}

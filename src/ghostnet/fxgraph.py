"""Predicates on torch.fx graphs shared by the graph rewrites (``split`` and the kernel
rewrite in ``kernels.fused_cheap``): kept here, below both, so neither imports the other."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

# in-place operators as FX records them (``x[i] = v`` is operator.setitem)
INPLACE_OPERATORS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.imatmul,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.setitem,
}


def call_arguments(node: torch.fx.Node) -> dict[str, object] | None:
    """A Python function's arguments by parameter name (None for builtins)."""
    try:
        return dict(inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments)
    except (TypeError, ValueError):
        return None


def writes_in_place(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node`` may modify one of its inputs in place (``inplace=True``, ``relu_``,
    ``x[i] = v``, ``out=``)."""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op not in ("call_function", "call_method"):
        return False
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if isinstance(name, str) and name.endswith("_") and not name.endswith("__"):
        return True
    if "out" in node.kwargs or node.target in INPLACE_OPERATORS:
        return True
    return node.op == "call_function" and bool((call_arguments(node) or {}).get("inplace"))


def activation_input(
    node: torch.fx.Node, modules: dict[str, nn.Module]
) -> tuple[torch.fx.Node, bool]:
    """(the node under an optional ReLU/Identity, whether it was a ReLU)."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if type(module) in (nn.ReLU, nn.Identity) and len(node.args) == 1 and not node.kwargs:
            return node.args[0], isinstance(module, nn.ReLU)
    if node.op == "call_function" and node.target in (F.relu, torch.relu) and len(node.args) == 1:
        return node.args[0], True
    return node, False


def is_depthwise(conv: nn.Module | None, channels: int) -> bool:
    """A stride-1, same-size, one-filter-per-map conv over ``channels`` maps."""
    if type(conv) is not nn.Conv2d:
        return False
    k = conv.kernel_size[0]
    return (
        conv.groups == conv.in_channels == conv.out_channels == channels
        and conv.kernel_size == (k, k)
        and k % 2 == 1
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (k // 2, k // 2)
        and conv.padding_mode == "zeros"
        and conv.weight.dtype == torch.float32
    )


def channel_concats_of_two(
    graph: torch.fx.Graph,
) -> Iterator[tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node]]:
    """(cat, first, second) for each ``torch.cat([first, second], 1)`` of two graph values,
    read as the walk reaches it (the caller may rewrite the graph between items)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.cat:
            continue
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim != 1 or not isinstance(tensors, (list, tuple)) or len(tensors) != 2:
            continue
        first, second = tensors
        if isinstance(first, torch.fx.Node) and isinstance(second, torch.fx.Node):
            yield node, first, second

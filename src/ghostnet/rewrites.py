"""PyTorch-level rewrites of the deploy form, made before torch.export so that every
runtime (ExecuTorch, ncnn, LiteRT, ONNX Runtime) sees them; each keeps the outputs equal.

``pool``: a spatial mean with kept dims (squeeze-excite's pooling, ``x.mean((2, 3),
keepdim=True)``) becomes ``adaptive_avg_pool2d(x, 1)``, which the converters map to their
native global pooling (ncnn: Pooling with global flag, not its generic Reduction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .deploy import fuse
from .errors import GhostnetError


def _is_spatial_mean(node: torch.fx.Node) -> bool:
    """``x.mean((2, 3), keepdim=True)`` or ``torch.mean(x, (2, 3), keepdim=True)``."""
    method = node.op == "call_method" and node.target == "mean"
    function = node.op == "call_function" and node.target is torch.mean
    if not (method or function) or len(node.args) < 2:
        return False
    dims = node.args[1]
    dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return keep is True and sorted(d % 4 if isinstance(d, int) else d for d in dims) == [2, 3]


def pool_rewrite(gm: torch.fx.GraphModule) -> int:
    """Spatial means with kept dims -> adaptive_avg_pool2d(x, 1). Returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if _is_spatial_mean(node):
            with gm.graph.inserting_after(node):
                pooled = gm.graph.call_function(F.adaptive_avg_pool2d, (node.args[0], 1))
            node.replace_all_uses_with(pooled)
            gm.graph.erase_node(node)
            count += 1
    gm.graph.lint()
    gm.recompile()
    return count


REWRITES: dict[str, Callable[[torch.fx.GraphModule], int]] = {"pool": pool_rewrite}


def apply_rewrites(
    model: nn.Module, names: Sequence[str], input_size: Sequence[int] | None = None
) -> nn.Module:
    """The deploy form of ``model`` (``deploy.fuse``) with the named rewrites applied; the
    model itself when ``names`` is empty. ``input_size`` is for rewrites that need shapes."""
    if not names:
        return model
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise GhostnetError(
            f"unknown rewrite {', '.join(unknown)}: choose from {', '.join(REWRITES)}"
        )
    deploy = fuse(model)
    if not isinstance(deploy, torch.fx.GraphModule):
        raise GhostnetError(f"{type(model).__name__} is not FX-traceable; rewrites need a graph")
    for name in names:
        REWRITES[name](deploy)
    return deploy

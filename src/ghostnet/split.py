"""Keep the halves of Ghost concatenations apart: a graph rewrite for fast inference.

A Ghost layer ends in ``cat([intrinsic, ghosts], dim=1)``. Runtimes that compute in blocked
channel layouts (ONNX Runtime's NCHWc, 16 channels per block on AVX-512) cannot concatenate
channel counts that are not multiples of the block, so every such concat costs two layout
conversions plus the copy; and a concat between a conv and the following add/ReLU stops
them from being fused. Most consumers do not need the concatenated tensor:

* a conv over ``cat(a, b)`` is ``conv_a(a) + conv_b(b)`` (weights split by input channel;
  the add fuses into the second conv),
* depthwise convs, ReLU-like activations, pooling and channel means act on each half,
* ``cat(a, b) + cat(c, d)`` is ``cat(a + c, b + d)``; a plain tensor added to or multiplied
  with halves is split (a conv producing it is split by output rows instead).

This pass rewrites an FX graph so tensors stay as lists of parts and a concat is only
materialised where some other op needs the whole tensor. Outputs are unchanged up to float
rounding (the tests check every registered model).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Sigmoid,
    nn.SiLU,
    nn.Identity,
    nn.Dropout,
)
PER_PART_POOLS = (nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AvgPool2d)
ELEMENTWISE_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.relu6,
    F.hardsigmoid,
    F.hardswish,
    torch.sigmoid,
    F.silu,
    F.dropout,
}
BINARY_FUNCTIONS = {operator.add, operator.mul, torch.add, torch.mul}


@dataclass
class Parts:
    """A tensor kept as channel-wise pieces: (node in the new graph, channels) each."""

    nodes: list[torch.fx.Node]
    channels: list[int]


def _channels(node: torch.fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


class _Rewriter:
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.graph = torch.fx.Graph()
        self.env: dict[torch.fx.Node, torch.fx.Node | Parts] = {}
        self.whole: dict[int, torch.fx.Node] = {}  # id(Parts) -> materialised concat
        self.counter = 0

    # -- helpers -----------------------------------------------------------------------
    def plain(self, value: object) -> object:
        """The new-graph value of an old argument, concatenating parts where needed."""
        if isinstance(value, torch.fx.Node):
            mapped = self.env[value]
            if isinstance(mapped, Parts):
                key = id(mapped)
                if key not in self.whole:
                    self.whole[key] = self.graph.call_function(torch.cat, (mapped.nodes, 1))
                return self.whole[key]
            return mapped
        if isinstance(value, (list, tuple)):
            return type(value)(self.plain(v) for v in value)
        if isinstance(value, dict):
            return {k: self.plain(v) for k, v in value.items()}
        return value

    def add_module(self, base: str, module: nn.Module) -> str:
        self.counter += 1
        name = f"{base.replace('.', '_')}_part{self.counter}"
        self.gm.add_submodule(name, module)
        return name

    def copy(self, node: torch.fx.Node) -> torch.fx.Node:
        return self.graph.node_copy(node, lambda n: self.plain(n))

    # -- rewrites ------------------------------------------------------------------------
    def conv(self, base: str, conv: nn.Conv2d, parts: Parts) -> object:
        """``conv`` applied to a tensor kept as parts (None when it cannot be)."""
        if conv.padding_mode != "zeros" or conv.in_channels != sum(parts.channels):
            return None
        depthwise = conv.groups == conv.in_channels and conv.groups > 1
        if conv.groups != 1 and not depthwise:
            return None
        mult = conv.out_channels // conv.in_channels if depthwise else 0
        outputs, offset = [], 0
        for index, (part, c) in enumerate(zip(parts.nodes, parts.channels)):
            if depthwise:
                rows, cols, groups, with_bias = (
                    slice(offset * mult, (offset + c) * mult),
                    slice(None),
                    c,
                    conv.bias is not None,
                )
            else:
                rows, cols, groups = slice(None), slice(offset, offset + c), 1
                with_bias = conv.bias is not None and index == 0
            outputs.append(self.emit_conv(base, conv, rows, cols, groups, with_bias, part))
            offset += c
        if depthwise:
            return Parts(outputs, [c * mult for c in parts.channels])
        total = outputs[0]
        for extra in outputs[1:]:
            total = self.graph.call_function(operator.add, (extra, total))
        return total

    def emit_conv(
        self,
        base: str,
        conv: nn.Conv2d,
        rows: slice,
        cols: slice,
        groups: int,
        with_bias: bool,
        source: torch.fx.Node,
    ) -> torch.fx.Node:
        """A new conv holding ``conv.weight[rows, cols]`` (and bias rows), applied to source."""
        weight = conv.weight[rows, cols]
        in_channels = weight.shape[1] * groups
        piece = nn.Conv2d(
            in_channels,
            weight.shape[0],
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=groups,
            bias=with_bias,
        )
        piece.weight.data.copy_(weight)
        if with_bias:
            piece.bias.data.copy_(conv.bias[rows])
        piece.to(conv.weight.device, conv.weight.dtype)
        return self.graph.call_module(self.add_module(base, piece), (source,))

    def split_plain(self, old: torch.fx.Node, sizes: list[int]) -> Parts:
        """A plain tensor as parts of ``sizes`` channels. A conv (or an activation of a
        conv) used only here is split by output rows; anything else is sliced."""
        single = len(old.users) == 1
        target = self.modules.get(old.target) if old.op == "call_module" else None
        if single and isinstance(target, nn.Conv2d) and target.groups == 1:
            source = self.env[old.args[0]]
            nodes, offset = [], 0
            for c in sizes:
                rows = slice(offset, offset + c)
                if isinstance(source, Parts):
                    row_conv = nn.Conv2d(
                        target.in_channels,
                        c,
                        target.kernel_size,
                        target.stride,
                        target.padding,
                        target.dilation,
                        bias=target.bias is not None,
                    )
                    row_conv.weight.data.copy_(target.weight[rows])
                    if target.bias is not None:
                        row_conv.bias.data.copy_(target.bias[rows])
                    node = self.conv(str(old.target), row_conv.to(target.weight.device), source)
                else:
                    node = self.emit_conv(
                        str(old.target),
                        target,
                        rows,
                        slice(None),
                        1,
                        target.bias is not None,
                        source,
                    )
                nodes.append(node)
                offset += c
            return Parts(nodes, list(sizes))
        elementwise = isinstance(target, ELEMENTWISE_MODULES) or (
            old.op == "call_function" and old.target in ELEMENTWISE_FUNCTIONS
        )
        if single and elementwise and len(old.args) == 1 and not old.kwargs:
            inner = old.args[0]
            if isinstance(inner, torch.fx.Node) and not isinstance(self.env[inner], Parts):
                split = self.split_plain(inner, sizes)
                if old.op == "call_module":
                    return Parts(
                        [self.graph.call_module(old.target, (p,)) for p in split.nodes], list(sizes)
                    )
                return Parts(
                    [self.graph.call_function(old.target, (p,)) for p in split.nodes], list(sizes)
                )
        nodes, offset = [], 0
        for c in sizes:
            index = (slice(None), slice(offset, offset + c))
            nodes.append(self.graph.call_function(operator.getitem, (self.env[old], index)))
            offset += c
        return Parts(nodes, list(sizes))

    def binary(self, node: torch.fx.Node) -> object:
        if len(node.args) != 2 or node.kwargs:
            return None
        a, b = node.args
        pa = self.env.get(a) if isinstance(a, torch.fx.Node) else None
        pb = self.env.get(b) if isinstance(b, torch.fx.Node) else None
        if not isinstance(pa, Parts) and not isinstance(pb, Parts):
            return None
        if isinstance(pa, Parts) and isinstance(pb, Parts):
            if pa.channels != pb.channels:
                return None
        else:
            parts, other = (pa, b) if isinstance(pa, Parts) else (pb, a)
            if not isinstance(other, torch.fx.Node) or _channels(other) != sum(parts.channels):
                return None  # scalars / broadcasts over channels: keep it simple
            split = self.split_plain(other, parts.channels)
            pa, pb = (parts, split) if isinstance(pa, Parts) else (split, parts)
        nodes = [self.graph.call_function(node.target, (x, y)) for x, y in zip(pa.nodes, pb.nodes)]
        return Parts(nodes, list(pa.channels))

    def per_part(self, node: torch.fx.Node, parts: Parts, build) -> Parts:
        return Parts([build(p) for p in parts.nodes], list(parts.channels))

    def visit(self, node: torch.fx.Node) -> object:
        first = node.args[0] if node.args else None
        parts = self.env.get(first) if isinstance(first, torch.fx.Node) else None
        rest = tuple(self.plain(a) for a in node.args[1:])
        kwargs = {k: self.plain(v) for k, v in node.kwargs.items()}
        if node.op == "call_function" and node.target is torch.cat:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim == 1 and all(_channels(t) for t in tensors):
                nodes, channels = [], []
                for t in tensors:
                    mapped = self.env[t]
                    if isinstance(mapped, Parts):
                        nodes += mapped.nodes
                        channels += mapped.channels
                    else:
                        nodes.append(mapped)
                        channels.append(_channels(t))
                return Parts(nodes, channels)
            return None
        if node.op == "call_function" and node.target in BINARY_FUNCTIONS:
            return self.binary(node)
        if not isinstance(parts, Parts):
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, nn.Conv2d):
                return self.conv(str(node.target), module, parts)
            if isinstance(module, ELEMENTWISE_MODULES + PER_PART_POOLS):
                return self.per_part(
                    node, parts, lambda p: self.graph.call_module(node.target, (p, *rest), kwargs)
                )
            return None
        if node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
            return self.per_part(
                node, parts, lambda p: self.graph.call_function(node.target, (p, *rest), kwargs)
            )
        if node.op == "call_method" and node.target == "mean":
            dims = rest[0] if rest else kwargs.get("dim")
            if dims is not None and 1 not in (dims if isinstance(dims, Sequence) else [dims]):
                return self.per_part(
                    node, parts, lambda p: self.graph.call_method("mean", (p, *rest), kwargs)
                )
        return None

    def run(self) -> torch.fx.GraphModule:
        for node in self.gm.graph.nodes:
            if node.op in ("call_module", "call_function", "call_method"):
                result = self.visit(node)
                self.env[node] = result if result is not None else self.copy(node)
            else:
                self.env[node] = self.copy(node)
        out = torch.fx.GraphModule(self.gm, self.graph, class_name=type(self.gm).__name__)
        out.graph.eliminate_dead_code()
        out.delete_all_unused_submodules()
        out.graph.lint()
        out.recompile()
        return out


def split_concats(model: nn.Module, input_size: Sequence[int]) -> torch.fx.GraphModule:
    """Rewrite ``model`` (eval mode, e.g. the output of :func:`ghostnet.deploy.fuse`) so the
    halves of channel concatenations stay apart wherever their consumers allow."""
    gm = torch.fx.symbolic_trace(model.eval())
    example = torch.zeros(1, *input_size)
    ShapeProp(gm).propagate(example)
    return _Rewriter(gm).run()

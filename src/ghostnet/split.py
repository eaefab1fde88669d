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

``pad_to=B`` also pads every part to a multiple of B channels (the runtime's block: 16 for
ONNX Runtime on AVX-512, 8 on AVX2). A conv whose output count is not a multiple of B
gets zero weight rows up to the next multiple, and every conv reading a padded part gets
zero weight columns for the padding, so the padding never reaches a real channel. Such a
runtime converts a tensor that is not a block multiple to and from its blocked layout
around every op; GhostNet's halves (8, 12, 20, 36, 60, 92, 100... channels) mostly are not.
The padded channels hold zeros or other finite values that nothing reads.

Parts may share storage with other tensors (a concat's parts are its inputs) and a conv may
be emitted again at a later consumer, so values that some op modifies in place are left
whole and in their places (see :func:`_mutated`); a lone in-place activation of a new tensor
is harmless and is applied to parts out of place.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .fxgraph import (
    activation_input,
    call_arguments,
    channel_concats_of_two,
    is_depthwise,
    writes_in_place,
)

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
# a conv with at most this many weights per output channel is cheap to compute twice
CHEAP_FAN_IN = 32


@dataclass
class Parts:
    """A tensor kept as channel-wise pieces: (node in the new graph, channels) each.

    ``padded[i]`` is part i's channel count in the new graph (>= ``channels[i]``: its real
    channels come first); ``origin`` is the old node that produced it when that node can be
    emitted again split another way (a conv, or activations of one).
    """

    nodes: list[torch.fx.Node]
    channels: list[int]
    padded: list[int] | None = None
    origin: torch.fx.Node | None = None

    def __post_init__(self) -> None:
        if self.padded is None:
            self.padded = list(self.channels)

    def same_layout(self, other: Parts) -> bool:
        return self.channels == other.channels and self.padded == other.padded


def _channels(node: torch.fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def _rank(node: object) -> int | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    shape = getattr(meta, "shape", None)
    return len(shape) if shape is not None else None


def _fresh(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node``'s eager result is a new tensor, never a view of an input (False if unsure:
    Identity and eval-mode dropout return their input)."""
    if writes_in_place(node, modules):
        return False
    if node.op == "call_module":
        module = modules.get(node.target)
        kinds = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, *PER_PART_POOLS, *ELEMENTWISE_MODULES)
        return isinstance(module, kinds) and not isinstance(module, (nn.Identity, nn.Dropout))
    if node.op == "call_function":
        target = node.target
        return (
            target is torch.cat
            or target in BINARY_FUNCTIONS
            or target in ELEMENTWISE_FUNCTIONS - {F.dropout}
        )
    return node.op == "call_method" and node.target == "mean"


def _mutated(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> set[torch.fx.Node]:
    """Nodes whose tensor, or a tensor that may share its storage, is modified in place.

    The rewrite keeps these whole and computes them in their places: a part may be another
    tensor's storage (a concat's parts are its inputs), and a conv emitted again at a later
    consumer would read its input after the change. An in-place op whose one input is a new
    tensor read by nothing else changes nothing another op can see: it does not count (the
    rewrite applies it to parts out of place)."""
    parent: dict[torch.fx.Node, torch.fx.Node] = {}

    def find(node: torch.fx.Node) -> torch.fx.Node:
        while parent.get(node, node) is not node:
            node = parent[node]
        return node

    written: list[torch.fx.Node] = []
    for node in graph.nodes:
        if not _fresh(node, modules):  # may be a view of any of its inputs: one storage
            for arg in node.all_input_nodes:
                parent[find(arg)] = find(node)
        if writes_in_place(node, modules):
            inputs = node.all_input_nodes
            lone = len(inputs) == 1 and len(inputs[0].users) == 1 and _fresh(inputs[0], modules)
            if not lone:
                written += inputs
    roots = {find(node) for node in written}
    return {node for node in graph.nodes if find(node) in roots}


def _remove_dead_code(graph: torch.fx.Graph, keep: set[torch.fx.Node]) -> None:
    """Graph.eliminate_dead_code, except that the nodes in ``keep`` (in-place writes whose
    result nobody reads) stay: its ``is_impure_node`` hook is missing from older torch."""
    for node in reversed(graph.nodes):
        if node.users or node in keep or node.op in ("placeholder", "output"):
            continue
        if node.is_impure():
            continue
        graph.erase_node(node)


class _Rewriter:
    def __init__(
        self,
        gm: torch.fx.GraphModule,
        pad_to: int = 0,
        layouts: dict[str, tuple[list[int], list[int]]] | None = None,
    ) -> None:
        self.gm = gm
        self.pad_to = pad_to
        # shared cheap convs that some op wanted as parts: name -> (channels, padded).
        # A second pass emits them split from the start instead of computing them again.
        self.layouts = layouts if layouts is not None else {}
        self.wanted: dict[str, tuple[list[int], list[int]]] = {}
        self.modules = dict(gm.named_modules())
        self.graph = torch.fx.Graph()
        self.env: dict[torch.fx.Node, torch.fx.Node | Parts] = {}
        self.whole: dict[int, torch.fx.Node] = {}  # id(Parts) -> materialised concat
        self.counter = 0
        self.mutated = _mutated(gm.graph, self.modules)
        self.copies: dict[str, str] = {}  # in-place module -> its out-of-place copy

    # -- helpers -----------------------------------------------------------------------
    def padded(self, channels: int) -> int:
        if self.pad_to <= 1:
            return channels
        return -(-channels // self.pad_to) * self.pad_to

    def plain(self, value: object) -> object:
        """The new-graph value of an old argument, concatenating parts where needed."""
        if isinstance(value, torch.fx.Node):
            mapped = self.env[value]
            if isinstance(mapped, Parts):
                key = id(mapped)
                if key not in self.whole:
                    real = [
                        node
                        if c == p
                        else self.graph.call_function(
                            operator.getitem, (node, (slice(None), slice(0, c)))
                        )
                        for node, c, p in zip(mapped.nodes, mapped.channels, mapped.padded)
                    ]
                    self.whole[key] = (
                        real[0]
                        if len(real) == 1
                        else self.graph.call_function(torch.cat, (real, 1))
                    )
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

    def out_of_place(self, target: str) -> str:
        """Module ``target``, or a copy with ``inplace=False`` if it works in place: parts
        may be other tensors' storage (a concat's parts are its inputs)."""
        module = self.modules[target]
        if not getattr(module, "inplace", False):
            return target
        if target not in self.copies:
            clone = copy.deepcopy(module)
            clone.inplace = False
            self.copies[target] = self.add_module(target, clone)
        return self.copies[target]

    # -- rewrites ------------------------------------------------------------------------
    def conv(self, base: str, conv: nn.Conv2d, parts: Parts, out_rows: int | None = None) -> object:
        """``conv`` applied to a tensor kept as parts (None when it cannot be).

        A dense conv's output is one tensor of ``out_rows`` channels (zero rows past the
        conv's own); unless ``out_rows`` is given, a padded one when padding is on."""
        if conv.padding_mode != "zeros" or conv.in_channels != sum(parts.channels):
            return None
        depthwise = conv.groups == conv.in_channels and conv.groups > 1
        if conv.groups != 1 and not depthwise:
            return None
        mult = conv.out_channels // conv.in_channels if depthwise else 0
        weight, bias = conv.weight, conv.bias
        if not depthwise and out_rows is None:
            out_rows = self.padded(conv.out_channels)
        outputs, offset = [], 0
        for index, (part, c, p) in enumerate(zip(parts.nodes, parts.channels, parts.padded)):
            if depthwise:
                w = _pad_rows(weight[offset * mult : (offset + c) * mult], p * mult)
                b = (
                    None
                    if bias is None
                    else _pad_rows(bias[offset * mult : (offset + c) * mult], p * mult)
                )
                groups = p
            else:
                w = _pad_rows(_pad_cols(weight[:, offset : offset + c], p), out_rows)
                b = None if bias is None or index > 0 else _pad_rows(bias, out_rows)
                groups = 1
            outputs.append(self.emit_conv(base, conv, w, b, groups, part))
            offset += c
        if depthwise:
            return Parts(
                outputs, [c * mult for c in parts.channels], [p * mult for p in parts.padded]
            )
        total = outputs[0]
        for extra in outputs[1:]:
            total = self.graph.call_function(operator.add, (extra, total))
        if out_rows == conv.out_channels:
            return total
        return Parts([total], [conv.out_channels], [out_rows])

    def padded_conv(self, node: torch.fx.Node, conv: nn.Conv2d) -> Parts | None:
        """A dense conv on a whole tensor whose output count is not a block multiple: the
        same conv with zero rows up to the next multiple, as a one-part tensor."""
        rows = self.padded(conv.out_channels)
        if rows == conv.out_channels or conv.groups != 1 or len(node.args) != 1 or node.kwargs:
            return None
        if _rank(node) != 4:  # an unbatched (C, H, W) map has its channels on dim 0
            return None
        if conv.padding_mode != "zeros":  # emit_conv's pieces pad with zeros
            return None
        w = _pad_rows(conv.weight, rows)
        b = None if conv.bias is None else _pad_rows(conv.bias, rows)
        out = self.emit_conv(str(node.target), conv, w, b, 1, self.plain(node.args[0]))
        return Parts([out], [conv.out_channels], [rows], origin=node)

    def emit_conv(
        self,
        base: str,
        conv: nn.Conv2d,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        groups: int,
        source: object,
    ) -> torch.fx.Node:
        """A new conv like ``conv`` (kernel, stride, padding) holding ``weight``/``bias``."""
        piece = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=groups,
            bias=bias is not None,
        )
        piece.weight.data.copy_(weight)
        if bias is not None:
            piece.bias.data.copy_(bias)
        piece.to(conv.weight.device, conv.weight.dtype)
        return self.graph.call_module(self.add_module(base, piece), (source,))

    def resplittable(self, old: torch.fx.Node) -> bool:
        """``old`` is a dense conv, or activations of one, used only once: it can be
        emitted again with its output rows split into any parts. A conv with at most
        ``CHEAP_FAN_IN`` weights per output (an RGB stem: 27) may be used more than once:
        computing it twice costs about what slicing and padding its output would."""
        target = self.modules.get(old.target) if old.op == "call_module" else None
        if len(old.users) != 1 and not self.cheap_chain(old):
            return False
        if old in self.mutated:
            return False
        if isinstance(target, nn.Conv2d):
            # emitted again at the consumer: its input must not change in place before then
            plain_input = len(old.args) == 1 and old.args[0] not in self.mutated
            dense = target.groups == 1 and target.padding_mode == "zeros"
            return dense and plain_input and _rank(old) == 4
        inner = self.activation_input(old)
        return inner is not None and self.resplittable(inner)

    def activation_input(self, old: torch.fx.Node) -> torch.fx.Node | None:
        """The input of ``old`` when ``old`` is a one-argument elementwise activation."""
        target = self.modules.get(old.target) if old.op == "call_module" else None
        elementwise = isinstance(target, ELEMENTWISE_MODULES) or (
            old.op == "call_function" and old.target in ELEMENTWISE_FUNCTIONS
        )
        inner = old.args[0] if old.args else None
        if elementwise and len(old.args) == 1 and not old.kwargs:
            return inner if isinstance(inner, torch.fx.Node) else None
        return None

    def cheap_chain(self, old: torch.fx.Node) -> bool:
        """``old`` is a conv of small fan-in, or single-argument activations of one."""
        target = self.modules.get(old.target) if old.op == "call_module" else None
        if isinstance(target, nn.Conv2d):
            return target.weight[0].numel() <= CHEAP_FAN_IN
        inner = self.activation_input(old)
        return inner is not None and self.cheap_chain(inner)

    def split_plain(
        self, old: torch.fx.Node, sizes: list[int], padded: list[int], shared: bool = False
    ) -> Parts:
        """An old node's value as parts of ``sizes`` channels (``padded`` in the new
        graph). A conv (or activations of a conv) used only here is emitted again split by
        output rows; anything else is sliced (and zero-padded)."""
        target = self.modules.get(old.target) if old.op == "call_module" else None
        shared = shared or len(old.users) > 1  # this chain is also computed whole
        if shared and self.resplittable(old):
            self.wanted.setdefault(old.name, (list(sizes), list(padded)))
        if self.resplittable(old) and isinstance(target, nn.Conv2d):
            source = self.env[old.args[0]]
            nodes, offset = [], 0
            for c, p in zip(sizes, padded):
                w = _pad_rows(target.weight[offset : offset + c], p)
                b = None if target.bias is None else _pad_rows(target.bias[offset : offset + c], p)
                if isinstance(source, Parts):
                    row_conv = nn.Conv2d(
                        target.in_channels,
                        p,
                        target.kernel_size,
                        target.stride,
                        target.padding,
                        target.dilation,
                        bias=b is not None,
                    )
                    row_conv.weight.data.copy_(w)
                    if b is not None:
                        row_conv.bias.data.copy_(b)
                    node = self.conv(str(old.target), row_conv.to(w.device), source, out_rows=p)
                else:
                    node = self.emit_conv(str(old.target), target, w, b, 1, source)
                nodes.append(node)
                offset += c
            return Parts(nodes, list(sizes), list(padded))
        if self.resplittable(old):  # activations of a conv
            split = self.split_plain(old.args[0], sizes, padded, shared)
            if old.op == "call_module":
                nodes = [self.graph.call_module(old.target, (p,)) for p in split.nodes]
            else:
                nodes = [self.graph.call_function(old.target, (p,)) for p in split.nodes]
            return Parts(nodes, list(sizes), list(padded))
        whole = self.plain(old)
        nodes, offset = [], 0
        for c, p in zip(sizes, padded):
            index = (slice(None), slice(offset, offset + c))
            node = self.graph.call_function(operator.getitem, (whole, index))
            if p != c:  # F.pad lists the last dim first: zeros after dim 1 only
                pad = (0, 0) * (_rank(old) - 2) + (0, p - c)
                node = self.graph.call_function(F.pad, (node, pad))
            nodes.append(node)
            offset += c
        return Parts(nodes, list(sizes), list(padded))

    def binary(self, node: torch.fx.Node) -> object:
        if len(node.args) != 2 or node.kwargs:
            return None
        a, b = node.args
        pa = self.env.get(a) if isinstance(a, torch.fx.Node) else None
        pb = self.env.get(b) if isinstance(b, torch.fx.Node) else None
        if not isinstance(pa, Parts) and not isinstance(pb, Parts):
            return None
        # split both sides along dim 1 only when it is the same dim of both: a (C, 1, 1) or
        # (1, C) operand broadcasts against other dims; scalars keep the concat
        if _rank(a) is None or _rank(a) != _rank(b):
            return None
        if isinstance(pa, Parts) and isinstance(pb, Parts):
            if sum(pa.channels) != sum(pb.channels):
                return None
            if not pa.same_layout(pb):
                # emit one side again in the other's layout where it can be (a conv's rows)
                if self.resplittable(b) and (not self.resplittable(a) or len(pb.nodes) == 1):
                    pb = self.split_plain(b, pa.channels, pa.padded)
                elif self.resplittable(a):
                    pa = self.split_plain(a, pb.channels, pb.padded)
                else:
                    return None
        else:
            parts, other = (pa, b) if isinstance(pa, Parts) else (pb, a)
            if not isinstance(other, torch.fx.Node) or _channels(other) != sum(parts.channels):
                return None  # scalars / broadcasts over channels: keep it simple
            split = self.split_plain(other, parts.channels, parts.padded)
            pa, pb = (parts, split) if isinstance(pa, Parts) else (split, parts)
        nodes = [self.graph.call_function(node.target, (x, y)) for x, y in zip(pa.nodes, pb.nodes)]
        return Parts(nodes, list(pa.channels), list(pa.padded))

    def per_part(self, node: torch.fx.Node, parts: Parts, build) -> Parts:
        return Parts(
            [build(p) for p in parts.nodes], list(parts.channels), list(parts.padded), node
        )

    def visit(self, node: torch.fx.Node) -> object:
        if node in self.mutated:  # modified in place: computed whole, in its place
            return None
        layout = self.layouts.get(node.name)
        if layout is not None and node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, nn.Conv2d) and module.groups == 1:
                return self.split_plain(node, *layout)
        first = node.args[0] if node.args else None
        parts = self.env.get(first) if isinstance(first, torch.fx.Node) else None
        rest = tuple(self.plain(a) for a in node.args[1:])
        kwargs = {k: self.plain(v) for k, v in node.kwargs.items()}
        if node.op == "call_function" and node.target is torch.cat:
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            rank = _rank(node)
            # a list of 2+ tensors (not one node holding a tuple: chunk/split), on dim 1
            # (or -rank + 1); a concat of an input changed in place later stays a copy
            if (
                isinstance(tensors, (list, tuple))
                and len(tensors) > 1
                and all(isinstance(t, torch.fx.Node) and _channels(t) for t in tensors)
                and all(t not in self.mutated for t in tensors)
                and isinstance(dim, int)
                and rank is not None
                and rank >= 2
                and dim % rank == 1
            ):
                nodes, channels, padded = [], [], []
                for t in tensors:
                    mapped = self.env[t]
                    if isinstance(mapped, Parts):
                        nodes += mapped.nodes
                        channels += mapped.channels
                        padded += mapped.padded
                    else:
                        nodes.append(mapped)
                        channels.append(_channels(t))
                        padded.append(_channels(t))
                return Parts(nodes, channels, padded)
            return None
        if node.op == "call_function" and node.target in BINARY_FUNCTIONS:
            return self.binary(node)
        if not isinstance(parts, Parts):
            module = self.modules.get(node.target) if node.op == "call_module" else None
            if self.pad_to > 1 and isinstance(module, nn.Conv2d):
                return self.padded_conv(node, module)
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            # convs and pools read a 4-D map's dim 1 as channels (a 3-D one as unbatched)
            batched = _rank(first) == 4
            if isinstance(module, nn.Conv2d) and batched:
                result = self.conv(str(node.target), module, parts)
                if isinstance(result, Parts) and len(result.nodes) == 1:
                    result.origin = node
                return result
            if isinstance(module, PER_PART_POOLS) and not batched:
                return None
            if getattr(module, "return_indices", False):  # (values, indices) pairs
                return None
            if isinstance(module, ELEMENTWISE_MODULES + PER_PART_POOLS):
                target = self.out_of_place(node.target)
                return self.per_part(
                    node, parts, lambda p: self.graph.call_module(target, (p, *rest), kwargs)
                )
            return None
        if node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
            arguments = call_arguments(node)
            if arguments and arguments.get("inplace"):  # on parts out of place (see above)
                rest = ()
                kwargs = {k: self.plain(v) for k, v in list(arguments.items())[1:]}
                kwargs["inplace"] = False
            return self.per_part(
                node, parts, lambda p: self.graph.call_function(node.target, (p, *rest), kwargs)
            )
        if node.op == "call_method" and node.target == "mean":
            dims = rest[0] if rest else kwargs.get("dim")
            dims = dims if isinstance(dims, Sequence) else [dims]
            rank = _rank(first)
            # a mean over dim 1 needs every channel; over dim 0 it moves the channels to
            # dim 0: per part only over dims >= 2 (negative dims count from the end)
            if rank and dims and all(isinstance(d, int) and d % rank >= 2 for d in dims):
                return self.per_part(
                    node, parts, lambda p: self.graph.call_method("mean", (p, *rest), kwargs)
                )
        return None

    def run(self) -> torch.fx.GraphModule:
        writes: set[torch.fx.Node] = set()  # in-place ops that dead code removal must keep
        for node in self.gm.graph.nodes:
            if node.op in ("call_module", "call_function", "call_method"):
                result = self.visit(node)
                self.env[node] = result if result is not None else self.copy(node)
            else:
                self.env[node] = self.copy(node)
            if node in self.mutated and writes_in_place(node, self.modules):
                writes.add(self.env[node])  # its result may be unused; its change is not
        out = torch.fx.GraphModule(self.gm, self.graph, class_name=type(self.gm).__name__)
        _remove_dead_code(out.graph, keep=writes)
        out.delete_all_unused_submodules()
        out.graph.lint()
        out.recompile()
        return out


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with zero rows (dim 0) appended up to ``rows``."""
    extra = rows - tensor.shape[0]
    if extra == 0:
        return tensor.detach()
    zeros = tensor.new_zeros((extra, *tensor.shape[1:]))
    return torch.cat([tensor.detach(), zeros], 0)


def _pad_cols(weight: torch.Tensor, cols: int) -> torch.Tensor:
    """A conv weight with zero input channels (dim 1) appended up to ``cols``."""
    extra = cols - weight.shape[1]
    if extra == 0:
        return weight.detach()
    zeros = weight.new_zeros((weight.shape[0], extra, *weight.shape[2:]))
    return torch.cat([weight.detach(), zeros], 1)


def _merge_small_ghost_modules(gm: torch.fx.GraphModule, block: int) -> int:
    """Compute each Ghost module whose ``2m`` maps fit in the ``m`` intrinsic maps' padded
    block as one tensor: ``cat([a, act(dw(a))])`` with ``a = act(conv(x))`` becomes
    ``act(dw2(act(conv2(x))))``, where ``conv2`` repeats the primary filters for the ghost
    rows and ``dw2`` is the identity on the first ``m`` maps and the cheap filters on the
    rest. Returns how many were merged.

    Kept apart and padded, GhostNet-1.0x's first module (8 + 8 maps at 112x112) is two
    16-channel parts of 8 real maps: the primary conv and the cheap op already compute 16
    rows each, and every consumer reads 32 channels, half of them zeros (the stem is even
    computed twice, as parts, for the residual add). Merged, the same two convs produce the
    16 real maps as one block. Only where ``pad(2m) == pad(m)``: wider modules would pay
    for the repeated primary rows. Exact: the identity taps copy, and an activation applied
    twice (ReLU of a ReLU output) changes nothing."""
    modules = dict(gm.named_modules())
    merged = 0
    for node, intrinsic, ghost in channel_concats_of_two(gm.graph):
        primary_node, relu = activation_input(intrinsic, modules)
        cheap_node, cheap_relu = activation_input(ghost, modules)
        if relu != cheap_relu or {primary_node.op, cheap_node.op} != {"call_module"}:
            continue
        primary, cheap = modules[primary_node.target], modules[cheap_node.target]
        if type(primary) is not nn.Conv2d or primary.groups != 1 or primary.padding_mode != "zeros":
            continue
        m = primary.out_channels
        if not is_depthwise(cheap, m) or cheap_node.args != (intrinsic,):
            continue
        if len(primary_node.args) != 1 or primary_node.kwargs:
            continue
        if set(intrinsic.users) != {cheap_node, node} or len(ghost.users) != 1:
            continue
        if len(cheap_node.users) != 1 or (
            intrinsic is not primary_node and len(primary_node.users) != 1
        ):
            continue
        if -(-2 * m // block) != -(-m // block):
            continue
        k = cheap.kernel_size[0]
        both = nn.Conv2d(
            primary.in_channels,
            2 * m,
            primary.kernel_size,
            primary.stride,
            primary.padding,
            primary.dilation,
            bias=True,
        )
        weight = primary.weight.detach()
        bias = primary.bias.detach() if primary.bias is not None else weight.new_zeros(m)
        both.weight.data = torch.cat([weight, weight])
        both.bias.data = torch.cat([bias, bias])
        taps = nn.Conv2d(2 * m, 2 * m, k, 1, k // 2, groups=2 * m, bias=True)
        identity = cheap.weight.new_zeros(m, 1, k, k)
        identity[:, :, k // 2, k // 2] = 1
        cheap_bias = cheap.bias.detach() if cheap.bias is not None else identity.new_zeros(m)
        taps.weight.data = torch.cat([identity, cheap.weight.detach()])
        taps.bias.data = torch.cat([identity.new_zeros(m), cheap_bias])
        index = merged
        while hasattr(gm, f"merged_ghost_{index}_primary") or hasattr(
            gm, f"merged_ghost_{index}_cheap"
        ):
            index += 1
        names = [f"merged_ghost_{index}_primary", f"merged_ghost_{index}_cheap"]
        gm.add_submodule(names[0], both)
        gm.add_submodule(names[1], taps)
        with gm.graph.inserting_before(node):
            out = gm.graph.call_module(names[0], (primary_node.args[0],))
            if relu:
                out = gm.graph.call_function(F.relu, (out,))
            out = gm.graph.call_module(names[1], (out,))
            if relu:
                out = gm.graph.call_function(F.relu, (out,))
        node.replace_all_uses_with(out)
        for dead in dict.fromkeys((node, ghost, cheap_node, intrinsic, primary_node)):
            gm.graph.erase_node(dead)  # users first
        merged += 1
    if merged:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return merged


def split_concats(
    model: nn.Module, input_size: Sequence[int], pad_to: int = 0
) -> torch.fx.GraphModule:
    """Rewrite ``model`` (eval mode, e.g. the output of :func:`ghostnet.deploy.fuse`) so the
    halves of channel concatenations stay apart wherever their consumers allow; with
    ``pad_to=B`` every part and dense conv output is also padded to a multiple of B
    channels (zero weights: outputs unchanged), and a Ghost module small enough to fit in
    one block is computed as one tensor (:func:`_merge_small_ghost_modules`)."""
    if pad_to < 0:
        raise ValueError(f"pad_to must be >= 0, got {pad_to}")

    def traced() -> torch.fx.GraphModule:
        gm = torch.fx.symbolic_trace(model.eval())
        if pad_to > 1:
            _merge_small_ghost_modules(gm, pad_to)
        ShapeProp(gm).propagate(torch.zeros(1, *input_size))
        return gm

    first = _Rewriter(traced(), pad_to)
    out = first.run()
    if not first.wanted:
        return out
    # a shared cheap conv (the stem) was computed again as parts for some op: emit it as
    # those parts from the start, so it is computed once (its other users read the parts)
    return _Rewriter(traced(), pad_to, layouts=first.wanted).run()

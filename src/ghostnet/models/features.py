"""Feature-map backbones (``create_model(..., features_only=True)``) for dense prediction.

Any model of the registry, ``torchvision:NAME``, or a user's ``nn.Module`` becomes a model
returning a list of feature maps, one per *level* (a resolution the network passes
through), with a timm-style :class:`FeatureInfo` (channels and reduction of each level).
``timm:NAME`` models use timm's own ``features_only``.

How the levels are found, with no per-model table to keep in sync: the classifier is traced
with torchvision's FX tracer, shapes are propagated for a 128x128 input, and a level's
output is the last node at that resolution through which every path of the graph passes (a
cut vertex: the output of a stage, never a tensor inside a residual block). The feature
model is then torchvision's ``create_feature_extractor`` on those node names, so its
outputs *are* the classifier's intermediate activations and its weights keep the
classifier's key names.

``output_stride`` 16 or 8 dilates the levels past it, with the same weights: the
downsampling convs (and max pools) of those levels run at stride 1, and every later spatial
conv gets the dilation that keeps its receptive field in input pixels (as torchvision's
``replace_stride_with_dilation`` does for ResNets). Levels keep their channels; their maps
are 2x/4x larger.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor

try:  # the tracer settings create_feature_extractor uses, so that node names agree with it
    from torchvision.models.feature_extraction import _set_default_tracer_kwargs
except ImportError:  # pragma: no cover - older/newer torchvision

    def _set_default_tracer_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
        return {"autowrap_modules": (math, torchvision.ops), **(kwargs or {})}


from ..errors import GhostnetError

PROBE_SIZE = 128  # square input used to find the levels (a 1/32 map is still 4x4)
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Level:
    """One resolution of a network: the graph node giving its output, channels, reduction."""

    node: str
    channels: int
    reduction: int


class FeatureInfo:
    """Per returned feature map: ``num_chs``, ``reduction`` (input side / map side) and
    ``module`` (graph node or timm module name), in timm's ``feature_info`` convention."""

    def __init__(self, entries: Sequence[dict[str, Any]]) -> None:
        self.info = [dict(e) for e in entries]

    def channels(self) -> list[int]:
        return [e["num_chs"] for e in self.info]

    def reduction(self) -> list[int]:
        return [e["reduction"] for e in self.info]

    def module_name(self) -> list[str]:
        return [e["module"] for e in self.info]

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.info[index]

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


class FeatureModel(nn.Module):
    """Wraps a feature extractor so that ``forward`` returns a list of maps (timm's
    convention) and ``feature_info`` describes them."""

    def __init__(self, body: nn.Module, feature_info: FeatureInfo, output_stride: int) -> None:
        super().__init__()
        self.body = body
        self.feature_info = feature_info
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return list(out.values()) if isinstance(out, dict) else list(out)

    def load_backbone_state_dict(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load a *classifier's* state dict (its key names): keys of layers the feature
        model dropped (the head) are ignored and returned; a missing or misshapen backbone
        key is an error."""
        own = self.body.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise GhostnetError(
                f"weights lack {len(missing)} backbone keys (first: {missing[0]}); "
                "are they for another architecture?"
            )
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise GhostnetError(
                    f"weights key {key} has shape {tuple(state[key].shape)}, the backbone "
                    f"{tuple(value.shape)}: the weights are for another width or model"
                )
        self.body.load_state_dict({k: state[k] for k in own})
        return sorted(k for k in state if k not in own)


# ------------------------------------------------------------------------ tracing


def _tracer() -> NodePathTracer:
    return NodePathTracer(**_set_default_tracer_kwargs(None))


@dataclass
class _Traced:
    nodes: list[fx.Node]
    names: dict[fx.Node, str]
    root: nn.Module


def _trace(model: nn.Module, in_chans: int, size: int = PROBE_SIZE) -> _Traced:
    """FX graph of ``model`` (eval mode) with output shapes for a ``size`` x ``size`` input."""
    was_training = model.training
    model.eval()
    try:
        tracer = _tracer()
        graph = tracer.trace(model)
        module = fx.GraphModule(tracer.root, graph)
        with torch.no_grad():
            ShapeProp(module).propagate(torch.zeros(1, in_chans, size, size))
    except GhostnetError:
        raise
    except Exception as exc:  # FX raises many types for untraceable Python control flow
        raise GhostnetError(
            f"cannot trace {type(model).__name__} for feature extraction "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); models with "
            "data-dependent Python control flow need timm:NAME features_only instead"
        ) from exc
    finally:
        model.train(was_training)
    return _Traced(list(module.graph.nodes), dict(tracer.node_to_qualname), module)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _cut_positions(nodes: list[fx.Node]) -> set[int]:
    """Positions of nodes every path from the input to the output passes through: no edge
    jumps over them (positions are a topological order)."""
    pos = {n: i for i, n in enumerate(nodes)}
    cuts, reach = set(), 0
    for i, node in enumerate(nodes):
        if reach <= i:
            cuts.add(i)
        if node.op != "get_attr":  # parameters/constants may be used anywhere
            for user in node.users:
                reach = max(reach, pos[user])
    return cuts


def _block_of(root: nn.Module, name: str, other: str) -> bool:
    """Whether nodes ``name`` and ``other`` lie inside one block: a common ancestor module
    that is not a plain ``nn.Sequential`` (a residual or inverted-residual block)."""
    a, b = name.split("."), other.split(".")
    common = []
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common.append(x)
    for depth in range(len(common), 0, -1):
        try:
            module = root.get_submodule(".".join(common[:depth]))
        except AttributeError:
            continue
        if type(module) is not nn.Sequential:
            return True
    return False


def find_levels(model: nn.Module, in_chans: int = 3) -> tuple[list[Level], _Traced]:
    """The levels of ``model``: for each resolution of its trunk, the last cut node at it
    that is not inside the block doing the next downsampling (a block's output, not its
    expansion layer), from the first layer down to the last map before global pooling."""
    traced = _trace(model, in_chans)
    cuts = _cut_positions(traced.nodes)
    found: list[tuple[int, list[Level], str | None]] = []  # reduction, cut nodes, next start
    for i, node in enumerate(traced.nodes):
        shape = _shape(node)
        if node.op in ("placeholder", "output", "get_attr") or shape is None or len(shape) != 4:
            continue
        side = shape[-2]
        if side <= 1 or PROBE_SIZE % side:
            continue
        reduction = PROBE_SIZE // side
        if found and reduction < found[-1][0]:
            continue  # an upsampled side branch (e.g. an attention gate) is not a level
        if not found or reduction > found[-1][0]:
            if found and found[-1][2] is None:
                found[-1] = (found[-1][0], found[-1][1], traced.names[node])
            found.append((reduction, [], None))
        if i in cuts:
            found[-1][1].append(Level(traced.names[node], shape[1], reduction))
    levels: list[Level] = []
    for reduction, candidates, next_start in found:
        if levels and reduction != 2 * levels[-1].reduction:
            break  # a jump other than 2x is the global pool / head, not a stage
        if next_start is not None:
            outside = [c for c in candidates if not _block_of(model, c.node, next_start)]
            candidates = outside or candidates
        if not candidates:
            break
        levels.append(candidates[-1])
    if not levels:
        raise GhostnetError(f"{type(model).__name__}: found no 4-D feature maps to return")
    return levels, traced


# ----------------------------------------------------------------------- dilation


class DilatedMaxPool2d(nn.Module):
    """A stride-s max pool run at stride 1: the window spread by ``dilation``, padded
    (right/bottom, with -inf) so that the map keeps its size."""

    def __init__(self, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.dilation * (self.kernel_size - 1)
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-math.inf)
        return F.max_pool2d(x, self.kernel_size, 1, 0, self.dilation)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _set_conv(conv: nn.Conv2d, dilation: int, stride_one: bool) -> None:
    kernel = _pair(conv.kernel_size)
    if stride_one:
        conv.stride = (1, 1)
        if any(k % 2 == 0 for k in kernel):  # a patchify conv (k=2, s=2): pad to keep size
            conv.padding = "same"  # F.conv2d pads asymmetrically for stride 1
    if max(kernel) == 1:
        return
    if isinstance(conv.padding, str):
        conv.dilation = (dilation, dilation)
        return
    old = _pair(conv.dilation)
    pad = _pair(conv.padding)
    conv.dilation = (dilation, dilation)
    # "same"-style padding grows with the dilation; keep its ratio to the old dilation
    conv.padding = tuple(p // d * dilation for p, d in zip(pad, old, strict=True))


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def dilate(model: nn.Module, levels: list[Level], output_stride: int, traced: _Traced) -> None:
    """Make ``model`` (in place) downsample at most ``output_stride`` times: in each level
    past it, strided convs/max pools run at stride 1 and later spatial convs are dilated.
    ``traced`` is ``model``'s graph (from :func:`find_levels`)."""
    if output_stride not in OUTPUT_STRIDES:
        raise GhostnetError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if levels[-1].reduction <= output_stride:
        return
    pos = {traced.names[n]: i for i, n in enumerate(traced.nodes) if n in traced.names}
    dilation, start = 1, 0
    for level in levels:
        end = pos[level.node]
        span = [
            (i, n)
            for i, n in enumerate(traced.nodes[: end + 1])
            if i > start and n.op == "call_module"
        ]
        start = end
        if level.reduction <= output_stride:
            continue
        before = dilation
        dilation *= 2
        # leaf modules may be composites (torchvision's Conv2dNormActivation): visit their parts
        parts = [
            (i, f"{n.target}.{sub}" if sub else n.target, m)
            for i, n in span
            for sub, m in model.get_submodule(n.target).named_modules()
        ]
        first = min((i for i, _, m in parts if _is_strided(m)), default=-1)
        seen: set[str] = set()
        for i, name, module in parts:
            if name in seen:
                continue
            seen.add(name)
            strided = _is_strided(module)
            # modules before the stride event, and the strided ones, see the old resolution
            d = before if strided or i < first else dilation
            if isinstance(module, nn.Conv2d):
                _set_conv(module, d, stride_one=strided)
            elif isinstance(module, nn.MaxPool2d) and strided:
                _set_module(model, name, DilatedMaxPool2d(_pair(module.kernel_size)[0], d))


def _is_strided(module: nn.Module) -> bool:
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        stride = module.stride if module.stride is not None else module.kernel_size
        return max(_pair(stride)) > 1
    return False


# ------------------------------------------------------------------------ building


def _pick(levels: list[Any], out_indices: Sequence[int] | None, what: str) -> list[int]:
    if out_indices is None:
        return list(range(len(levels)))
    picked = []
    for index in out_indices:
        if not -len(levels) <= index < len(levels):
            raise GhostnetError(
                f"out_indices {tuple(out_indices)}: {what} has {len(levels)} levels "
                f"(indices 0..{len(levels) - 1}, or negative from the end)"
            )
        picked.append(index % len(levels))
    return picked


def features_from_model(
    model: nn.Module,
    out_indices: Sequence[int] | None = None,
    output_stride: int = 32,
    in_chans: int = 3,
) -> FeatureModel:
    """A :class:`FeatureModel` over ``model`` (modified in place when dilated): its outputs
    are ``model``'s activations at the chosen levels (all by default)."""
    if output_stride not in OUTPUT_STRIDES:
        raise GhostnetError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    levels, traced = find_levels(model, in_chans)
    picked = _pick(levels, out_indices, type(model).__name__)
    dilate(model, levels, output_stride, traced)
    nodes = {levels[i].node: str(k) for k, i in enumerate(picked)}
    body = create_feature_extractor(model, return_nodes=nodes)
    info = FeatureInfo(
        [
            {
                "num_chs": levels[i].channels,
                "reduction": min(levels[i].reduction, output_stride),
                "module": levels[i].node,
                "index": i,
            }
            for i in picked
        ]
    )
    feature_model = FeatureModel(body, info, output_stride)
    _check_shapes(feature_model, in_chans)
    return feature_model


def _check_shapes(model: FeatureModel, in_chans: int) -> None:
    """Dilation works on modules; a functional downsampling (a slice, F.avg_pool2d) in a
    dilated level would leave the maps smaller than promised: refuse it clearly."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outs = model(torch.zeros(1, in_chans, PROBE_SIZE, PROBE_SIZE))
    model.train(was_training)
    for out, entry in zip(outs, model.feature_info.info, strict=True):
        want = PROBE_SIZE // entry["reduction"]
        if out.shape[-1] != want or out.shape[1] != entry["num_chs"]:
            raise GhostnetError(
                f"level {entry['module']}: {tuple(out.shape[1:])} instead of "
                f"({entry['num_chs']}, {want}, {want}) at output_stride {model.output_stride}: "
                "it downsamples outside a conv/pool module; use output_stride=32 for it"
            )


def timm_features(
    name: str,
    pretrained: bool | str | os.PathLike,
    out_indices: Sequence[int] | None,
    output_stride: int,
    kwargs: dict[str, Any],
) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise GhostnetError(
            f"{name!r} needs timm, which is not installed: pip install timm"
        ) from exc
    model_name = name.partition(":")[2]
    extra: dict[str, Any] = {"features_only": True}
    if out_indices is not None:
        extra["out_indices"] = tuple(out_indices)
    if output_stride != 32:
        extra["output_stride"] = output_stride
    try:
        model = timm.create_model(model_name, pretrained=pretrained is True, **extra, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise GhostnetError(
            f"timm cannot build {model_name} with features_only, out_indices={out_indices}, "
            f"output_stride={output_stride}: {str(exc).splitlines()[0][:200]}"
        ) from exc
    info = model.feature_info
    model.feature_info = FeatureInfo(
        [
            {"num_chs": c, "reduction": min(r, output_stride), "module": m, "index": i}
            for i, (c, r, m) in enumerate(
                zip(info.channels(), info.reduction(), info.module_name(), strict=True)
            )
        ]
    )
    if pretrained not in (False, True, None):
        from ..weights import load_state_dict_file

        state = load_state_dict_file(pretrained)
        model.load_state_dict(state, strict=False)
    return model

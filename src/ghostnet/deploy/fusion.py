"""BN folding: the deploy form of a model.

``fuse(model)`` returns an eval-mode copy with every BatchNorm folded into the conv that
feeds it: Ghost modules' primary and cheap branches, bottleneck depthwise convs, shortcuts,
ghostified convs and plain conv-BN pairs of any FX-traceable model (others: conv-BN pairs
inside ``nn.Sequential``). Outputs stay identical to float rounding.
"""

from __future__ import annotations

import copy
import itertools
import logging

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval as _torch_fuse_conv_bn
from torch.nn.utils.fusion import fuse_linear_bn_eval as _torch_fuse_linear_bn

from ..layers import GhostConv2d

log = logging.getLogger("ghostnet")


def _in_float64(fuse_fn, layer: nn.Module, bn: nn.Module) -> nn.Module:
    """torch's fusion helper evaluated in float64, then cast back: folding a BN with a tiny
    variance multiplies the weights by a large factor, and float32 arithmetic there would
    add avoidable rounding to every folded layer."""
    dtype = layer.weight.dtype
    fused = fuse_fn(copy.deepcopy(layer).double(), copy.deepcopy(bn).double())
    return fused.to(dtype)


def fuse_conv_bn_eval(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return _in_float64(_torch_fuse_conv_bn, conv, bn)


def fuse_linear_bn_eval(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    return _in_float64(_torch_fuse_linear_bn, linear, bn)


class FusedGhostConv2d(nn.Module):
    """A GhostConv2d with the BatchNorm that followed it folded in (inference only).

    The ghost half of the BN folds into the cheap depthwise conv. The intrinsic half cannot
    fold into the primary conv, because the cheap op must still see the un-normalised maps
    (folding would change its input, and zero padding makes that non-linear at the
    borders); it stays as a per-channel scale and shift (a 1x1 depthwise conv) on the
    intrinsic maps only.
    """

    def __init__(self, ghost: GhostConv2d, bn: nn.BatchNorm2d | None) -> None:
        super().__init__()
        primary = ghost.primary_conv
        if ghost.inner_bn is not None:
            primary = fuse_conv_bn_eval(primary, ghost.inner_bn)
        self.primary_conv = primary
        m = primary.out_channels
        self.cheap_operation = ghost.cheap_operation
        self._first_maps = ghost._first_maps
        self.register_buffer("ghost_sources", ghost.ghost_sources.clone(), persistent=False)
        # an inherited layer's permutation back to the conv's channel order; _fold_orders
        # moves it into the layers that follow where it can (then it is None)
        order = ghost.output_order
        self.register_buffer(
            "output_order", None if order is None else order.clone(), persistent=False
        )
        if bn is not None:
            std = torch.sqrt(bn.running_var + bn.eps)
            weight = bn.weight if bn.affine else torch.ones_like(std)
            bias = bn.bias if bn.affine else torch.zeros_like(std)
            full_scale = (weight / std).detach()
            full_shift = (bias - bn.running_mean * weight / std).detach()
            if order is not None:  # the BN is in the conv's order: map it onto cat's
                inverse = torch.argsort(order)
                full_scale, full_shift = full_scale[inverse], full_shift[inverse]
            scale, shift = full_scale[:m].clone(), full_shift[:m].clone()
            if self.cheap_operation is not None:
                cheap_bn = nn.BatchNorm2d(self.cheap_operation.out_channels, eps=0.0)
                cheap_bn.eval()
                cheap_bn.running_mean.zero_()
                cheap_bn.running_var.fill_(1.0)
                cheap_bn.weight.data.copy_(full_scale[m:])
                cheap_bn.bias.data.copy_(full_shift[m:])
                self.cheap_operation = fuse_conv_bn_eval(self.cheap_operation, cheap_bn)
        # the intrinsic half of the BN as a 1x1 depthwise conv: one op that runtimes keep
        # in their blocked layouts (ONNX Runtime's NCHWc), unlike a Mul + Add pair
        self.affine: nn.Conv2d | None = None
        if bn is not None:
            self.affine = nn.Conv2d(m, m, 1, groups=m, bias=True)
            self.affine.weight.data.copy_(scale.view(m, 1, 1, 1))
            self.affine.bias.data.copy_(shift)
        self._sources_all = (
            self.cheap_operation is not None
            and self._first_maps
            and self.cheap_operation.in_channels == m
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            return intrinsic if self.affine is None else self.affine(intrinsic)
        if self._sources_all:  # every intrinsic map feeds one ghost: no slice op at all
            source = intrinsic
        elif self._first_maps:
            source = intrinsic[:, : self.cheap_operation.in_channels]
        else:
            source = intrinsic.index_select(1, self.ghost_sources)
        ghosts = self.cheap_operation(source)
        if self.affine is not None:
            intrinsic = self.affine(intrinsic)
        out = torch.cat([intrinsic, ghosts], dim=1)
        return out if self.output_order is None else out.index_select(1, self.output_order)


class _GhostLeafTracer(torch.fx.Tracer):
    """Keeps GhostConv2d as one node, so 'GhostConv2d -> BN' can be folded as a pair."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, GhostConv2d) or super().is_leaf_module(m, qualname)


def _fold(producer: nn.Module, bn: nn.Module) -> nn.Module | None:
    if type(producer) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
        return fuse_conv_bn_eval(producer, bn)
    if isinstance(producer, GhostConv2d) and isinstance(bn, nn.BatchNorm2d):
        return FusedGhostConv2d(producer, bn)
    if type(producer) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
        return fuse_linear_bn_eval(producer, bn)
    return None


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _fuse_graph(model: nn.Module) -> nn.Module:
    graph = _GhostLeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_bn = isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d))
        if node.op != "call_module" or not is_bn:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        if len(source.users) != 1:  # the un-normalised output is used elsewhere too
            continue
        fused = _fold(modules[source.target], modules[node.target])
        if fused is None:
            continue
        _set_submodule(gm, source.target, fused)
        modules[source.target] = fused
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
    # Ghost layers with no BN after them still fold their inner BN
    for name, module in list(gm.named_modules()):
        if isinstance(module, GhostConv2d):
            _set_submodule(gm, name, FusedGhostConv2d(module, None))
    _fold_orders(gm)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


# ops that act on each channel alone (with the same function for all): a permutation of the
# channels passes through them unchanged
_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
)
_CHANNELWISE_FUNCTIONS = (
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.hardswish,
    torch.nn.functional.silu,
    torch.nn.functional.gelu,
    torch.sigmoid,
    torch.tanh,
)
_CHANNELWISE_METHODS = ("relu", "relu_", "sigmoid", "tanh")


def _fold_orders(gm: torch.fx.GraphModule) -> None:
    """Move inherited Ghost layers' output permutations into the layers that follow.

    From a ``FusedGhostConv2d`` with an ``output_order``, follow its only consumer through
    channel-wise ops (activations, depthwise convs and BNs, whose per-channel weights are
    permuted) to an ordinary conv or Ghost layer, whose input channels are permuted instead;
    the gather then disappears. Anything else on the way (a residual add, a second
    consumer, a shared module, pooling into a linear layer) keeps the order in the layer.
    """
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, FusedGhostConv2d) or layer.output_order is None:
            continue
        channelwise: list[nn.Module] = []  # depthwise convs / BNs to permute on the way
        consumer: nn.Conv2d | None = None
        current = node
        while consumer is None:
            if len(current.users) != 1:
                break
            user = next(iter(current.users))
            if user.args[:1] != (current,) or any(
                isinstance(a, torch.fx.Node) for a in (*user.args[1:], *user.kwargs.values())
            ):
                break
            if user.op == "call_module":
                module = modules[user.target]
                if isinstance(module, _CHANNELWISE_MODULES):
                    current = user  # stateless: may be shared (one ReLU called twice)
                    continue
                if calls[user.target] != 1:  # its weights are about to be permuted
                    break
                elif isinstance(module, nn.BatchNorm2d) or (
                    type(module) is nn.Conv2d
                    and module.groups == module.in_channels == module.out_channels
                ):
                    channelwise.append(module)
                elif type(module) is nn.Conv2d and module.groups == 1:
                    consumer = module
                elif isinstance(module, FusedGhostConv2d):
                    consumer = module.primary_conv
                else:
                    break
            elif not (
                (user.op == "call_function" and user.target in _CHANNELWISE_FUNCTIONS)
                or (user.op == "call_method" and user.target in _CHANNELWISE_METHODS)
            ):
                break
            current = user
        if consumer is None:
            continue
        inverse = torch.argsort(layer.output_order)
        with torch.no_grad():
            for module in channelwise:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensor = getattr(module, name, None)
                    if tensor is not None:
                        tensor.copy_(tensor[inverse])
            consumer.weight.copy_(consumer.weight[:, inverse])
        layer.output_order = None


def _fuse_sequential(model: nn.Module) -> int:
    """Fallback for models FX cannot trace: conv-BN pairs adjacent in an nn.Sequential."""
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq._modules.items())
        for (name_a, a), (name_b, b) in itertools.pairwise(children):
            if (fused := _fold(a, b)) is not None:
                seq._modules[name_a] = fused
                seq._modules[name_b] = nn.Identity()
                count += 1
    for name, module in list(model.named_modules()):
        if isinstance(module, GhostConv2d):
            _set_submodule(model, name, FusedGhostConv2d(module, None))
    return count


def fuse(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into the preceding convs."""
    from ..reparam import reparameterize  # multi-branch blocks (GhostNetV3) fold first

    model = copy.deepcopy(reparameterize(model)).eval()
    try:
        return _fuse_graph(model)
    except Exception as exc:  # torch.fx raises many types for untraceable code
        folded = _fuse_sequential(model)
        remaining = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        log.warning(
            "%s is not FX-traceable (%s): folded %d conv-BN pairs found in nn.Sequential, "
            "%d BatchNorm layers left",
            type(model).__name__,
            str(exc).splitlines()[0][:120],
            folded,
            remaining,
        )
        return model


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

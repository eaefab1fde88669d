"""The Ghost module's cheap op and concatenation as one CPU kernel.

After BN folding a Ghost module is ``cat([a, act(depthwise(a))], 1)`` with ``a`` the
primary conv's output. A runtime runs the depthwise conv, the activation (fused or not) and
the concat as separate passes over the maps, and on a CPU those passes are memory-bound:
for the 1x1 Ghost module 256 -> 256 at 28x28 they cost as much as the half of the 1x1 conv
the module saves (README, "The Ghost module at its MAC ratio"). ``cheap_cat.cpp`` reads
``a`` once and writes each output pixel once, channels innermost (vectorised), with the
``k`` input rows a pixel needs still in cache.

``fuse_cheap_ops(model)`` finds that pattern in a fused (``deploy.fuse``) graph and swaps in
``CheapCat``; PyTorch inference (eager or torch.compile, where ``ghostnet::cheap_cat`` is an
opaque custom op) then runs it. It is built on first use with the machine's C++ compiler
(``torch.utils.cpp_extension``, ~40 s, cached in ``$GHOSTNET_CACHE/kernels``, default
``~/.cache/ghostnet/kernels``). ONNX export keeps the standard ops.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import operator
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GhostnetError
from ..fxgraph import activation_input, channel_concats_of_two, is_depthwise, writes_in_place

SOURCE = Path(__file__).with_name("cheap_cat.cpp")


def _cpu_tag() -> str:
    """A short hash of the CPU's flags: the build uses -march=native, so a cached binary
    must not be reused on a CPU with other instructions (a shared home directory)."""
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = "unknown"
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


# Older torch guards a build with a lock file whose mere existence blocks (FileBaton): a
# killed build leaves it and every later build waits forever. Newer torch holds an OS lock
# on that file (filelock), which dies with its process: the file must then stay.
STALE_LOCK_S = 600


def _build_directory(name: str) -> Path:
    """``$GHOSTNET_CACHE/kernels/NAME``, else ``~/.cache/ghostnet/kernels/NAME``; with a
    torch that uses lock files, a lock older than any real build is removed."""
    from torch.utils import cpp_extension

    base = os.environ.get("GHOSTNET_CACHE") or Path.home() / ".cache" / "ghostnet"
    folder = Path(base) / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    if not hasattr(cpp_extension, "FileLock"):
        with contextlib.suppress(OSError):
            if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink()
    return folder


@cache
def load_extension() -> Any:
    """Build (first call, ~40 s) or load the compiled kernel; one-line error if impossible."""
    from torch.utils.cpp_extension import load

    name = f"ghostnet_cheap_cat_{_cpu_tag()}"
    try:
        return load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native"],
            build_directory=str(_build_directory(name)),
            verbose=False,
        )
    except Exception as exc:  # compiler, ninja or headers missing: many exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GhostnetError(
            "the fused Ghost kernel could not be built (it needs a C++ compiler, ninja and "
            f"the Python headers; or use a backend without -kernel): {first}"
        ) from exc


@torch.library.custom_op("ghostnet::cheap_cat", mutates_args=())
def _cheap_cat_op(
    intrinsic: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    relu: bool,
) -> torch.Tensor:
    return load_extension().cheap_cat(intrinsic, weight, bias, scale, shift, relu)


@_cheap_cat_op.register_fake
def _(
    intrinsic: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    relu: bool,
) -> torch.Tensor:
    n, m, h, w = intrinsic.shape
    return torch.empty(
        (n, m + weight.shape[0], h, w),
        dtype=intrinsic.dtype,
        device=intrinsic.device,
        memory_format=torch.channels_last,
    )


def cheap_cat(
    intrinsic: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    relu: bool = False,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cat([a, act(depthwise(a[:, :g]) + bias)], 1)`` in one pass (float32 or bfloat16
    maps, float32 accumulation, CPU;
    ``weight`` is (g, 1, k, k), k odd, zero padding k // 2); channels_last output. With
    ``scale`` and ``shift`` (one per map of ``a``) the first half is ``scale * a + shift``
    while the ghosts still read ``a``: a ghostified conv whose BN was folded."""
    if (scale is None) != (shift is None):
        raise GhostnetError("cheap_cat: give both scale and shift, or neither")
    none = intrinsic.new_empty(0)
    scale = none if scale is None else scale
    shift = none if shift is None else shift
    return _cheap_cat_op(intrinsic, weight, bias, scale, shift, relu)


class CheapCat(nn.Module):
    """A Ghost module's depthwise cheap op (+ReLU) and concat, as one kernel.

    ``ghosts`` of the conv's outputs are kept (a module sliced to fewer than 2m channels);
    ``affine`` (a 1x1 depthwise conv) normalises the intrinsic half, as in a
    ``FusedGhostConv2d``. Off the kernel's ground (not float32, not CPU, or a gradient
    needed: it has no backward) it computes the same thing with standard ops.
    """

    def __init__(
        self, conv: nn.Conv2d, ghosts: int, relu: bool, affine: nn.Conv2d | None = None
    ) -> None:
        super().__init__()
        weight = conv.weight.detach()[:ghosts].clone()
        bias = conv.bias.detach()[:ghosts].clone() if conv.bias is not None else None
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias if bias is not None else weight.new_zeros(ghosts))
        self.relu = relu
        scale = shift = None
        if affine is not None:
            scale = affine.weight.detach().reshape(-1).clone()
            shift = affine.bias.detach().clone() if affine.bias is not None else None
            shift = shift if shift is not None else scale.new_zeros(scale.shape)
        self.register_buffer("scale", scale)  # None: the intrinsic half is copied as it is
        self.register_buffer("shift", shift)

    def forward(self, intrinsic: torch.Tensor) -> torch.Tensor:
        kernel_ground = (
            intrinsic.dtype in (torch.float32, torch.bfloat16)
            and intrinsic.device.type == "cpu"
            and not (torch.is_grad_enabled() and intrinsic.requires_grad)
        )
        if kernel_ground:
            return cheap_cat(intrinsic, self.weight, self.bias, self.relu, self.scale, self.shift)
        ghosts = self.weight.shape[0]
        out = F.conv2d(
            intrinsic[:, :ghosts],
            self.weight.to(intrinsic.dtype),
            self.bias.to(intrinsic.dtype),
            padding=self.weight.shape[-1] // 2,
            groups=ghosts,
        )
        first = intrinsic
        if self.scale is not None:
            view = (1, -1, 1, 1)
            scale, shift = self.scale.to(intrinsic.dtype), self.shift.to(intrinsic.dtype)
            first = intrinsic * scale.view(view) + shift.view(view)
        return torch.cat([first, F.relu(out) if self.relu else out], dim=1)

    def extra_repr(self) -> str:
        g, _, k, _ = self.weight.shape
        affine = ", affine" if self.scale is not None else ""
        return f"ghosts={g}, kernel={k}x{k}, relu={self.relu}{affine}"


class GhostConvKernel(nn.Module):
    """A ``FusedGhostConv2d`` (a ghostified conv, BN folded) with its intrinsic-half BN,
    cheap op and concat in one ``CheapCat`` pass; the output order (an inherited layer's)
    is kept."""

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.primary_conv = fused.primary_conv
        cheap = fused.cheap_operation
        self.cheap_cat = CheapCat(cheap, cheap.out_channels, relu=False, affine=fused.affine)
        order = fused.output_order
        self.register_buffer("output_order", None if order is None else order.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cheap_cat(self.primary_conv(x))
        return out if self.output_order is None else out.index_select(1, self.output_order)


def _kept_channels(node: torch.fx.Node, total: int) -> tuple[torch.fx.Node, int]:
    """A cat whose one user is ``[:, :n]`` -> (that slice, n); else (the cat, all)."""
    if len(node.users) != 1:
        return node, total
    user = next(iter(node.users))
    if user.op != "call_function" or user.target is not operator.getitem:
        return node, total
    index = user.args[1]
    full = slice(None)
    if (
        isinstance(index, tuple)
        and len(index) == 2
        and index[0] == full
        and isinstance(index[1], slice)
        and index[1].start in (None, 0)
        and index[1].step in (None, 1)
        and isinstance(index[1].stop, int)
        and 0 < index[1].stop <= total
    ):
        return user, index[1].stop
    return node, total


def _kernel_ready(module: nn.Module) -> bool:
    """A ghostified conv (BN folded) whose ghosts come from its first maps, one each, by a
    stride-1 depthwise conv: what ``cheap_cat`` computes."""
    from ..deploy import FusedGhostConv2d

    if not isinstance(module, FusedGhostConv2d) or module.cheap_operation is None:
        return False
    cheap = module.cheap_operation
    m = module.primary_conv.out_channels
    return (
        module._first_maps
        and cheap.in_channels <= m
        and is_depthwise(cheap, cheap.in_channels)
        and (module.affine is None or module.affine.out_channels == m)
    )


def fuse_cheap_ops(model: nn.Module) -> nn.Module:
    """``model`` (BN-folded by ``deploy.fuse`` first if it is not an FX graph yet; the
    argument itself is not changed) with every ``cat([a, act(depthwise(a))], 1)``
    (optionally sliced to fewer channels) computed by ``CheapCat``, and every ghostified
    conv (``FusedGhostConv2d``) by ``GhostConvKernel``. Builds the kernel now, so a missing
    compiler fails here, once. A model torch.fx cannot trace gets only the second."""
    from ..deploy import _set_submodule, fuse

    load_extension()
    out = copy.deepcopy(model) if isinstance(model, torch.fx.GraphModule) else fuse(model)
    if isinstance(out, torch.fx.GraphModule):
        _fuse_graph_cheap_ops(out)
    for name, module in list(out.named_modules()):
        if _kernel_ready(module):
            _set_submodule(out, name, GhostConvKernel(module))
    if isinstance(out, torch.fx.GraphModule):
        out.delete_all_unused_submodules()
        out.recompile()
    return out


def _fuse_graph_cheap_ops(gm: torch.fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    count = 0
    for node, intrinsic, ghost in channel_concats_of_two(gm.graph):
        conv_node, relu = activation_input(ghost, modules)
        conv = modules.get(conv_node.target) if conv_node.op == "call_module" else None
        if conv is None or conv_node.args != (intrinsic,) or len(conv_node.users) != 1:
            continue
        if ghost is not conv_node and len(ghost.users) != 1:
            continue
        # an in-place user would change the intrinsic maps after the cheap op reads them
        if any(writes_in_place(user, modules) for user in intrinsic.users):
            continue
        m = conv.in_channels if isinstance(conv, nn.Conv2d) else 0
        if not is_depthwise(conv, m):
            continue
        target, kept = _kept_channels(node, 2 * m)
        if kept <= m:  # no ghost is kept: nothing for the kernel to do
            continue
        name = f"cheap_cat_{count}"
        while hasattr(gm, name):
            count += 1
            name = f"cheap_cat_{count}"
        count += 1
        gm.add_submodule(name, CheapCat(conv, kept - m, relu))
        with gm.graph.inserting_before(target):
            fused = gm.graph.call_module(name, (intrinsic,))
        target.replace_all_uses_with(fused)
        for dead in dict.fromkeys((target, node, ghost, conv_node)):  # users first
            gm.graph.erase_node(dead)
    gm.graph.lint()

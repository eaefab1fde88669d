"""Parameter and MAC counting the way the paper counts.

MACs are the multiply-accumulates of convolutions and linear layers (BN is folded at
inference, activations and additions are free), taken from ``torch.utils.flop_counter``
(FLOPs / 2). Parameters are the registered parameters; ``params_used`` counts only those
of modules that actually ran in the forward pass.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import GhostnetError


@dataclass
class LayerCount:
    """One leaf module's share of the model."""

    name: str
    kind: str
    params: int
    macs: int


@dataclass
class Profile:
    """Result of :func:`profile`: totals plus a per-layer breakdown."""

    params: int
    macs: int
    params_used: int
    input_size: tuple[int, ...]
    layers: list[LayerCount] = field(default_factory=list)

    def grouped(self, depth: int = 2) -> list[LayerCount]:
        """Layers merged by the first ``depth`` components of their names (e.g. stages)."""
        groups: OrderedDict[str, LayerCount] = OrderedDict()
        for layer in self.layers:
            key = ".".join(layer.name.split(".")[:depth])
            if key not in groups:
                kind = layer.kind if key == layer.name else "group"
                groups[key] = LayerCount(key, kind, 0, 0)
            groups[key].params += layer.params
            groups[key].macs += layer.macs
        return list(groups.values())

    def table(self, depth: int | None = 2) -> str:
        """A plain-text table of params and MACs per group (``depth=None``: every layer)."""
        rows = self.layers if depth is None else self.grouped(depth)
        rows = [r for r in rows if r.params or r.macs]
        width = max([len(r.name) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'kind':<18} {'params':>12} {'MACs':>15} {'MACs %':>7}"]
        for r in rows:
            share = 100.0 * r.macs / self.macs if self.macs else 0.0
            lines.append(
                f"{r.name:<{width}}  {r.kind:<18} {r.params:>12,} {r.macs:>15,} {share:>6.1f}%"
            )
        lines.append(
            f"{'total':<{width}}  {'':<18} {self.params:>12,} {self.macs:>15,} {100:>6.1f}%"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def profile(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    device: torch.device | str | None = None,
) -> Profile:
    """Count ``model``'s parameters and MACs for one image of ``input_size`` (C, H, W).

    The model runs once in eval mode under ``FlopCounterMode``; its training flag is restored.
    """
    if len(input_size) != 3 or any(int(s) < 1 for s in input_size):
        raise GhostnetError(f"input size must be C,H,W with positive ints, got {tuple(input_size)}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *(int(s) for s in input_size), device=device)

    ran: set[int] = set()

    def mark(module: nn.Module, _inputs: object) -> None:
        ran.add(id(module))

    was_training = model.training
    model.eval()
    hooks = [m.register_forward_pre_hook(mark) for m in model.modules()]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except RuntimeError as exc:
        raise GhostnetError(
            f"the model cannot run on an input of size {tuple(input_size)}: {exc}".splitlines()[0]
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    flops_by_module = counter.get_flop_counts()
    root = type(model).__name__

    def total_flops(name: str) -> int:
        return sum(flops_by_module.get(f"{root}.{name}", {}).values())

    layers: list[LayerCount] = []
    for name, module in model.named_modules():
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        children = [f"{name}.{child}" for child, _ in module.named_children()]
        if not name or (children and not own_params):
            continue
        # a module's own MACs: what ran inside it but not inside one of its children
        own_macs = (total_flops(name) - sum(total_flops(child) for child in children)) // 2
        if own_params or own_macs:  # activations, pooling etc. count for nothing
            layers.append(LayerCount(name, type(module).__name__, own_params, int(own_macs)))

    params = sum(p.numel() for p in model.parameters())
    params_used = sum(
        p.numel() for m in model.modules() if id(m) in ran for p in m.parameters(recurse=False)
    )
    return Profile(
        params=int(params),
        macs=int(counter.get_total_flops() // 2),
        params_used=int(params_used),
        input_size=tuple(int(s) for s in input_size),
        layers=layers,
    )


@dataclass
class ModuleComparison:
    """An ordinary conv vs a Ghost module with the same in/out channels (paper Sec. 3.1)."""

    channels: int
    kernel_size: int
    ratio: int
    dw_size: int
    theoretical_speedup: float  # r_s of the paper
    theoretical_compression: float  # r_c of the paper
    conv_macs: int
    ghost_macs: int
    conv_params: int
    ghost_params: int
    conv_ms: float
    ghost_ms: float

    @property
    def measured_speedup(self) -> float:
        return self.conv_macs / self.ghost_macs

    @property
    def measured_compression(self) -> float:
        return self.conv_params / self.ghost_params

    @property
    def time_ratio(self) -> float:
        return self.conv_ms / self.ghost_ms


def theoretical_ratios(
    in_chs: int, out_chs: int, kernel_size: int, ratio: int, dw_size: int
) -> tuple[float, float]:
    """The paper's r_s and r_c: n c k^2 / ((n/s) c k^2 + (s-1)(n/s) d^2) (both the same form;
    spatial size cancels). Both tend to s when d ~ k and s << c."""
    n, c, k, s, d = out_chs, in_chs, kernel_size, ratio, dw_size
    value = n * c * k * k / ((n / s) * c * k * k + (s - 1) * (n / s) * d * d)
    return value, value


def compare_module(
    channels: int = 256,
    kernel_size: int = 1,
    ratio: int = 2,
    dw_size: int = 3,
    spatial: int = 28,
    batch: int = 8,
    repeats: int = 21,
) -> ModuleComparison:
    """Measure MACs, params and CPU time of Conv2d+BN vs GhostModule (no ReLU, eval mode)."""
    import statistics
    import time

    from .layers import GhostModule

    conv = nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2, bias=False),
        nn.BatchNorm2d(channels),
    ).eval()
    ghost = GhostModule(channels, channels, kernel_size, ratio, dw_size, relu=False).eval()
    size = (channels, spatial, spatial)
    pc, pg = profile(conv, size), profile(ghost, size)
    x = torch.randn(batch, *size)
    times: dict[str, list[float]] = {"conv": [], "ghost": []}
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            for module in (conv, ghost):
                module(x)
        for _ in range(repeats):  # interleaved, so drift hits both alike
            for key, module in (("conv", conv), ("ghost", ghost)):
                start = time.perf_counter()
                module(x)
                times[key].append((time.perf_counter() - start) * 1e3)
    r_s, r_c = theoretical_ratios(channels, channels, kernel_size, ratio, dw_size)
    return ModuleComparison(
        channels,
        kernel_size,
        ratio,
        dw_size,
        r_s,
        r_c,
        pc.macs,
        pg.macs,
        pc.params,
        pg.params,
        statistics.median(times["conv"]),
        statistics.median(times["ghost"]),
    )

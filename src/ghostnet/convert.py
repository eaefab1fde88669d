"""ghostify: turn the ordinary convolutions of any CNN into Ghost layers.

A pure model -> model transform: every eligible ``nn.Conv2d`` (plain class, ``groups == 1``)
becomes a :class:`~ghostnet.layers.GhostConv2d` with the same kernel, stride, padding,
dilation and bias, so the network keeps its output shape. Depthwise and grouped convs are
already cheap and stay; the stem conv stays by default, as in the paper.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .counting import profile
from .errors import GhostnetError
from .layers import DFCGhostConv2d, GhostConv2d, check_ghost_args


@dataclass
class ConvChange:
    """One conv considered by ghostify, and what happened to it."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    ratio: int | None  # None: kept as it is
    reason: str  # "converted", or why it was kept


@dataclass
class GhostifyReport:
    """Which layers changed, and the params/MACs before and after."""

    changes: list[ConvChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0

    @property
    def converted(self) -> list[ConvChange]:
        return [c for c in self.changes if c.ratio is not None]

    def summary(self) -> str:
        """A short human-readable report (the CLI prints this)."""
        lines = [
            f"{'layer':<40} {'in':>5} {'out':>5} {'k':>5} {'stride':>6} {'s':>3}  result",
        ]
        for c in self.changes:
            k = "x".join(map(str, c.kernel_size))
            st = "x".join(map(str, c.stride))
            s = str(c.ratio) if c.ratio is not None else "-"
            lines.append(
                f"{c.name:<40} {c.in_channels:>5} {c.out_channels:>5} {k:>5} {st:>6} {s:>3}  "
                f"{c.reason}"
            )
        lines.append(
            f"converted {len(self.converted)} of {len(self.changes)} convs; "
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({_ratio(self.params_before, self.params_after)}), "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} "
            f"({_ratio(self.macs_before, self.macs_after)})"
        )
        return "\n".join(lines)


def _ratio(before: int, after: int) -> str:
    return f"{before / after:.2f}x fewer" if after else "n/a"


def _matches(name: str, patterns: Iterable[str] | None) -> bool:
    return patterns is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _as_patterns(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _plan(
    model: nn.Module,
    ratio: int | Mapping[str, int],
    skip_first: bool,
    include: list[str] | None,
    exclude: list[str] | None,
) -> list[ConvChange]:
    """Decide, conv by conv (in registration order), what ghostify will do."""
    plan: list[ConvChange] = []
    first_seen = False
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        change = ConvChange(
            name,
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            tuple(module.stride),
            None,
            "",
        )
        plan.append(change)
        is_first = not first_seen
        first_seen = True
        if type(module) is not nn.Conv2d:
            change.reason = f"kept: {type(module).__name__} is a Conv2d subclass"
        elif module.groups != 1:
            change.reason = (
                "kept: depthwise" if module.groups == module.in_channels else "kept: grouped"
            )
        elif is_first and skip_first:
            change.reason = "kept: first conv (skip_first)"
        elif include is not None and not _matches(name, include):
            change.reason = "kept: not in include"
        elif _matches(name, exclude):
            change.reason = "kept: excluded"
        else:
            layer_ratio = ratio.get(name, 1) if isinstance(ratio, Mapping) else ratio
            if layer_ratio <= 1:
                change.reason = "kept: ratio 1"
            elif module.out_channels < 2:
                change.reason = "kept: one output channel"
            else:
                change.ratio = int(layer_ratio)
                change.reason = "converted"
    return plan


def ghostify(
    model: nn.Module,
    ratio: int | Mapping[str, int] = 2,
    dw_size: int = 3,
    *,
    skip_first: bool = True,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    inplace: bool = False,
    inner_bn: bool = False,
    init: str = "random",
    calibration: Any = None,
    inherited: bool = False,
    fit_on: str = "converted",
    attention: str | None = None,
) -> nn.Module:
    """Return ``model`` with its eligible convs replaced by ``GhostConv2d``.

    ``ratio`` is one s for all layers or a mapping ``{conv name: s}`` (e.g. the suggested
    ratios of ``ghostnet analyze``; unnamed convs are kept). ``include``/``exclude`` are
    ``fnmatch`` patterns on module names (``"layer1.*"``). The new layers get fresh weights,
    or with ``init="inherit"`` the trained conv's: ``m = ceil(n/s)`` of its filters, the
    other maps as fitted cheap ops of them, on ``calibration`` images (a tensor or a
    DataLoader; see :mod:`ghostnet.inherit`). ``inherited=True`` builds that layout with
    fresh weights, for loading an inherited model's state_dict (``ModelSpec`` records it).
    ``attention="dfc"`` gates every new Ghost layer with GhostNetV2's DFC attention
    (:class:`~ghostnet.layers.DFCGhostConv2d`, fresh weights).
    """
    if attention not in (None, "dfc"):
        raise GhostnetError(f'ghostify attention must be None or "dfc", got {attention!r}')
    if init not in ("random", "inherit"):
        raise GhostnetError(f'ghostify init must be "random" or "inherit", got {init!r}')
    images = None
    if init == "inherit":
        from .inherit import calibration_tensor  # analysis code, only needed here

        images = calibration_tensor(calibration)  # too few images: fail before any work
        inherited = True
    elif calibration is not None:
        raise GhostnetError('calibration images are only used with init="inherit"')
    ratios = ratio.values() if isinstance(ratio, Mapping) else [ratio]
    for r in ratios:
        check_ghost_args(2, r, dw_size)
    include_p, exclude_p = _as_patterns(include), _as_patterns(exclude)
    plan = _plan(model, ratio, skip_first, include_p, exclude_p)
    todo = [c for c in plan if c.ratio is not None]
    if not todo:
        if not plan:
            raise GhostnetError(
                f"ghostify found no nn.Conv2d in {type(model).__name__}: nothing to convert"
            )
        reasons = sorted({c.reason for c in plan})
        raise GhostnetError(
            f"ghostify found nothing to convert in {type(model).__name__} "
            f"({len(plan)} convs, all {'; '.join(reasons)}); check include/exclude/skip_first"
        )
    # init="inherit" reads the original convs' outputs, so it needs the model unchanged
    original = model if (not inplace or images is None) else copy.deepcopy(model)
    if not inplace:
        model = copy.deepcopy(model)
    for change in todo:
        parent_name, _, attr = change.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attr)
        setattr(
            parent,
            attr,
            GhostConv2d.from_conv(
                conv, ratio=change.ratio, dw_size=dw_size, inner_bn=inner_bn, inherited=inherited
            ),
        )
    if images is not None:
        from .inherit import inherit_weights

        inherit_weights(original, model, [c.name for c in todo], images, fit_on=fit_on)
    if attention == "dfc":  # after inherit, which fits the bare Ghost layers
        for change in todo:
            parent_name, _, attr = change.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, DFCGhostConv2d(getattr(parent, attr)))
    return model


def ghostify_report(
    model: nn.Module,
    ratio: int | Mapping[str, int] = 2,
    dw_size: int = 3,
    *,
    input_size: Sequence[int] = (3, 224, 224),
    **kwargs,
) -> tuple[nn.Module, GhostifyReport]:
    """Like :func:`ghostify` (never in place), plus a report of what changed and the counts."""
    kwargs.pop("inplace", None)
    converted = ghostify(model, ratio, dw_size, inplace=False, **kwargs)
    plan = _plan(
        model,
        ratio,
        kwargs.get("skip_first", True),
        _as_patterns(kwargs.get("include")),
        _as_patterns(kwargs.get("exclude")),
    )
    before, after = profile(model, input_size), profile(converted, input_size)
    report = GhostifyReport(plan, before.params, after.params, before.macs, after.macs)
    return converted, report

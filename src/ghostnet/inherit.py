"""Ghost layers that inherit a trained conv's weights: ``ghostify(init="inherit")``.

For a conv with ``n`` output maps and ratio ``s``, the cheap-op fits of the redundancy
analysis (:func:`~ghostnet.analysis.redundancy.fit_pairs`, map j from map i by a ``d x d``
depthwise filter + bias, least squares over calibration images) pick exactly
``m = ceil(n/s)`` intrinsic maps, those that best reproduce the others
(:func:`~ghostnet.analysis.redundancy.choose_intrinsic`). The Ghost layer's primary conv
keeps their trained filters (and bias); each other map becomes a ghost whose cheap filter
and bias are its least-squares fit from its best intrinsic map; the layer's output order
puts every map back where the conv had it. Where a trained map *is* a depthwise filter of
another, the Ghost layer reproduces the conv exactly.

Layer by layer, in execution order, the fits use the *partially converted* network
(``fit_on="converted"``, the default): the sources are the intrinsic maps as the Ghost layer
will compute them, from inputs already changed by the Ghost layers before it, and the
targets are the original network's maps. Each layer's cheap ops thus also absorb part of
the error the earlier layers introduced, instead of fitting a relation between maps the
converted network never sees. ``fit_on="original"`` fits every layer on the original
network's maps alone (one relation per layer, errors accumulate); it is kept to measure the
difference (README: ResNet-20, s=2, both at 0 epochs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .analysis.redundancy import choose_intrinsic, fit_pairs
from .errors import GhostnetError
from .layers import GhostConv2d

# Fewer images than this give fits that describe those few images, not the layer: the
# selection ranks maps by how well they explain each other across images.
MIN_CALIBRATION_IMAGES = 16
FIT_ON = ("converted", "original")


@dataclass
class LayerFit:
    """How one conv became an inherited Ghost layer."""

    name: str
    channels: int
    intrinsic: list[int]  # the conv's maps kept as intrinsic (original channel indices)
    ghosts: list[int]  # the conv's maps made by the cheap op, in cheap-op order
    sources: list[int]  # for each ghost, the original index of the map it is made from
    errors: list[float]  # for each ghost, relative error 1 - R^2 of its fit
    seconds: float
    # relative error of the whole layer's output (all n maps) vs the original conv's, on
    # the calibration images, before and after reconstruction (None: not refined)
    output_error_before: float | None = None
    output_error_after: float | None = None

    @property
    def mean_error(self) -> float:
        return sum(self.errors) / len(self.errors) if self.errors else 0.0

    @property
    def median_error(self) -> float:
        return float(torch.tensor(self.errors).median()) if self.errors else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            mean_error=self.mean_error,
            median_error=self.median_error,
            max_error=max(self.errors, default=0.0),
        )
        return data


def calibration_tensor(calibration: Any) -> torch.Tensor:
    """Calibration images as one (N, C, H, W) tensor: a tensor, or a DataLoader / iterable
    of batches (tensors, ``(images, targets)`` pairs or :class:`~ghostnet.data.Batch`)."""
    if calibration is None:
        raise GhostnetError(
            'init="inherit" needs calibration images (calibration=a (N, C, H, W) tensor or '
            "a DataLoader of images)"
        )
    if isinstance(calibration, torch.Tensor):
        images = calibration
    elif isinstance(calibration, Iterable):
        parts = []
        for batch in calibration:
            if hasattr(batch, "images"):
                batch = batch.images
            elif isinstance(batch, (tuple, list)):
                batch = batch[0]
            if not isinstance(batch, torch.Tensor):
                raise GhostnetError(
                    f"calibration batches must hold image tensors, got {type(batch).__name__}"
                )
            parts.append(batch)
        images = torch.cat(parts) if parts else torch.empty(0, 3, 1, 1)
    else:
        raise GhostnetError(
            f"calibration must be an image tensor or a DataLoader, got {type(calibration).__name__}"
        )
    if images.dim() != 4:
        raise GhostnetError(
            f"calibration images must be 4-D (N, C, H, W), got shape {tuple(images.shape)}"
        )
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise GhostnetError(
            f'init="inherit" needs at least {MIN_CALIBRATION_IMAGES} calibration images to fit '
            f"the cheap ops, got {len(images)}; pass more (256 is a good number)"
        )
    return images


class _Stop(Exception):
    """Raised by a hook once the wanted output is recorded: the rest of the net is skipped."""


@torch.no_grad()
def _capture(
    model: nn.Module, name: str, images: torch.Tensor, batch_size: int, *, inputs: bool
) -> torch.Tensor:
    """The output (or, with ``inputs=True``, the input) of submodule ``name`` over
    ``images`` (eval mode), on the CPU, float32; the rest of the net is skipped."""
    module = model.get_submodule(name)
    kept: list[torch.Tensor] = []

    def record(tensor: torch.Tensor) -> None:
        kept.append(tensor.detach().float().cpu())
        raise _Stop

    if inputs:
        handle = module.register_forward_pre_hook(lambda _m, args: record(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, output: record(output))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(images), batch_size):
            with contextlib.suppress(_Stop):
                model(images[start : start + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(kept)


def _output_of(model: nn.Module, name: str, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return _capture(model, name, images, batch_size, inputs=False)


def _input_of(model: nn.Module, name: str, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return _capture(model, name, images, batch_size, inputs=True)


def _relative_error(layer: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> float:
    """||layer(inputs) - target||^2 / ||target - mean||^2 over all maps and images."""
    with torch.no_grad():
        residual = sum(
            (layer(inputs[i : i + 64]) - target[i : i + 64]).pow(2).sum()
            for i in range(0, len(inputs), 64)
        )
        spread = (target - target.mean(dim=(0, 2, 3), keepdim=True)).pow(2).sum()
    return float(residual / spread.clamp_min(1e-12))


def refine_layer(
    ghost: GhostConv2d,
    inputs: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[float, float]:
    """Layer-wise reconstruction: Adam on the inherited Ghost layer's weights (primary conv
    and cheap op together) so that ``ghost(inputs)`` matches the original conv's output
    ``target`` (mean squared error). The least-squares start fits each ghost from one
    intrinsic map with the primary filters frozen; letting the primary filters move too lets
    the ``m`` kept maps serve the ghosts as well as themselves, which the per-pair fits
    cannot. Returns the layer's relative output error before and after."""
    before = _relative_error(ghost, inputs, target)
    params = [p for p in ghost.parameters() if p.requires_grad]
    if steps <= 0 or not params:
        return before, before
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    scale = target.var().clamp_min(1e-12)
    snapshot = {k: v.detach().clone() for k, v in ghost.state_dict().items()}
    was_training = ghost.training
    ghost.train()
    with torch.enable_grad():
        for _ in range(steps):
            pick = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
            loss = (ghost(inputs[pick]) - target[pick]).pow(2).mean() / scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    ghost.train(was_training)
    after = _relative_error(ghost, inputs, target)
    if not after < before:  # never hand back a worse layer than the least-squares one
        ghost.load_state_dict(snapshot)
        after = before
    return before, after


def execution_order(model: nn.Module, names: Sequence[str], sample: torch.Tensor) -> list[str]:
    """``names`` in the order a forward pass runs them (registration order is not always)."""
    seen: list[str] = []
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda *_args, name=name: seen.append(name) if name not in seen else None
        )
        for name in names
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(sample.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen + [name for name in names if name not in seen]


def _swap(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, module)
    return old


def inherit_layer(
    conv: nn.Conv2d,
    ghost: GhostConv2d,
    sources_maps: torch.Tensor,
    target_maps: torch.Tensor | None,
    *,
    max_positions: int = 16384,
    seed: int = 0,
    name: str = "",
) -> LayerFit:
    """Fill the inherited Ghost layer ``ghost`` from ``conv``.

    ``sources_maps``: the conv's output maps (N, n, H, W) as the converted network will feed
    them; ``target_maps``: the original network's maps (``None``: the same tensor).
    """
    start = time.perf_counter()
    if not ghost.inherited or ghost.cheap_operation is None:
        raise GhostnetError(
            f"{name}: inherit_layer needs a GhostConv2d(inherited=True) with ghosts"
        )
    n, m, d = conv.out_channels, ghost.primary_conv.out_channels, ghost.dw_size
    self_fits = fit_pairs(sources_maps, dw_size=d, max_positions=max_positions, seed=seed)
    intrinsic = choose_intrinsic(self_fits.error, m)
    chosen = set(intrinsic)
    ghosts = [j for j in range(n) if j not in chosen]
    if target_maps is None:
        rows, cols = torch.tensor(intrinsic), torch.tensor(ghosts)
        error = self_fits.error[rows][:, cols]
        kernels = self_fits.kernels[rows][:, cols]
        bias = self_fits.bias[rows][:, cols]
    else:  # sources from the converted network, targets from the original one
        pair = torch.cat([sources_maps[:, intrinsic], target_maps[:, ghosts]], dim=1)
        cross = fit_pairs(pair, dw_size=d, max_positions=max_positions, seed=seed)
        error, kernels, bias = cross.error[:m, m:], cross.kernels[:m, m:], cross.bias[:m, m:]
    best_error, best = error.min(dim=0)  # per ghost, its best intrinsic source (position)
    column = torch.arange(len(ghosts))
    order = torch.empty(n, dtype=torch.long)
    order[intrinsic] = torch.arange(m)
    order[ghosts] = m + column
    cheap = ghost.cheap_operation
    with torch.no_grad():
        ghost.primary_conv.weight.copy_(conv.weight[intrinsic])
        if conv.bias is not None and ghost.primary_conv.bias is not None:
            ghost.primary_conv.bias.copy_(conv.bias[intrinsic])
        cheap.weight.copy_(kernels[best, column].view(len(ghosts), 1, d, d))
        assert cheap.bias is not None  # inherited layers always have a cheap bias
        cheap.bias.copy_(bias[best, column])
    ghost.set_layout(best, order)
    return LayerFit(
        name=name,
        channels=n,
        intrinsic=intrinsic,
        ghosts=ghosts,
        sources=[intrinsic[i] for i in best.tolist()],
        errors=[float(e) for e in best_error],
        seconds=time.perf_counter() - start,
    )


def inherit_weights(
    original: nn.Module,
    converted: nn.Module,
    names: Sequence[str],
    calibration: Any,
    *,
    fit_on: str = "converted",
    batch_size: int = 64,
    max_positions: int = 16384,
    seed: int = 0,
    refine_steps: int = 0,
) -> list[LayerFit]:
    """Fill every inherited Ghost layer ``names`` of ``converted`` from the convs of the same
    names in ``original`` (left unchanged), layer by layer in execution order.
    ``refine_steps > 0`` (with ``fit_on="converted"``) then refines each layer by
    :func:`refine_layer` on its input in the partially converted network, before the next
    layer is fitted, so later layers see (and absorb) what is left of its error."""
    if refine_steps > 0 and fit_on != "converted":
        raise GhostnetError('refine_steps needs fit_on="converted" (the inputs it refines on)')
    if fit_on not in FIT_ON:
        raise GhostnetError(f"fit_on must be one of {', '.join(FIT_ON)}, got {fit_on!r}")
    images = calibration_tensor(calibration)
    order = execution_order(original, names, images[:2])
    fits = []
    for name in order:
        conv = original.get_submodule(name)
        ghost = converted.get_submodule(name)
        if not isinstance(ghost, GhostConv2d):
            raise GhostnetError(f"{name} is a {type(ghost).__name__} in the converted model")
        target = _output_of(original, name, images, batch_size)
        if fit_on == "converted":
            # the original conv in the partially converted network: the intrinsic maps
            # exactly as the Ghost layer will compute them (it keeps those filters)
            _swap(converted, name, conv)
            try:
                source = _output_of(converted, name, images, batch_size)
            finally:
                _swap(converted, name, ghost)
            fit = inherit_layer(
                conv, ghost, source, target, max_positions=max_positions, seed=seed, name=name
            )
            if refine_steps > 0:
                start = time.perf_counter()
                inputs = _input_of(converted, name, images, batch_size)
                device = next(ghost.parameters()).device
                fit.output_error_before, fit.output_error_after = refine_layer(
                    ghost,
                    inputs.to(device),
                    target.to(device),
                    steps=refine_steps,
                    batch_size=batch_size,
                    seed=seed,
                )
                fit.seconds += time.perf_counter() - start
        else:
            fit = inherit_layer(
                conv, ghost, target, None, max_positions=max_positions, seed=seed, name=name
            )
        fits.append(fit)
    return fits

"""How redundant are a layer's feature maps? Correlation and the paper's own test: can map j
be reproduced from map i by a cheap d x d depthwise filter (plus bias)?

For every ordered pair (i, j) the filter is the least-squares fit over the sampled images
and pixels. All C x C fits of a layer are solved at once: for source i the normal equations
are ``G_i w = A_i^T x_j`` with ``G_i = A_i^T A_i`` ((d^2+1) x (d^2+1)) shared by every
target, so one batched matmul builds the right-hand sides and one batched solve finds all
kernels; the residual follows from ``|x_j|^2 - w^T A_i^T x_j`` without reconstructing maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GhostnetError


@dataclass
class PairFits:
    """All-pairs cheap-op fits of one layer (C maps)."""

    error: torch.Tensor  # (C, C) relative residual of target j from source i; diagonal = inf
    kernels: torch.Tensor  # (C, C, d, d) fitted depthwise kernel for source i -> target j
    bias: torch.Tensor  # (C, C)
    correlation: torch.Tensor  # (C, C) Pearson correlation over images and pixels
    dead: torch.Tensor  # (C,) bool: maps that are (nearly) constant over the sample
    dw_size: int
    positions: int  # pixels used for the fit


def _sample_patches(
    maps: torch.Tensor, dw_size: int, max_positions: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (P, C, d*d) around sampled positions (zero padding) and centre values (P, C)."""
    n, _, h, w = maps.shape
    pad = dw_size // 2
    padded = F.pad(maps, (pad, pad, pad, pad))
    total = n * h * w
    if total > max_positions:
        flat = torch.randperm(total, generator=generator)[:max_positions]
    else:
        flat = torch.arange(total)
    idx_n, rest = flat // (h * w), flat % (h * w)
    idx_y, idx_x = rest // w, rest % w
    patches = torch.stack(
        [
            padded[idx_n, :, idx_y + dy, idx_x + dx]
            for dy in range(dw_size)
            for dx in range(dw_size)
        ],
        dim=2,
    )  # (P, C, d*d)
    centre = maps[idx_n, :, idx_y, idx_x]
    return patches, centre


def fit_pairs(
    maps: torch.Tensor,
    dw_size: int = 3,
    max_positions: int = 16384,
    seed: int = 0,
    ridge: float = 1e-6,
) -> PairFits:
    """Fit target map j from source map i by a ``dw_size`` depthwise filter, for all i, j.

    ``maps``: (N, C, H, W) feature maps of one layer over N images. Relative error is the
    residual energy over the target's variance (1 - R^2): 0 = a perfect ghost, 1 = no better
    than a constant.
    """
    if maps.dim() != 4:
        raise GhostnetError(f"feature maps must be 4-D (N, C, H, W), got shape {tuple(maps.shape)}")
    if dw_size < 1 or dw_size % 2 == 0:
        raise GhostnetError(f"dw_size must be an odd int >= 1, got {dw_size}")
    maps = maps.detach().to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    patches, centre = _sample_patches(maps, dw_size, max_positions, generator)
    positions, channels, taps = patches.shape
    design = torch.cat([patches, torch.ones(positions, channels, 1, dtype=maps.dtype)], dim=2)
    design = design.permute(1, 0, 2)  # (C, P, k): one design matrix per source map
    gram = design.transpose(1, 2) @ design  # (C, k, k)
    gram = gram + ridge * torch.eye(taps + 1, dtype=maps.dtype) * gram.diagonal(
        dim1=1, dim2=2
    ).mean(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    rhs = design.transpose(1, 2) @ centre  # (C, k, C): every target at once
    weights = torch.linalg.solve(gram, rhs)  # (C, k, C)

    energy = (centre * centre).sum(dim=0)  # (C,)
    mean = centre.mean(dim=0)
    variance = (energy - positions * mean * mean).clamp(min=0)  # (C,)
    explained = (weights * rhs).sum(dim=1)  # (C, C): w^T A^T x for source i, target j
    residual = (energy.view(1, -1) - explained).clamp(min=0)
    dead = variance <= 1e-10 * energy.clamp(min=1e-30) + 1e-20
    error = residual / variance.clamp(min=1e-30).view(1, -1)
    error[:, dead] = 0.0  # a constant map is reproduced by the bias alone
    error = error.clamp(max=1.0)
    error.fill_diagonal_(float("inf"))

    centred = centre - mean
    std = centred.norm(dim=0).clamp(min=1e-30)
    correlation = (centred.T @ centred) / (std.view(-1, 1) * std.view(1, -1))
    kernels = weights[:, :taps, :].permute(0, 2, 1).reshape(channels, channels, dw_size, dw_size)
    return PairFits(
        error=error.float(),
        kernels=kernels.float(),
        bias=weights[:, taps, :].float(),
        correlation=correlation.float(),
        dead=dead,
        dw_size=dw_size,
        positions=positions,
    )


def reconstruct(source: torch.Tensor, kernel: torch.Tensor, bias: float) -> torch.Tensor:
    """Apply a fitted cheap op to one map (H, W) -> (H, W), with zero padding."""
    pad = kernel.shape[-1] // 2
    out = F.conv2d(source[None, None].double(), kernel[None, None].double(), padding=pad)
    return (out[0, 0] + bias).to(source.dtype)


@dataclass
class LayerSummary:
    """What the fits say about one layer."""

    channels: int
    best_source: list[int]  # for each map, the map that reproduces it best
    best_error: list[float]
    median_best_error: float  # how well the typical map is reproduced by its best source
    ghost_fraction: float  # share of maps reproducible below the threshold
    intrinsic: list[int]  # greedy smallest set that reproduces all the others
    suggested_ratio: int  # floor(C / |intrinsic|), at least 1
    ratio_exact: float  # C / |intrinsic|
    dead_maps: int
    mean_abs_correlation: float


def summarize(fits: PairFits, threshold: float = 0.1) -> LayerSummary:
    """Best source per map, ghost fraction, greedy intrinsic cover and the suggested ratio."""
    error = fits.error
    channels = error.shape[0]
    best_error, best_source = error.min(dim=0)
    covers = error < threshold  # covers[i, j]: i reproduces j
    covers.fill_diagonal_(True)
    uncovered = torch.ones(channels, dtype=torch.bool)
    intrinsic: list[int] = []
    while uncovered.any():  # greedy set cover: take the map that explains most of the rest
        gain = (covers & uncovered.view(1, -1)).sum(dim=1)
        pick = int(gain.argmax())
        intrinsic.append(pick)
        uncovered &= ~covers[pick]
    off_diagonal = fits.correlation.abs().masked_fill(
        torch.eye(channels, dtype=torch.bool), float("nan")
    )
    ratio_exact = channels / len(intrinsic)
    return LayerSummary(
        channels=channels,
        best_source=best_source.tolist() if channels > 1 else [0],
        best_error=[float(e) for e in best_error] if channels > 1 else [1.0],
        median_best_error=float(best_error.median()) if channels > 1 else 1.0,
        ghost_fraction=float((best_error < threshold).float().mean()) if channels > 1 else 0.0,
        intrinsic=sorted(intrinsic),
        suggested_ratio=max(1, int(ratio_exact + 1e-9)),
        ratio_exact=ratio_exact,
        dead_maps=int(fits.dead.sum()),
        mean_abs_correlation=float(off_diagonal.nanmean()) if channels > 1 else 0.0,
    )


def top_pairs(fits: PairFits, count: int = 8) -> list[tuple[int, int, float]]:
    """The ``count`` best (source, target, error) pairs, each map used at most once, live
    maps only (a dead map is trivially reproducible and says nothing)."""
    error = fits.error.clone()
    error[:, fits.dead] = float("inf")
    error[fits.dead, :] = float("inf")
    order = torch.argsort(error.flatten())
    used: set[int] = set()
    pairs = []
    channels = error.shape[0]
    for flat in order.tolist():
        i, j = divmod(flat, channels)
        value = float(error[i, j])
        if value == float("inf"):
            break
        if i in used or j in used:
            continue
        pairs.append((i, j, value))
        used.update((i, j))
        if len(pairs) == count:
            break
    return pairs


def choose_intrinsic(error: torch.Tensor, count: int, refine_passes: int = 2) -> list[int]:
    """Exactly ``count`` maps that best reproduce the others: the set I minimising
    ``sum over j not in I of min(1, min over i in I of error[i, j])`` (a k-medoids /
    facility-location problem), solved greedily, then improved by single swaps.

    ``error``: (C, C) relative fit errors of :func:`fit_pairs` (target j from source i).
    A map outside I costs its best fit error from a member (1 = unexplained); members cost 0.
    """
    channels = error.shape[0]
    if not 1 <= count <= channels:
        raise GhostnetError(f"can keep between 1 and {channels} intrinsic maps, asked {count}")
    cost = error.double().clamp(max=1.0).clone()
    cost.fill_diagonal_(0.0)  # a member reproduces itself
    chosen = torch.zeros(channels, dtype=torch.bool)
    current = torch.ones(channels, dtype=cost.dtype)
    for _ in range(count):  # greedy: add the map that lowers the total cost most
        gain = (current.view(1, -1) - torch.minimum(current.view(1, -1), cost)).sum(dim=1)
        gain[chosen] = -1.0
        pick = int(gain.argmax())
        chosen[pick] = True
        current = torch.minimum(current, cost[pick])

    def total(members: torch.Tensor) -> torch.Tensor:
        return cost[members].min(dim=0).values.sum()

    # swaps: the greedy order can keep a map that a later pick made redundant; each pass
    # tries, for every member, the best replacement (O(C^2) per member), costs O(count C^2)
    if channels * channels * count <= 2e9 / max(refine_passes, 1):
        for _ in range(refine_passes):
            improved = False
            best_total = total(chosen)
            for member in torch.nonzero(chosen).flatten().tolist():
                others = chosen.clone()
                others[member] = False
                base = (
                    cost[others].min(dim=0).values
                    if others.any()
                    else torch.ones(channels, dtype=cost.dtype)
                )
                totals = torch.minimum(base.view(1, -1), cost).sum(dim=1)
                totals[others] = float("inf")
                candidate = int(totals.argmin())
                if totals[candidate] < best_total - 1e-9:
                    chosen = others
                    chosen[candidate] = True
                    best_total = totals[candidate]
                    improved = True
            if not improved:
                break
    return torch.nonzero(chosen).flatten().tolist()

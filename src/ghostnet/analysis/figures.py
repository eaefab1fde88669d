"""Figures of the redundancy analysis (matplotlib, headless PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_io import atomic_path
from .redundancy import PairFits, reconstruct, top_pairs

PAIR_COLOURS = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def feature_grid(
    maps: torch.Tensor,
    fits: PairFits,
    layer: str,
    path: str | Path,
    image_index: int = 0,
    max_maps: int = 64,
    pairs: int = 6,
) -> Path:
    """One image's feature maps of a layer, the strongest ghost pairs outlined in matching
    colours (like the paper's Figure 1)."""
    plt = _pyplot()
    shown = min(maps.shape[1], max_maps)
    cols = min(8, shown)
    rows = (shown + cols - 1) // cols
    outline: dict[int, tuple[str, str]] = {}
    restricted = PairFits(
        fits.error[:shown, :shown],
        fits.kernels,
        fits.bias,
        fits.correlation,
        fits.dead[:shown],
        fits.dw_size,
        fits.positions,
    )
    for k, (i, j, err) in enumerate(top_pairs(restricted, pairs)):
        colour = PAIR_COLOURS[k % len(PAIR_COLOURS)]
        outline[i] = (colour, f"src {k + 1}")
        outline[j] = (colour, f"ghost {k + 1} ({err:.3f})")
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.6), squeeze=False)
    for c in range(rows * cols):
        ax = axes[c // cols][c % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= shown:
            ax.axis("off")
            continue
        ax.imshow(maps[image_index, c].numpy(), cmap="viridis")
        if c in outline:
            colour, label = outline[c]
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(f"{c}: {label}", fontsize=6, color=colour)
        else:
            ax.set_title(str(c), fontsize=6)
    fig.suptitle(
        f"{layer}: feature maps of one image; outlined: best cheap-op pairs "
        f"(relative error in brackets)",
        fontsize=9,
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def pair_details(
    maps: torch.Tensor,
    fits: PairFits,
    layer: str,
    path: str | Path,
    image_index: int = 0,
    pairs: int = 6,
) -> Path:
    """For the top pairs: source map, target map, cheap-op reconstruction, fitted kernel."""
    plt = _pyplot()
    chosen = top_pairs(fits, pairs)
    rows = max(len(chosen), 1)
    fig, axes = plt.subplots(
        rows, 4, figsize=(8, 2.0 * rows + 0.4), squeeze=False, constrained_layout=True
    )
    for row, (i, j, err) in enumerate(chosen):
        source, target = maps[image_index, i], maps[image_index, j]
        recon = reconstruct(source, fits.kernels[i, j], float(fits.bias[i, j]))
        vmin, vmax = float(target.min()), float(target.max())
        panels = [
            (source, f"source map {i}"),
            (target, f"target map {j}"),
            (recon, f"cheap op of {i} (err {err:.3f})"),
        ]
        for col, (image, title) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(
                image.numpy(), cmap="viridis", **({"vmin": vmin, "vmax": vmax} if col else {})
            )
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        kernel = fits.kernels[i, j].numpy()
        ax = axes[row][3]
        bound = abs(kernel).max() or 1.0
        ax.imshow(kernel, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for (y, x), value in np.ndenumerate(kernel):
            ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=5)
        ax.set_title(
            f"{fits.dw_size}x{fits.dw_size} kernel, bias {float(fits.bias[i, j]):.2f}", fontsize=7
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{layer}: ghost pairs and their fitted cheap operations", fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def ratios_by_depth(reports: list[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Suggested s and ghost fraction per layer across the depth of the network, one line per
    report (e.g. trained vs untrained)."""
    plt = _pyplot()
    fig, (ax_s, ax_g) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    names: list[str] = []
    for label, report in reports:
        layers = report["layers"]
        names = [layer["name"] for layer in layers]
        x = list(range(len(layers)))
        ax_s.plot(x, [layer["ratio_exact"] for layer in layers], marker="o", label=label)
        ax_g.plot(x, [layer["ghost_fraction"] for layer in layers], marker="o", label=label)
    ax_s.set_ylabel("C / |intrinsic set|")
    ax_s.set_title(
        f"suggested ratio s per layer (threshold {reports[0][1]['threshold']}, "
        f"d={reports[0][1]['dw_size']})"
    )
    ax_g.set_ylabel("ghost fraction")
    ax_g.set_xticks(range(len(names)))
    ax_g.set_xticklabels(names, rotation=70, fontsize=7)
    for ax in (ax_s, ax_g):
        ax.grid(alpha=0.3)
        ax.legend()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path

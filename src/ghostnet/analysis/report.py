"""Per-layer redundancy report (plain JSON data) and the ratios it suggests."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GhostnetError
from ..layers import GhostConv2d, GhostModule
from ..safe_io import write_text
from .capture import capture, resolve_layers
from .redundancy import PairFits, fit_pairs, summarize, top_pairs


def _designated_sources(module: nn.Module) -> tuple[int, list[int]] | None:
    """(intrinsic count m, source map of each ghost) of a Ghost layer, else None."""
    if isinstance(module, GhostConv2d) and module.cheap_operation is not None:
        return module.primary_conv.out_channels, module.ghost_sources.tolist()
    if isinstance(module, GhostModule) and module.cheap_operation is not None:
        m = module.primary_conv[0].out_channels
        ghosts = module.out_chs - m
        return m, [j // (module.ratio - 1) for j in range(ghosts)]
    return None


def ghost_layer_errors(
    module: nn.Module, fits: PairFits, threshold: float
) -> dict[str, Any] | None:
    """How ghost-like a Ghost layer's cheap outputs are: the fit error of every ghost map
    from the intrinsic map that made it, next to the best fit from any other map."""
    layout = _designated_sources(module)
    if layout is None:
        return None
    m, sources = layout
    # output map of each cat() position: an inherited layer permutes them (output_order)
    order = getattr(module, "output_order", None)
    where = torch.arange(fits.error.shape[0]) if order is None else torch.argsort(order.cpu())
    ghost_maps = where[m : m + len(sources)]
    designated = torch.tensor(
        [float(fits.error[where[src], ghost_maps[j]]) for j, src in enumerate(sources)]
    )
    best_any = fits.error[:, ghost_maps].min(dim=0).values
    return {
        "intrinsic_maps": m,
        "ghost_maps": len(sources),
        "designated_error_mean": float(designated.mean()),
        "designated_error_median": float(designated.median()),
        "designated_below_threshold": float((designated < threshold).float().mean()),
        "best_any_error_mean": float(best_any.mean()),
    }


def analyze_model(
    model: nn.Module,
    images: torch.Tensor,
    layers: str | list[str] = "all-convs",
    *,
    threshold: float = 0.1,
    dw_size: int = 3,
    max_positions: int = 16384,
    top: int = 8,
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, PairFits]]]:
    """Fit every layer; return (report as plain data, {layer: (maps, fits)} for figures)."""
    names = resolve_layers(model, layers)
    maps_by_layer = capture(model, images, names)
    modules = dict(model.named_modules())
    report_layers = []
    details: dict[str, tuple[torch.Tensor, PairFits]] = {}
    for depth, name in enumerate(names):
        maps = maps_by_layer[name]
        start = time.perf_counter()
        fits = fit_pairs(maps, dw_size=dw_size, max_positions=max_positions)
        summary = summarize(fits, threshold)
        entry: dict[str, Any] = {
            "name": name,
            "depth": depth,
            "kind": type(modules[name]).__name__,
            "spatial": list(maps.shape[2:]),
            **asdict(summary),
            "fit_seconds": time.perf_counter() - start,
            "positions": fits.positions,
            "top_pairs": [
                {
                    "source": i,
                    "target": j,
                    "error": err,
                    "kernel": fits.kernels[i, j].tolist(),
                    "bias": float(fits.bias[i, j]),
                    "correlation": float(fits.correlation[i, j]),
                }
                for i, j, err in top_pairs(fits, top)
            ],
        }
        ghost = ghost_layer_errors(modules[name], fits, threshold)
        if ghost is not None:
            entry["ghost_layer"] = ghost
        report_layers.append(entry)
        details[name] = (maps, fits)
    report = {
        "format": "ghostnet-analysis/1",
        "threshold": threshold,
        "dw_size": dw_size,
        "num_images": len(images),
        "input_size": list(images.shape[1:]),
        "layers": report_layers,
    }
    return report, details


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(report, indent=1) + "\n")
    return path


def suggested_ratios(path: str | os.PathLike) -> dict[str, int]:
    """{layer name: suggested s} from a report.json, for ``ghostify(model, ratio=...)``.

    Only conv layers are listed (Ghost layers are already converted)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise GhostnetError(f"report not found: {path}; run `ghostnet analyze` first") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GhostnetError(f"{path}: not a JSON analysis report ({exc})") from exc
    except OSError as exc:
        raise GhostnetError(f"{path}: cannot read the report ({exc})") from exc
    if not isinstance(report, dict) or report.get("format") != "ghostnet-analysis/1":
        raise GhostnetError(f"{path}: not a ghostnet analysis report")
    return {
        layer["name"]: int(layer["suggested_ratio"])
        for layer in report["layers"]
        if layer["kind"] == "Conv2d"
    }

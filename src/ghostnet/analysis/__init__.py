"""Find the ghosts: feature-map redundancy of trained CNNs.

capture (forward hooks) -> fit (batched least-squares cheap-op fits between all map pairs)
-> summary (ghost fraction, greedy intrinsic cover, suggested ratio) -> report and figures.
"""

from .capture import capture, conv_layer_names, resolve_layers
from .redundancy import PairFits, fit_pairs, reconstruct, summarize, top_pairs
from .report import analyze_model, ghost_layer_errors, suggested_ratios

__all__ = [
    "PairFits",
    "analyze_model",
    "capture",
    "conv_layer_names",
    "fit_pairs",
    "ghost_layer_errors",
    "reconstruct",
    "resolve_layers",
    "suggested_ratios",
    "summarize",
    "top_pairs",
]

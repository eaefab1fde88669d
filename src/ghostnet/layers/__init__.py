"""Building blocks; they know nothing about whole networks."""

from .ghost import ConvBnAct, GhostBottleneck, GhostConv2d, GhostModule, check_ghost_args
from .helpers import make_divisible
from .se import SqueezeExcite

__all__ = [
    "ConvBnAct",
    "GhostBottleneck",
    "GhostConv2d",
    "GhostModule",
    "SqueezeExcite",
    "check_ghost_args",
    "make_divisible",
]

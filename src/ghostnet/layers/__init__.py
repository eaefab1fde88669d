"""Building blocks; they know nothing about whole networks."""

from .ghost import ConvBnAct, GhostBottleneck, GhostConv2d, GhostModule, check_ghost_args
from .ghost_v2 import DFCGhostConv2d, GhostModuleV2, dfc_branch
from .ghost_v3 import GhostBottleneckV3, GhostModuleV3
from .helpers import make_divisible
from .se import SqueezeExcite

__all__ = [
    "ConvBnAct",
    "DFCGhostConv2d",
    "GhostBottleneck",
    "GhostBottleneckV3",
    "GhostConv2d",
    "GhostModule",
    "GhostModuleV2",
    "GhostModuleV3",
    "SqueezeExcite",
    "check_ghost_args",
    "dfc_branch",
    "make_divisible",
]

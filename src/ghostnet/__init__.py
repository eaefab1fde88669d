"""ghostnet: GhostNet (Han et al., CVPR 2020) end to end.

Ghost modules and the GhostNet family, ``ghostify`` for any CNN, paper-convention
params/MACs counting, training, redundancy analysis and deployment helpers.
"""

from .convert import GhostifyReport, ghostify, ghostify_report
from .counting import Profile, profile
from .errors import GhostnetError
from .layers import GhostBottleneck, GhostConv2d, GhostModule, SqueezeExcite, make_divisible
from .models import GHOSTNET_TABLE, GhostNet, ModelSpec, create_model, list_models
from .reparam import reparameterize
from .weights import load_state_dict_file, load_weights, save_weights

__version__ = "0.2.0"

__all__ = [
    "GHOSTNET_TABLE",
    "GhostBottleneck",
    "GhostConv2d",
    "GhostModule",
    "GhostNet",
    "GhostifyReport",
    "GhostnetError",
    "ModelSpec",
    "Profile",
    "SqueezeExcite",
    "create_model",
    "ghostify",
    "ghostify_report",
    "list_models",
    "load_state_dict_file",
    "load_weights",
    "make_divisible",
    "profile",
    "reparameterize",
    "save_weights",
]

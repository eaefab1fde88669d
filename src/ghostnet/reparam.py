"""Re-parameterization: fold multi-branch training blocks into their deploy form.

A block is re-parameterizable when it has a ``reparameterize()`` method that replaces its
parallel conv+BN branches by one conv with a bias (GhostNetV3's
:class:`~ghostnet.layers.GhostModuleV3` and :class:`~ghostnet.layers.GhostBottleneckV3`).
DFC gates, SE and the shortcuts are single-branch and stay; ``deploy.fuse`` folds their BNs.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from .layers import GhostBottleneckV3, GhostModuleV3

log = logging.getLogger("ghostnet")

REPARAMETERIZABLE = (GhostModuleV3, GhostBottleneckV3)


def needs_reparameterize(model: nn.Module) -> bool:
    """Whether ``model`` holds a block still in its multi-branch training form."""
    return any(isinstance(m, REPARAMETERIZABLE) and not m.deployed for m in model.modules())


def reparameterize(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every multi-branch block folded (deploy form).

    Its outputs equal the training form's in eval mode (BN running statistics) to float
    rounding. A model with nothing to fold is logged as such and returned unchanged (the
    same object).
    """
    if not needs_reparameterize(model):
        log.info(
            "reparameterize: %s has no multi-branch (re-parameterizable) block; unchanged",
            type(model).__name__,
        )
        return model
    model = copy.deepcopy(model).eval()
    folded = 0
    for module in model.modules():
        if isinstance(module, GhostModuleV3) and not module.deployed:
            module.reparameterize()
            folded += 1
        elif isinstance(module, GhostBottleneckV3) and not module.deployed:
            # its Ghost modules fold as they come up in modules(); this folds conv_dw
            module.reparameterize()
            folded += 1
    log.info("reparameterize: folded %d blocks of %s", folded, type(model).__name__)
    return model

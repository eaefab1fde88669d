"""Compatibility: the names ``ghostnet.engine`` exported before training moved to
``ghostnet.train`` (one loop for every task). New code imports ``ghostnet.train``."""

from .checkpoint import read_init_weights
from .config import RECIPES, TrainConfig, config_from
from .train import (
    Collectives,
    Dist,
    Meters,
    NonFiniteLoss,
    ResumableSampler,
    TrainState,
    autocast_for,
    build_optimizer,
    build_scheduler,
    ema_update,
    eval_loader,
    evaluate,
    fit,
    pick_device,
)
from .train.distributed import init_distributed
from .train.loop import Stopped, StopRequested
from .train.optim import replan_scheduler
from .train.run_folder import check_out_folder, keep_previous, read_resume_checkpoint
from .train.state import resolve_resume, rng_state, set_rng_state

__all__ = [
    "RECIPES",
    "Collectives",
    "Dist",
    "Meters",
    "NonFiniteLoss",
    "ResumableSampler",
    "StopRequested",
    "Stopped",
    "TrainConfig",
    "TrainState",
    "autocast_for",
    "build_optimizer",
    "build_scheduler",
    "check_out_folder",
    "config_from",
    "ema_update",
    "eval_loader",
    "evaluate",
    "fit",
    "init_distributed",
    "keep_previous",
    "pick_device",
    "read_init_weights",
    "read_resume_checkpoint",
    "replan_scheduler",
    "resolve_resume",
    "rng_state",
    "set_rng_state",
]

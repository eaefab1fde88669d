"""One training loop for every task: ``fit(config)`` with a task object that owns what
differs (``Task``: data, model, loss, evaluation, best metric, supported options)."""

from ..config import RECIPES, TrainConfig, config_from
from .distributed import Collectives, Dist, PeerLost, ResumableSampler, pick_device
from .loop import NonFiniteLoss, fit
from .optim import autocast_for, build_optimizer, build_scheduler, ema_update
from .state import Meters, TrainState
from .task import LOOP_OPTIONS, ModelInfo, StepOutput, Task, TaskData, register_task
from .tasks import get_task, task_of_checkpoint
from .tasks.classification import ClassificationTask, eval_loader, evaluate
from .tasks.detection import DetectionTask

__all__ = [
    "LOOP_OPTIONS",
    "RECIPES",
    "ClassificationTask",
    "Collectives",
    "DetectionTask",
    "Dist",
    "Meters",
    "ModelInfo",
    "NonFiniteLoss",
    "PeerLost",
    "ResumableSampler",
    "StepOutput",
    "Task",
    "TaskData",
    "TrainConfig",
    "TrainState",
    "autocast_for",
    "build_optimizer",
    "build_scheduler",
    "config_from",
    "ema_update",
    "eval_loader",
    "evaluate",
    "fit",
    "get_task",
    "pick_device",
    "register_task",
    "task_of_checkpoint",
]

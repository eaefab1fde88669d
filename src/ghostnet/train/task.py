"""What differs between tasks, as one interface the training loop calls.

A ``Task`` owns the data (train/eval sets, collate), the model (built fresh, or rebuilt from
a checkpoint's plain data), the loss of a batch, the evaluation (-> metrics; one of them,
``best_metric``, picks best.pt) and the TrainConfig options it honours beyond the loop's
own. The loop (``loop.fit``) owns everything else once: run folder, resume, RNG, optimizer
and schedule, AMP with GradScaler, EMA, clipping, non-finite losses, metrics.csv, best/last/
summary.json and DDP. Tasks register by name (``register_task``); ``--task NAME`` picks one.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import TrainConfig, default_of
from ..errors import GhostnetError
from .distributed import Collectives

# Options every task gets from the loop (the rest belong to the tasks that name them).
LOOP_OPTIONS = frozenset(
    {
        "model",
        "data",
        "out",
        "model_kwargs",
        "ghostify",
        "recipe",
        "task",
        "epochs",
        "batch_size",
        "lr",
        "opt",
        "momentum",
        "nesterov",
        "rmsprop_eps",
        "weight_decay",
        "sched",
        "warmup_epochs",
        "milestones",
        "decay_epochs",
        "gamma",
        "min_lr",
        "clip_grad",
        "ema",
        "on_nonfinite",
        "amp",
        "sync_bn",
        "seed",
        "workers",
        "device",
        "checkpoint_every",
        "log_every",
        "quiet",
        "dist_timeout",
        "init_weights",
        "train_subset",
        "eval_subset",
    }
)


@dataclass
class TaskData:
    """A task's data as the loop needs it. ``train_set`` has ``set_epoch(epoch)`` (seeded
    augmentation); ``collate`` makes a batch the task's ``step`` understands; a batch may
    carry ``skipped`` (files that could not be read, listed in skipped_images.txt)."""

    train_set: Dataset
    eval_set: Dataset
    collate: Callable[[list[Any]], Any]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # bad files found while opening


@dataclass
class ModelInfo:
    """What the logs and summary.json say about the model."""

    label: str
    params: int
    macs: int | None = None


@dataclass
class StepOutput:
    """One batch's forward: the loss to minimise, how many samples it covered, and the
    task's running statistics (sums over the batch, named by ``Task.train_stats``)."""

    loss: torch.Tensor
    count: int
    stats: torch.Tensor | None = None


class Task(ABC):
    """The task-specific half of a training run. One instance per run, made with its
    config; the loop calls, in order: ``check`` (class-level, before any work),
    ``open_data``, ``build_model``, ``prepare`` (model on the device), then per batch
    ``step`` (under autocast), per epoch ``evaluate``, ``train_row``/``eval_row`` (metrics
    columns), ``checkpoint_meta`` (at each save), ``summary`` (at the end) and ``close``."""

    name: ClassVar[str]
    best_metric: ClassVar[str]  # a key of evaluate()'s result; higher is better
    options: ClassVar[frozenset[str]] = (
        frozenset()
    )  # TrainConfig fields honoured beyond LOOP_OPTIONS
    train_stats: tuple[str, ...] = ()  # names of StepOutput.stats entries

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    # ------------------------------------------------------------ before any work

    @classmethod
    def supported_options(cls) -> frozenset[str]:
        return LOOP_OPTIONS | cls.options

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        """Refuse, in one line, any option this task does not honour that is set to other
        than its default. Tasks extend it with their own combinations."""
        supported = cls.supported_options()
        refused = [
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(TrainConfig)
            if f.name not in supported and getattr(config, f.name) != default_of(f)
        ]
        if refused:
            raise GhostnetError(
                f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not supported by "
                f"--task {cls.name}; drop {'it' if len(refused) == 1 else 'them'}"
            )

    # ------------------------------------------------------------ training

    @abstractmethod
    def open_data(self, rank: int, world: int, checkpoint: dict[str, Any] | None) -> TaskData:
        """Open ``config.data`` (both splits, checked; nothing written). On resume the
        checkpoint fixes what the data must match (its class names)."""

    @abstractmethod
    def build_model(
        self, data: TaskData, checkpoint: dict[str, Any] | None
    ) -> tuple[nn.Module, ModelInfo]:
        """The model with the same initial weights on every rank (seed it from
        ``config.seed``), ``--init-weights`` applied; on resume rebuilt from the
        checkpoint's ``checkpoint_meta`` (the loop loads the weights)."""

    def describe(self) -> list[str]:
        """Log lines about this run's task-specific setup (after ``prepare``)."""
        return []

    def prepare(self, model: nn.Module, device: torch.device) -> None:  # noqa: B027
        """After the model is on ``device`` (before DDP): teachers, hooks... (default: none)."""

    @abstractmethod
    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepOutput | None:
        """Forward one batch in training mode (``model`` may be DDP/compiled) -> loss;
        called under the run's autocast. ``None``: the batch held nothing to train on."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, device: torch.device, collectives: Collectives, progress: bool
    ) -> dict[str, Any]:
        """Metrics of ``model`` on the eval set; each rank evaluates its share and every
        rank returns the same totals (reduce with ``collectives``)."""

    def train_row(self, sums: dict[str, float]) -> dict[str, float]:
        """metrics.csv columns from the epoch's ``train_stats`` sums (and ``seen``)."""
        seen = max(sums["seen"], 1.0)
        return {f"train_{name}": sums[name] / seen for name in self.train_stats}

    def eval_row(self, result: dict[str, Any]) -> dict[str, float]:
        """metrics.csv columns from ``evaluate``'s result (its scalar entries)."""
        return {f"eval_{k}": v for k, v in result.items() if isinstance(v, float)}

    @abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """Plain data saved in every checkpoint from which ``model_from_checkpoint``
        rebuilds the model (e.g. model_spec, classes, preset)."""

    def summary(self, last_eval: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        """This task's entries of summary.json (``best``: {best_metric: value, "epoch": N},
        epoch -1 while no epoch was evaluated)."""
        return {"final": last_eval, "best": best if best.get("epoch", -1) > 0 else None}

    def close(self) -> None:  # noqa: B027
        """Undo what ``prepare`` set up (hooks); called once, also after a failure."""

    # ------------------------------------------------------------ outside training

    @classmethod
    @abstractmethod
    def model_from_checkpoint(cls, checkpoint: dict[str, Any], source: str) -> nn.Module:
        """The trained model (evaluation weights, eval mode) from a checkpoint of this task."""

    @classmethod
    def evaluate_checkpoint(
        cls, path: str | os.PathLike, data: str, device: torch.device, batch_size: int
    ) -> dict[str, Any]:
        """``ghostnet eval``: the checkpoint's metrics on ``data``'s eval split."""
        raise GhostnetError(f"ghostnet eval does not evaluate {cls.name} checkpoints")

    @classmethod
    def eval_lines(cls, result: dict[str, Any]) -> list[str]:
        """``evaluate_checkpoint``'s result as lines for a terminal."""
        return [f"{k}: {v}" for k, v in result.items()]

    @classmethod
    def predict(
        cls, path: str | os.PathLike, images: Sequence[str], out: Path | None, threshold: float
    ) -> list[dict[str, Any]]:
        """``ghostnet predict``: one result per image (and drawn files under ``out``)."""
        raise GhostnetError(f"ghostnet predict does not run {cls.name} checkpoints")

    @classmethod
    def predict_lines(cls, results: list[dict[str, Any]]) -> list[str]:
        """``predict``'s results as lines for a terminal."""
        return [str(r) for r in results]

    @classmethod
    def export_checkpoint(
        cls,
        path: str | os.PathLike,
        out: str | os.PathLike,
        *,
        input_size: int | None,
        opset: int | None,
        tolerance: float,
    ) -> list[str]:
        """``ghostnet export`` of a checkpoint of this task to ONNX, checked against
        PyTorch in ONNX Runtime; returns the lines to print."""
        raise GhostnetError(f"ghostnet export does not export {cls.name} checkpoints")


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Make ``--task cls.name`` train with ``cls`` (a class decorator; ``train.tasks``
    imports the built-in task modules, and ``train.tasks.get_task`` looks names up)."""
    TASKS[cls.name] = cls
    return cls

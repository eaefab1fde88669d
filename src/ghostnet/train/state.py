"""Everything that changes during a run, and the checkpoint it round-trips through.

A checkpoint is plain data (loads with ``weights_only=True``): the common part written
here (``format``, ``task``, config, model/EMA/optimizer/scheduler/scaler states, position
in the epoch, running sums, history, best, every rank's RNG state) plus the task's
``checkpoint_meta`` (how to rebuild its model). Checkpoints written before the ``task``
field existed are classification checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from ..checkpoint import FORMAT
from ..config import TrainConfig
from ..errors import GhostnetError
from .optim import replan_scheduler

log = logging.getLogger("ghostnet")


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as plain data (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


FIXED_SUMS = ("loss", "seen", "nonfinite")


@dataclass
class Meters:
    """Running sums of one epoch, kept on the device and read back once per log interval:
    loss x samples, samples, non-finite steps, then the task's ``train_stats``."""

    device: torch.device
    stats: tuple[str, ...] = ()
    sums: torch.Tensor = field(init=False)
    train_s: float = 0.0

    def __post_init__(self) -> None:
        self.sums = torch.zeros(3 + len(self.stats), dtype=torch.float64, device=self.device)

    @property
    def names(self) -> tuple[str, ...]:
        return (*FIXED_SUMS, *self.stats)

    def update(self, loss: torch.Tensor, count: int, stats: torch.Tensor | None) -> None:
        finite = torch.isfinite(loss)
        dtype = self.sums.dtype
        head = [
            torch.where(finite, loss.detach() * count, 0.0).to(dtype),
            torch.full((), count, dtype=dtype, device=self.sums.device),
            (~finite).to(dtype),
        ]
        if stats is not None:
            self.sums += torch.cat([torch.stack(head), stats.detach().to(dtype)])
        else:
            self.sums += torch.stack(head)

    def read(self) -> dict[str, float]:
        return dict(zip(self.names, self.sums.tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {**self.read(), "train_s": self.train_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = [float(state.get(name, 0.0)) for name in self.names]
        self.sums = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.train_s = float(state.get("train_s", 0.0))


@dataclass
class TrainState:
    """Everything that changes during a run; ``checkpoint()`` / ``restore()`` round-trip it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    meters: Meters
    best: dict[str, Any]
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)
    elapsed_before: float = 0.0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(
        self, task: str, config: TrainConfig, meta: dict[str, Any], extra: dict[str, Any]
    ) -> dict[str, Any]:
        """The checkpoint payload: the common record, the task's ``meta``, ``extra``
        (rng of every rank, world size, elapsed time, counts)."""
        return {
            "format": FORMAT,
            "task": task,
            **meta,
            "config": dataclasses.asdict(config),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "meters": self.meters.state_dict(),
            "history": self.history,
            "best": self.best,
            "skipped_images": self.skipped_images,
            **extra,
        }

    def restore(
        self,
        checkpoint: dict[str, Any],
        config: TrainConfig,
        steps_per_epoch: int,
        replan: bool,
        rank: int,
        world: int,
    ) -> None:
        """Continue exactly where ``checkpoint`` was (or on a re-planned schedule)."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.load_state_dict(checkpoint["ema"])
        self.epoch, self.step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        self.global_step = checkpoint["global_step"]
        if replan:
            self.scheduler = replan_scheduler(
                self.optimizer, config, steps_per_epoch, self.global_step
            )
        else:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if "meters" in checkpoint:
            self.meters.load_state_dict(checkpoint["meters"])
        self.history = list(checkpoint["history"])
        self.best = dict(checkpoint["best"])
        self.skipped_images = list(checkpoint.get("skipped_images", []))
        self.elapsed_before = float(checkpoint.get("elapsed_s", checkpoint.get("train_s", 0.0)))
        states = checkpoint["rng"]
        states = [states] if isinstance(states, dict) else states  # one-process files
        if len(states) == world:
            set_rng_state(states[rank])
        else:
            log.warning(
                "resuming on %d processes, saved with %d: RNG streams restart", world, len(states)
            )


def _norm_data(value: str) -> str:
    return value if value.lower() == "cifar10" else str(Path(value).expanduser().resolve())


def resolve_resume(
    config: TrainConfig, checkpoint: dict[str, Any], path: Path
) -> tuple[TrainConfig, bool]:
    """The config to continue with: the checkpoint's, with the asked changes that are sound.

    Refuses, naming the flag, any change that would make it another run (model, data,
    optimizer...); applies where/how-verbosely changes; applies new epochs / LR / schedule
    values by re-planning the schedule from the current step (returned flag), and says so.
    """
    saved = TrainConfig.from_dict(checkpoint["config"])
    if config.epochs < checkpoint["epoch"]:
        raise GhostnetError(
            f"cannot resume from {path} with --epochs {config.epochs}: it has already trained "
            f"{checkpoint['epoch']} epochs; give --epochs >= {checkpoint['epoch']}"
        )
    replan = False
    for f in dataclasses.fields(TrainConfig):
        a, b = getattr(saved, f.name), getattr(config, f.name)
        if f.name == "data":
            a, b = _norm_data(a), _norm_data(b)
        if a == b:
            continue
        policy = f.metadata.get("resume", "fixed")
        flag = "--" + f.name.replace("_", "-")
        if policy == "fixed":
            raise GhostnetError(
                f"cannot resume from {path} with {flag} {_shown(getattr(config, f.name))}: the "
                f"run was trained with {f.name}={_shown(getattr(saved, f.name))}; drop the "
                "flag, or start a new run with a new --out"
            )
        if policy == "replan":
            replan = True
            log.info("resume: %s %r -> %r", flag, getattr(saved, f.name), getattr(config, f.name))
    if replan:
        log.info("resume: the LR schedule is re-planned for the new values from the current step")
    return config, replan


def _shown(value: object) -> str:
    """A config value as a user typed it: dicts without their unset entries, None as unset."""
    if value is None:
        return "(unset)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return repr(value)

"""Optimizer, per-step LR schedule, mixed precision and EMA: built from a TrainConfig,
the same for every task."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
    StepLR,
)
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ..config import TrainConfig
from ..errors import GhostnetError


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD, AdamW or RMSprop; weight decay on conv/linear weights only (not BN, biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.opt == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
        )
    if config.opt == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.opt == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=config.lr, alpha=0.9, eps=config.rmsprop_eps, momentum=config.momentum
        )
    raise GhostnetError(f"--opt must be sgd, adamw or rmsprop, got {config.opt!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> LRScheduler:
    """Per-step schedule: optional linear warm-up, then cosine to ``min_lr`` or step decay
    (at ``milestones``, or every ``decay_epochs``)."""
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    if config.sched == "cosine":
        main: LRScheduler = CosineAnnealingLR(
            optimizer, T_max=max(total - warmup, 1), eta_min=config.min_lr
        )
    elif config.sched == "step" and config.decay_epochs > 0:
        every = max(round(config.decay_epochs * steps_per_epoch), 1)
        main = StepLR(optimizer, step_size=every, gamma=config.gamma)
    elif config.sched == "step":
        milestones = [max(m * steps_per_epoch - warmup, 1) for m in config.milestones]
        main = MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    else:
        raise GhostnetError(f"--sched must be cosine or step, got {config.sched!r}")
    if warmup == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def replan_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int, done: int
) -> LRScheduler:
    """A new schedule for ``config`` (new lr, epochs...), advanced to step ``done``: the LR
    from here on is the one a run started with this config would have."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = config.lr
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    with warnings.catch_warnings():  # stepping without optimizer steps is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            scheduler.step()
    return scheduler


def autocast_for(device: torch.device, amp: str) -> AbstractContextManager[None]:
    """The autocast context of ``--amp`` (fp16 needs CUDA; its loss is scaled by the loop)."""
    if amp == "none":
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise GhostnetError(f"--amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type == "cpu":
        raise GhostnetError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], object], None]:
    """AveragedModel's EMA for float tensors; integer buffers (BN's num_batches_tracked, an
    inherited Ghost layer's channel layout) are copied, because averaging them in integer
    arithmetic truncates (11 -> 10 at decay 0.9999). AveragedModel groups tensors by dtype,
    so each call sees one dtype."""
    average = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: object) -> None:
        if averaged and not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
        else:
            average(averaged, current, n)

    return update

"""Training and evaluation: one loop you can read in one sitting.

``fit(config)`` trains any model on any data the data module opens, on CPU or GPU, in one
process or many (``torchrun`` -> DDP). It reads top to bottom as its sections:
``open_run`` (checks, nothing written yet) -> ``build_state`` (model, optimizer,
schedule, EMA; restored from a checkpoint on resume) -> per epoch ``train_one_epoch`` then
``end_epoch`` (evaluation, metrics, checkpoints) -> ``finish`` (summary, curves).
``TrainState`` holds everything that changes during a run and saves/restores itself, so a
resumed run replays the same computation. The engine knows nothing about Ghost modules
nor about detection (which plugs in beside it, in ``ghostnet.detection``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
    StepLR,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import (
    FORMAT,
    atomic_save,
    evaluation_weights,
    read_checkpoint,
    remove_stale_temp_files,
)
from .config import RECIPES, TrainConfig, config_from
from .counting import profile
from .data import (
    ImageDataset,
    Preset,
    balanced_subset,
    batch_mixer,
    build_transform,
    choose_preset,
    collate_skipping,
    open_data,
)
from .distill import FeatureMatch, TrainLoss, load_teacher
from .errors import GhostnetError
from .files import check_output_folder
from .models import ModelSpec
from .safe_io import RunFolderLock, atomic_open, write_text

log = logging.getLogger("ghostnet")

__all__ = ["RECIPES", "TrainConfig", "config_from", "evaluate", "fit"]

# files that make a folder a run folder (train refuses to write over them)
RUN_FILES = ("last.pt", "best.pt", "summary.json", "metrics.csv")


# --------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """Where this process sits in a torchrun job (world of 1 when not launched by it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> Dist:
    """Join the torchrun job if there is one: NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class Collectives:
    """Every collective of a run, on tensors that live on the training device.

    NCCL only accepts tensors on the GPU, so values are created on ``device`` here and the
    check below makes a tensor on any other device an immediate error (on one process too,
    where no collective runs), instead of a failure that only multi-GPU runs would meet.
    """

    def __init__(self, ddp: Dist, device: torch.device) -> None:
        self.ddp = ddp
        self.device = device

    def _check(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            raise RuntimeError(
                f"collective on a tensor on {tensor.device}, the run trains on {self.device}"
            )

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over all processes (the tensor itself on one process)."""
        self._check(tensor)
        if self.ddp.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def agree(self, *flags: bool | torch.Tensor) -> list[bool]:
        """Whether any process raised each flag: every process gets the same answer."""
        values = torch.stack(
            [torch.as_tensor(f, dtype=torch.float32, device=self.device).reshape(()) for f in flags]
        )
        return [bool(v) for v in (self.sum(values) > 0).tolist()]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BN statistics) everywhere, before evaluating."""
        if self.ddp.enabled:
            for buffer in module.buffers():
                self._check(buffer)
                dist.broadcast(buffer, 0)

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.ddp.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.ddp.world
        dist.all_gather_object(gathered, obj)
        return gathered


def pick_device(name: str, ddp: Dist | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GhostnetError("--device cuda, but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", ddp.local_rank if ddp else 0)
    if name != "cpu":
        raise GhostnetError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


# ------------------------------------------------------------------------ sampling


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch) that can skip the first samples of an
    epoch, to continue a run exactly where a checkpoint left it."""

    def __init__(self, dataset: Any, world: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return super().__len__() - self.skip


# --------------------------------------------------------------------- RNG states


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


# --------------------------------------------------------------------- building


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


def autocast_for(device: torch.device, amp: str) -> Any:
    if amp == "none":
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise GhostnetError(f"--amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type == "cpu":
        raise GhostnetError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    *,
    amp: str = "none",
    channels_last: bool = False,
    ddp: Dist | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss, top-1, top-5 and per-class accuracy; each sample counted exactly once.

    Sums stay on the device and are read back once, at the end."""
    from tqdm import tqdm

    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    dtype = torch.float64 if device.type != "mps" else torch.float32
    totals = torch.zeros(4, dtype=dtype, device=device)  # loss, top1, top5, count
    per_class = torch.zeros(2, num_classes, dtype=dtype, device=device)  # correct, count
    k = min(5, num_classes)
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        if len(targets) == 0:
            continue
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, amp):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(k, dim=1).indices
        hit1 = top[:, 0] == targets
        hit5 = (top == targets[:, None]).any(dim=1)
        totals += torch.stack(
            [
                criterion(logits, targets).to(dtype),
                hit1.sum().to(dtype),
                hit5.sum().to(dtype),
                torch.full((), len(targets), dtype=dtype, device=device),
            ]
        )
        per_class[0].index_add_(0, targets, hit1.to(dtype))
        per_class[1].index_add_(0, targets, torch.ones_like(targets, dtype=dtype))
    if ddp is not None:
        collectives = Collectives(ddp, device)
        totals, per_class = collectives.sum(totals), collectives.sum(per_class)
    totals_list, per_class = totals.tolist(), per_class.cpu()
    count = max(totals_list[3], 1.0)
    return {
        "loss": totals_list[0] / count,
        "top1": 100.0 * totals_list[1] / count,
        "top5": 100.0 * totals_list[2] / count,
        "count": int(totals_list[3]),
        "per_class": (100.0 * per_class[0] / per_class[1].clamp(min=1)).tolist(),
        "per_class_count": per_class[1].long().tolist(),
    }


def eval_loader(
    dataset: ImageDataset, batch_size: int, workers: int, ddp: Dist | None = None
) -> DataLoader:
    """Loader over this rank's share (rank::world, no padding) of an eval set."""
    rank, world = (ddp.rank, ddp.world) if ddp else (0, 1)
    indices = list(range(rank, len(dataset), world))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(0),
    )


# --------------------------------------------------------------------- data


@dataclass
class PreparedData:
    """Everything the loop needs from the data side."""

    train_set: ImageDataset
    eval_set: ImageDataset
    sampler: ResumableSampler
    loader: DataLoader
    test_loader: DataLoader
    classes: list[str]
    preset: Preset


def prepare_data(config: TrainConfig, ddp: Dist, pin_memory: bool = False) -> PreparedData:
    """Open ``config.data``, apply subsets, pick the preset, build datasets and loaders."""
    source = open_data(config.data, strict=config.strict_data)
    assert source.train is not None
    train_split, eval_split = source.train, source.eval
    if config.train_subset:
        picked = balanced_subset(train_split.labels, config.train_subset, config.seed)
        train_split = train_split.subset(picked)
    if config.eval_subset:
        eval_split = eval_split.subset(
            balanced_subset(eval_split.labels, config.eval_subset, config.seed)
        )
    if len(train_split) == 0 or len(eval_split) == 0:
        raise GhostnetError(f"{config.data}: the train or eval split is empty")
    preset = choose_preset(config.preset, train_split.image_size, config.input_size)
    train_tf = build_transform(
        preset, True, config.randaugment, config.random_erase, config.augment
    )
    train_set = ImageDataset(train_split, train_tf, config.seed, config.strict_data)
    eval_set = ImageDataset(eval_split, build_transform(preset, False), config.seed)
    sampler = ResumableSampler(train_set, ddp.world, ddp.rank, config.seed)
    # the loader gets its own generator so it never draws from the global RNG (exact resume)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=pin_memory,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(config.seed),
    )
    test_loader = eval_loader(eval_set, config.batch_size, config.workers, ddp)
    return PreparedData(train_set, eval_set, sampler, loader, test_loader, source.classes, preset)


# --------------------------------------------------------------------- run folder


def _norm_data(value: str) -> str:
    return value if value.lower() == "cifar10" else str(Path(value).expanduser().resolve())


def check_out_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that is a file, unwritable, or already holds a run (unless resuming
    or ``overwrite``); nothing is written here."""
    check_output_folder(out)
    if out.is_dir() and not resume and not overwrite:
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise GhostnetError(
                f"--out {out} already holds a run ({', '.join(found)}); continue it with "
                "--resume, choose a new --out, or pass --overwrite to replace it"
            )


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


def _shown(value: Any) -> str:
    """A config value as a user typed it: dicts without their unset entries, None as unset."""
    if value is None:
        return "(unset)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return repr(value)


# --------------------------------------------------------------------- state


@dataclass
class Meters:
    """Running sums of one epoch, kept on the device: read back once per log interval."""

    device: torch.device
    sums: torch.Tensor = field(init=False)  # loss * n, correct, seen, non-finite steps
    train_s: float = 0.0

    def __post_init__(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        n = len(hard)
        finite = torch.isfinite(loss)
        dtype = self.sums.dtype
        self.sums += torch.stack(
            [
                torch.where(finite, loss.detach() * n, 0.0).to(dtype),
                (logits.detach().argmax(1) == hard).sum().to(dtype),
                torch.full((), n, dtype=dtype, device=self.sums.device),
                (~finite).to(dtype),
            ]
        )

    def read(self) -> dict[str, float]:
        loss, correct, seen, bad = self.sums.tolist()
        return {"loss": loss, "correct": correct, "seen": seen, "nonfinite": bad}

    def state_dict(self) -> dict[str, Any]:
        return {**self.read(), "train_s": self.train_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = [state["loss"], state["correct"], state["seen"], state.get("nonfinite", 0.0)]
        self.sums = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.train_s = float(state["train_s"])


@dataclass
class TrainState:
    """Everything that changes during a run; ``checkpoint()`` / ``restore()`` round-trip it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    meters: Meters
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})
    skipped_images: list[str] = field(default_factory=list)
    elapsed_before: float = 0.0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, run: RunInfo, rng_states: list[Any]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "task": run.config.task,
            "model_spec": run.spec.to_dict(),
            "classes": run.classes,
            "preset": run.preset.to_dict(),
            "config": asdict(run.config),
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
            "rng": rng_states,
            "world_size": run.ddp.world,
            "elapsed_s": self.elapsed_before + time.perf_counter() - run.wall_start,
            "params": run.params,
            "macs": run.macs,
        }

    def restore(self, checkpoint: dict[str, Any], run: RunInfo, replan: bool) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.epoch, self.step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        self.global_step = checkpoint["global_step"]
        if replan:
            self.scheduler = replan_scheduler(
                self.optimizer, run.config, run.steps_per_epoch, self.global_step
            )
        else:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.meters.load_state_dict(checkpoint["meters"])
        self.history = list(checkpoint["history"])
        self.best = dict(checkpoint["best"])
        self.skipped_images = list(checkpoint.get("skipped_images", []))
        self.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        states = checkpoint["rng"]
        if len(states) == run.ddp.world:
            set_rng_state(states[run.ddp.rank])
        else:
            log.warning(
                "resuming on %d processes, saved with %d: RNG streams restart",
                run.ddp.world,
                len(states),
            )


@dataclass
class RunInfo:
    """What a run is (fixed once it starts): config, data, device, model counts, teacher."""

    config: TrainConfig
    out: Path
    ddp: Dist
    device: torch.device
    collectives: Collectives
    data: PreparedData
    spec: ModelSpec
    params: int
    macs: int
    steps_per_epoch: int
    teacher: nn.Module | None
    mixer: Any
    loss: TrainLoss
    features: FeatureMatch | None = None  # --kd-features: hooks on student and teacher
    wall_start: float = field(default_factory=time.perf_counter)
    saved: str = ""  # the last checkpoint written by this process ("epoch N ... at PATH")

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def preset(self) -> Preset:
        return self.data.preset

    @property
    def interactive(self) -> bool:
        return self.ddp.main and not self.config.quiet and sys.stderr.isatty()


def build_model(config: TrainConfig, classes: list[str], preset: Preset) -> tuple[Any, Any, Any]:
    """The model (same initial weights on every rank), its spec and counts."""
    torch.manual_seed(config.seed)
    spec = config.spec
    spec.kwargs.setdefault("num_classes", len(classes))
    model = spec.build()
    if config.init_weights:
        from .weights import load_into

        state, _ = read_init_weights(config.init_weights)
        load_into(model, state, source=config.init_weights)
    counts = profile(model, (3, preset.input_size, preset.input_size))
    return model, spec, counts


def read_init_weights(source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``--init-weights``: (the weights, the training checkpoint they came from or None for
    a plain weights file). A checkpoint gives the weights it was evaluated with (EMA)."""
    from .weights import load_state_dict_file, safe_torch_load

    path = Path(source).expanduser()
    if not path.is_file():
        raise GhostnetError(f"--init-weights: file not found: {path}")
    data = safe_torch_load(path) if path.suffix != ".safetensors" else None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return evaluation_weights(data), data
    return load_state_dict_file(path), None


def ema_update(decay: float) -> Any:
    """AveragedModel's EMA for float tensors; integer buffers (BN's num_batches_tracked, an
    inherited Ghost layer's channel layout) are copied, because averaging them in integer
    arithmetic truncates (11 -> 10 at decay 0.9999). AveragedModel groups tensors by dtype,
    so each call sees one dtype."""
    average = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        if averaged and not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
        else:
            average(averaged, current, n)

    return update


def build_state(run: RunInfo, model: nn.Module) -> TrainState:
    """Optimizer, schedule, scaler and EMA around ``model`` (moved to the device)."""
    config, device = run.config, run.device
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and run.ddp.enabled:
        if device.type != "cuda":
            raise GhostnetError("--sync-bn needs CUDA (torch has no CPU SyncBatchNorm)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config)
    ema = (
        AveragedModel(model, multi_avg_fn=ema_update(config.ema), use_buffers=True)
        if config.ema > 0
        else None
    )
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, run.steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        ema=ema,
        meters=Meters(device),
    )


def wrap_for_training(run: RunInfo, model: nn.Module) -> nn.Module:
    """DDP around the model when distributed, then torch.compile when asked."""
    wrapped = model
    if run.ddp.enabled:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if run.config.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


# --------------------------------------------------------------------- checkpoints


def save_checkpoint(run: RunInfo, state: TrainState, names: tuple[str, ...]) -> None:
    """Gather every rank's RNG state, then rank 0 writes ``names`` atomically. Every rank
    must call this at the same point (the gather is a collective)."""
    states = run.collectives.gather_objects(rng_state())
    if run.ddp.main:
        payload = state.checkpoint(run, states)
        keep_previous(run.out / "last.pt")
        for name in names:
            atomic_save(payload, run.out / name, survived=_survivor(run))
        run.saved = f"epoch {state.epoch} (step {state.step_in_epoch}) at {run.out / 'last.pt'}"


def keep_previous(last: Path) -> None:
    """last.pt -> also last.prev.pt (a hard link, atomic; a copy where links are refused),
    so a damaged last.pt never leaves best.pt as the only copy."""
    if not last.exists():
        return
    prev = last.with_name("last.prev.pt")
    tmp = last.with_name(".last.prev.tmp-link.pt")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        shutil.copyfile(last, tmp)
    os.replace(tmp, prev)


def read_resume_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """``path``, or when it is unreadable the newest readable fallback beside a last.pt
    (last.prev.pt, then best.pt) with a warning naming what was skipped and why."""
    candidates = [path]
    if path.name == "last.pt":
        candidates += [path.with_name("last.prev.pt"), path.with_name("best.pt")]
    tried: list[str] = []
    for candidate in candidates:
        if candidate != path and not candidate.exists():
            continue
        try:
            checkpoint = read_checkpoint(candidate)
        except GhostnetError as exc:
            tried.append(f"{candidate}: {str(exc)[:160]}")
            continue
        if tried:
            log.warning(
                "resume: skipped %s; continuing from %s (epoch %d, step %d)",
                "; ".join(tried),
                candidate,
                checkpoint.get("epoch", 0),
                checkpoint.get("step_in_epoch", 0),
            )
        return checkpoint, candidate
    if len(tried) == 1:
        raise GhostnetError(tried[0].split(": ", 1)[1])
    raise GhostnetError("no readable checkpoint to resume from; tried " + "; ".join(tried))


def _survivor(run: RunInfo) -> str:
    """What a failed checkpoint write leaves intact, for its error line."""
    if run.saved:
        return f"last good checkpoint: {run.saved}"
    if (run.out / "last.pt").exists():
        return f"last good checkpoint: {run.out / 'last.pt'} (from before this run)"
    return "no checkpoint of this run was written yet"


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits at its next sync."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class NonFiniteLoss(GhostnetError):
    """The loss became NaN/inf; nothing after the last finite checkpoint was saved."""


class Stopped(Exception):
    """A signal asked the run to stop; its state was saved."""


# --------------------------------------------------------------------- one epoch


def _fault_injection_step() -> int | None:
    """Tests only: ``GHOSTNET_KILL_AT_STEP=N`` SIGKILLs the process right after step N, so
    a crash at a chosen, reproducible point can be tested."""
    value = os.environ.get("GHOSTNET_KILL_AT_STEP")
    return int(value) if value else None


def train_one_epoch(run: RunInfo, state: TrainState, train_model: nn.Module, stop: Any) -> None:
    """Train from ``state.step_in_epoch`` to the end of ``state.epoch``.

    Host syncs happen only at sync points (every ``log_every`` steps, periodic checkpoints,
    the epoch's last step, a stop request): there the running sums are read back, and all
    ranks agree on a non-finite loss (raise, nothing saved) and on a stop request (save,
    raise ``Stopped``)."""
    config, device, data = run.config, run.device, run.data
    steps = run.steps_per_epoch
    data.sampler.set_epoch(state.epoch)
    data.train_set.set_epoch(state.epoch)
    data.sampler.skip = state.step_in_epoch * config.batch_size
    if state.step_in_epoch == 0:
        state.meters = Meters(device)
    train_model.train()
    from tqdm import tqdm

    bar = tqdm(
        total=steps,
        initial=state.step_in_epoch,
        disable=not run.interactive,
        desc=f"epoch {state.epoch + 1}/{config.epochs}",
        leave=False,
    )
    kill_at = _fault_injection_step()
    tick = time.perf_counter()
    for step, batch in enumerate(data.loader, start=state.step_in_epoch):
        for path in batch.skipped:
            if path not in state.skipped_images:
                log.warning(
                    "skipping unreadable image (named once, see skipped_images.txt): %s", path
                )
                state.skipped_images.append(path)
        if len(batch.targets):
            train_step(run, state, train_model, batch.images, batch.targets)
        state.global_step += 1
        state.step_in_epoch = step + 1
        now = time.perf_counter()
        state.meters.train_s += now - tick
        tick = now
        bar.update(1)
        if kill_at is not None and state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        last = step + 1 >= steps
        periodic = config.checkpoint_every and state.global_step % config.checkpoint_every == 0
        logged = (step + 1) % config.log_every == 0
        local_stop = stop.signal is not None and not run.ddp.enabled
        if not (last or periodic or logged or local_stop):
            continue
        sums = state.meters.read()
        nonfinite, stopping = run.collectives.agree(sums["nonfinite"] > 0, stop.signal is not None)
        if nonfinite:
            bar.close()
            raise NonFiniteLoss(_nonfinite_message(run, state))
        _report_progress(run, state, bar, sums)
        if stopping or (periodic and not last):  # (the epoch's end saves by itself)
            save_checkpoint(run, state, ("last.pt",))
        if stopping:
            bar.close()
            raise Stopped()
    bar.close()


def train_step(
    run: RunInfo,
    state: TrainState,
    train_model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
) -> None:
    """One optimisation step: (mix) -> forward (+ teacher) -> loss -> backward -> update."""
    config, device = run.config, run.device
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if run.mixer is not None:
        images, targets = run.mixer(images, targets)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, config.amp):
        logits = train_model(images)
        teacher_logits = None
        if run.teacher is not None:
            with torch.no_grad():
                teacher_logits = run.teacher(images)
        loss = run.loss(logits, targets, teacher_logits, run.features)
    state.meters.update(loss, logits, targets)
    if config.on_nonfinite == "skip":
        (finite,) = run.collectives.agree(torch.isfinite(loss))
        if not finite:  # agreed by every rank, before any backward (DDP's hooks)
            log.warning("non-finite loss at step %d: step skipped", state.global_step + 1)
            state.meters.sums[3] = 0  # counted as skipped, not as a reason to stop
            return
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if config.clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), config.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)


def _nonfinite_message(run: RunInfo, state: TrainState) -> str:
    last = run.out / "last.pt"
    if last.exists():
        kept = read_checkpoint(last)
        where = (
            f"{last} is the last finite state (epoch {kept['epoch'] + 1}, step "
            f"{kept['step_in_epoch']}); continue it with --resume and a lower --lr (the "
            "schedule is re-planned) or --clip-grad"
        )
    else:
        where = "no checkpoint was written before it; start again with a lower --lr or --clip-grad"
    return (
        f"the loss became NaN/inf in epoch {state.epoch + 1} before step "
        f"{state.step_in_epoch}; nothing after it was saved: {where}"
    )


def _report_progress(run: RunInfo, state: TrainState, bar: Any, sums: dict[str, float]) -> None:
    if not run.ddp.main or run.config.quiet:
        return
    seen = max(sums["seen"], 1.0)
    loss, acc = sums["loss"] / seen, 100 * sums["correct"] / seen
    img_s = sums["seen"] / max(state.meters.train_s, 1e-9)
    if run.interactive:
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1f}", img_s=f"{img_s:.0f}")
    elif state.step_in_epoch < run.steps_per_epoch:
        log.info(
            "epoch %d/%d step %d/%d  loss %.4f  top-1 %.2f  %.0f img/s  lr %.3g",
            state.epoch + 1,
            run.config.epochs,
            state.step_in_epoch,
            run.steps_per_epoch,
            loss,
            acc,
            img_s,
            state.optimizer.param_groups[0]["lr"],
        )


# --------------------------------------------------------------------- reporting


METRIC_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "eval_loss",
    "eval_top1",
    "eval_top5",
    "train_images_per_s",
    "epoch_s",
]


def _write_metrics(out: Path, history: list[dict[str, Any]], survived: str = "") -> None:
    """Rewrite metrics.csv from the run's history (so a resumed run never duplicates rows)."""
    with atomic_open(out / "metrics.csv", "w", survived=survived or None, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def run_eval(run: RunInfo, state: TrainState) -> dict[str, Any]:
    run.collectives.broadcast_buffers(state.eval_model)  # BN statistics of rank 0
    return evaluate(
        state.eval_model,
        run.data.test_loader,
        run.device,
        len(run.classes),
        amp=run.config.amp,
        channels_last=run.config.channels_last,
        ddp=run.ddp,
        progress=run.interactive,
    )


def end_epoch(run: RunInfo, state: TrainState, board: Any) -> dict[str, Any]:
    """Metrics over all ranks, evaluation, metrics.csv, last.pt (and best.pt)."""
    sums = run.collectives.sum(state.meters.sums).tolist()
    result = run_eval(run, state)
    seen = max(sums[2], 1.0)
    row = {
        "epoch": state.epoch + 1,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": sums[0] / seen,
        "train_top1": 100.0 * sums[1] / seen,
        "eval_loss": result["loss"],
        "eval_top1": result["top1"],
        "eval_top5": result["top5"],
        "train_images_per_s": sums[2] / max(state.meters.train_s, 1e-9),
        "epoch_s": state.meters.train_s,
    }
    state.history.append(row)
    improved = result["top1"] > state.best["top1"]
    if improved:
        state.best = {"top1": result["top1"], "epoch": state.epoch + 1}
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    if run.ddp.main:
        log.info(
            "epoch %d/%d  train loss %.4f top-1 %.2f  |  eval loss %.4f top-1 %.2f top-5 %.2f"
            "  |  %.0f img/s",
            row["epoch"],
            run.config.epochs,
            row["train_loss"],
            row["train_top1"],
            row["eval_loss"],
            row["eval_top1"],
            row["eval_top5"],
            row["train_images_per_s"],
        )
        _write_metrics(run.out, state.history, _survivor(run))
        _write_skipped(run, state)
        if board is not None:
            for key, value in row.items():
                if key != "epoch":
                    board.add_scalar(key, value, row["epoch"])
    save_checkpoint(run, state, ("last.pt", "best.pt") if improved else ("last.pt",))
    return result


def _write_skipped(run: RunInfo, state: TrainState) -> None:
    skipped = sorted(set(state.skipped_images) | set(run.data.train_set.split.skipped))
    if skipped:
        write_text(run.out / "skipped_images.txt", "\n".join(skipped) + "\n")


def finish(
    run: RunInfo, state: TrainState, last_eval: dict[str, Any] | None, status: str
) -> dict[str, Any]:
    """summary.json and curves.png (also after an interrupt or a non-finite loss)."""
    if not run.ddp.main:
        return {}
    images_per_s = [h["train_images_per_s"] for h in state.history]
    last_eval = last_eval or {}
    summary: dict[str, Any] = {
        "status": status,
        "model": run.spec.label(),
        "model_spec": run.spec.to_dict(),
        "top1": last_eval.get("top1"),
        "top5": last_eval.get("top5"),
        "eval_loss": last_eval.get("loss"),
        "best_top1": state.best["top1"] if state.best["epoch"] > 0 else None,
        "best_epoch": state.best["epoch"] if state.best["epoch"] > 0 else None,
        "params": run.params,
        "macs": run.macs,
        "epochs": run.config.epochs,
        "epochs_done": state.epoch,
        "train_images": len(run.data.train_set),
        "eval_images": last_eval.get("count", len(run.data.eval_set)),
        "preset": run.preset.to_dict(),
        "teacher": run.config.teacher,
        "train_images_per_s": float(np.median(images_per_s)) if images_per_s else None,
        "wall_s": state.elapsed_before + time.perf_counter() - run.wall_start,
        "world_size": run.ddp.world,
        "device": str(run.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe": run.config.recipe,
        "config": asdict(run.config),
        "classes": run.classes,
    }
    write_text(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if state.history:
        try:
            from .plots import plot_curves

            plot_curves(state.history, run.out / "curves.png", title=run.spec.label())
        except ImportError:
            log.info("matplotlib not installed: no curves.png (pip install 'ghostnet[viz]')")
    return summary


# --------------------------------------------------------------------- the run


def open_run(
    config: TrainConfig, resume: str | os.PathLike | None, overwrite: bool
) -> tuple[RunInfo, TrainState]:
    """Every check and every build that can fail, before anything is written."""
    checkpoint, replan = None, False
    out = Path(config.out).expanduser()
    check_out_folder(out, resume=resume is not None, overwrite=overwrite)
    if resume is not None:
        checkpoint, used = read_resume_checkpoint(Path(resume))
        config, replan = resolve_resume(config, checkpoint, used)
    device_kind = (
        "cuda"
        if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ddp = init_distributed(device_kind)
    device = pick_device(config.device, ddp)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    autocast_for(device, config.amp)  # an impossible --amp fails here, not at step 1
    data = prepare_data(config, ddp, pin_memory=device.type == "cuda")
    model, spec, counts = build_model(config, data.classes, data.preset)
    input_size = (3, data.preset.input_size, data.preset.input_size)
    teacher = (
        load_teacher(config.teacher, data.classes, input_size, device) if config.teacher else None
    )
    if teacher is not None and config.channels_last:
        teacher.to(memory_format=torch.channels_last)
    features = None
    if teacher is not None and config.kd_features:
        features = FeatureMatch(
            model, teacher, config.kd_features, config.kd_feature_weight, input_size, device
        )
    run = RunInfo(
        config=config,
        out=out,
        ddp=ddp,
        device=device,
        collectives=Collectives(ddp, device),
        data=data,
        spec=spec,
        params=counts.params,
        macs=counts.macs,
        steps_per_epoch=math.ceil(len(data.sampler) / config.batch_size),
        teacher=teacher,
        mixer=batch_mixer(config.mixup, config.cutmix, len(data.classes)),
        loss=TrainLoss(
            config.label_smoothing,
            config.kd_alpha if teacher is not None else 0.0,
            config.kd_temperature,
        ),
        features=features,
    )
    state = build_state(run, model)
    torch.manual_seed(config.seed + ddp.rank)  # training randomness (dropout, mixup) per rank
    if checkpoint is not None:
        state.restore(checkpoint, run, replan)  # ... or exactly where the checkpoint was
    return run, state


def _announce(run: RunInfo, state: TrainState, resume: Any) -> None:
    if not run.ddp.main:
        return
    c, p = run.config, run.preset
    log.info(
        "training %s (%s params, %s MACs) on %d images (%d classes), eval on %d; %s, "
        "%d process(es), %d epochs x %d steps%s",
        run.spec.label(),
        f"{run.params:,}",
        f"{run.macs:,}",
        len(run.data.train_set),
        len(run.classes),
        len(run.data.eval_set),
        run.device,
        run.ddp.world,
        c.epochs,
        run.steps_per_epoch,
        f"; teacher {c.teacher} (alpha {c.kd_alpha}, T {c.kd_temperature})" if c.teacher else "",
    )
    if run.features is not None:
        log.info(
            "feature distillation (weight %g) at %d modules: %s",
            c.kd_feature_weight,
            len(run.features.names),
            ", ".join(run.features.names),
        )
    log.info(
        "data preset %s: input %dx%d, mean %s, std %s",
        p.name,
        p.input_size,
        p.input_size,
        ",".join(f"{m:.3f}" for m in p.mean),
        ",".join(f"{s:.3f}" for s in p.std),
    )
    if resume is not None:
        log.info("resuming %s at epoch %d, step %d", resume, state.epoch + 1, state.step_in_epoch)


def fit(
    config: TrainConfig, resume: str | os.PathLike | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; returns the summary written to summary.json.

    ``resume``: a ``last.pt`` to continue exactly (changed epochs/LR re-plan the schedule,
    other changes are refused). ``overwrite``: allow an --out that already holds a run.
    A signal saves the state and raises ``KeyboardInterrupt``; a non-finite loss saves
    nothing after the last finite checkpoint and raises ``NonFiniteLoss``. Either way
    summary.json and curves.png describe the run so far.
    """
    run, state = open_run(config, resume, overwrite)  # every check: nothing written yet
    created = not run.out.exists()
    lock = take_run_folder(run)
    try:
        return _fit_owned(run, state, resume, created)
    finally:
        if lock is not None:
            lock.release()


def take_run_folder(run: RunInfo) -> RunFolderLock | None:
    """Rank 0 creates --out and locks it (DIR/.lock) before writing anything in it."""
    if not run.ddp.main:
        return None
    try:
        run.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GhostnetError(f"--out {run.out}: cannot create the folder ({exc})") from exc
    lock = RunFolderLock(run.out).acquire()
    remove_stale_temp_files(run.out)
    return lock


def _fit_owned(
    run: RunInfo, state: TrainState, resume: str | os.PathLike | None, created: bool
) -> dict[str, Any]:
    _announce(run, state, resume)
    train_model = wrap_for_training(run, state.model)
    board = _tensorboard(run.out) if run.ddp.main else None
    last_eval: dict[str, Any] | None = None
    try:
        with StopRequested() as stop:
            while state.epoch < run.config.epochs:
                train_one_epoch(run, state, train_model, stop)
                last_eval = end_epoch(run, state, board)
        if last_eval is None:  # resumed a run that had already finished
            last_eval = run_eval(run, state)
    except BaseException as exc:
        status = {Stopped: "stopped by a signal", NonFiniteLoss: "stopped: non-finite loss"}
        if created and run.ddp.main and not (run.out / "last.pt").exists():
            shutil.rmtree(run.out, ignore_errors=True)  # a failed start leaves nothing behind
        elif run.ddp.main:
            try:
                finish(run, state, last_eval, status.get(type(exc), f"failed: {exc}"))
            except GhostnetError as again:  # e.g. the same full disk: keep the first error
                log.warning("summary not written: %s", again)
        _teardown(run, board)
        if isinstance(exc, Stopped):
            log.info("stopped by a signal: state saved to %s", run.out / "last.pt")
            raise KeyboardInterrupt from None
        raise
    summary = finish(run, state, last_eval, "finished")
    _teardown(run, board)
    return summary


def _teardown(run: RunInfo, board: Any) -> None:
    if run.features is not None:
        run.features.remove()
    if board is not None:
        board.close()
    if run.ddp.enabled and dist.is_initialized():
        with suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()

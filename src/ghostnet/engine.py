"""Training and evaluation: one loop you can read in one sitting.

``fit(config)`` trains any model on any data the data module opens, on CPU or GPU, in one
process or many (``torchrun`` -> DDP). Every epoch (and every ``checkpoint_every`` steps)
it writes ``last.pt`` atomically with everything needed to continue exactly: weights,
optimizer, scheduler, scaler, EMA, position in the epoch, running metrics and RNG states.
The engine knows nothing about Ghost modules.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field, fields
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
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import FORMAT, atomic_save, read_checkpoint, remove_stale_temp_files
from .data import (
    ImageDataset,
    Preset,
    balanced_subset,
    build_transform,
    choose_preset,
    open_data,
)
from .errors import GhostnetError
from .models import ModelSpec
from .profile import profile

log = logging.getLogger("ghostnet")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint as plain data."""

    model: str
    data: str
    out: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    ghostify: dict[str, Any] | None = None
    recipe: str | None = None
    epochs: int = 30
    batch_size: int = 128  # per process
    lr: float = 0.1
    opt: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4  # conv/linear weights only; BN and biases are not decayed
    sched: str = "cosine"  # cosine | step
    warmup_epochs: float = 0.0
    milestones: list[int] = field(default_factory=list)  # epochs, for sched=step
    gamma: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    clip_grad: float = 0.0
    ema: float = 0.0  # EMA decay per step; 0 = off
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    sync_bn: bool = False  # DDP on CUDA: BatchNorm statistics over the global batch
    seed: int = 0
    workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    preset: str = "auto"  # auto | cifar | imagenet
    input_size: int | None = None
    train_subset: int | None = None
    eval_subset: int | None = None
    checkpoint_every: int = 0  # steps; 0 = at epoch ends only
    strict_data: bool = False
    quiet: bool = False

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, dict(self.model_kwargs), self.ghostify)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Named recipes; explicit flags override their values.
RECIPES: dict[str, dict[str, Any]] = {
    # He et al. / the paper's CIFAR recipe: SGD 0.1, momentum 0.9, wd 1e-4, batch 128,
    # 64k iterations with the LR divided by 10 at 32k and 48k (= epochs 82 and 123 of 164).
    "paper-cifar": dict(
        epochs=164,
        batch_size=128,
        lr=0.1,
        opt="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        sched="step",
        milestones=[82, 123],
        gamma=0.1,
        warmup_epochs=0.0,
    ),
    # A short cosine schedule for CPU runs and quick comparisons.
    "cifar-fast": dict(
        epochs=15,
        batch_size=128,
        lr=0.1,
        opt="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        sched="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.0,
        channels_last=True,  # ~20% faster on CPU
    ),
    # A mobile-network ImageNet recipe (SGD + cosine + label smoothing + EMA) for 8
    # processes x 128 = a global batch of 1024 at lr 0.4; scale lr linearly with the batch.
    "imagenet-mobile": dict(
        epochs=300,
        batch_size=128,
        lr=0.4,
        opt="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=4e-5,
        sched="cosine",
        warmup_epochs=3.0,
        label_smoothing=0.1,
        ema=0.9999,
        preset="imagenet",
    ),
}


def config_from(recipe: str | None, **overrides: Any) -> TrainConfig:
    """Defaults <- recipe <- explicit values (``None`` means "not given")."""
    values: dict[str, Any] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise GhostnetError(f"unknown recipe {recipe!r}: choose from {', '.join(RECIPES)}")
        values.update(RECIPES[recipe])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["recipe"] = recipe
    return TrainConfig(**values)


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


def _all_reduce(values: torch.Tensor, ddp: Dist) -> torch.Tensor:
    if ddp.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


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
    """SGD or AdamW; weight decay on conv/linear weights only (not BN, not biases)."""
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
    raise GhostnetError(f"--opt must be sgd or adamw, got {config.opt!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> LRScheduler:
    """Per-step schedule: optional linear warmup, then cosine to ``min_lr`` or step decay."""
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    if config.sched == "cosine":
        main: LRScheduler = CosineAnnealingLR(
            optimizer, T_max=max(total - warmup, 1), eta_min=config.min_lr
        )
    elif config.sched == "step":
        milestones = [max(m * steps_per_epoch - warmup, 1) for m in config.milestones]
        main = MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    else:
        raise GhostnetError(f"--sched must be cosine or step, got {config.sched!r}")
    if warmup == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


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
    """Loss, top-1, top-5 and per-class accuracy; each sample counted exactly once."""
    from tqdm import tqdm

    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(4, dtype=torch.float64)  # loss, top1, top5, count
    per_class = torch.zeros(2, num_classes, dtype=torch.float64)  # correct, count
    k = min(5, num_classes)
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, amp):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(k, dim=1).indices
        hit1 = top[:, 0] == targets
        hit5 = (top == targets[:, None]).any(dim=1)
        totals += torch.tensor(
            [criterion(logits, targets).item(), hit1.sum().item(), hit5.sum().item(), len(targets)],
            dtype=torch.float64,
        )
        per_class[0].index_add_(0, targets.cpu(), hit1.cpu().double())
        per_class[1].index_add_(0, targets.cpu(), torch.ones(len(targets), dtype=torch.float64))
    if ddp is not None:
        totals, per_class = _all_reduce(totals, ddp), _all_reduce(per_class, ddp)
    count = max(totals[3].item(), 1.0)
    return {
        "loss": totals[0].item() / count,
        "top1": 100.0 * totals[1].item() / count,
        "top5": 100.0 * totals[2].item() / count,
        "count": int(totals[3].item()),
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
        generator=torch.Generator().manual_seed(0),
    )


# --------------------------------------------------------------------- the run


class _StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


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


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the run's history (so a resumed run never duplicates rows)."""
    tmp = out / ".metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, out / "metrics.csv")


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _check_resume_matches(saved: TrainConfig, asked: TrainConfig, path: Path) -> None:
    for key in ("model", "model_kwargs", "ghostify", "data", "train_subset"):
        a, b = getattr(saved, key), getattr(asked, key)
        if key == "data":
            a, b = _norm_data(a), _norm_data(b)
        if a != b:
            raise GhostnetError(
                f"cannot resume from {path}: it was trained with {key}={getattr(saved, key)!r}, "
                f"this run asks for {getattr(asked, key)!r}; use the same {key} or a new --out"
            )


def _norm_data(value: str) -> str:
    return value if value.lower() == "cifar10" else str(Path(value).expanduser().resolve())


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
    train_set = ImageDataset(
        train_split, build_transform(preset, True), config.seed, config.strict_data
    )
    eval_set = ImageDataset(eval_split, build_transform(preset, False), config.seed)
    sampler = ResumableSampler(train_set, ddp.world, ddp.rank, config.seed)
    # the loader gets its own generator so it never draws from the global RNG (exact resume)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(config.seed),
    )
    test_loader = eval_loader(eval_set, config.batch_size, config.workers, ddp)
    return PreparedData(train_set, eval_set, sampler, loader, test_loader, source.classes, preset)


def fit(config: TrainConfig, resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; returns the summary written to summary.json."""
    wall_start = time.perf_counter()
    out = Path(config.out)
    checkpoint: dict[str, Any] | None = None
    if resume is not None:
        checkpoint = read_checkpoint(resume)
        saved = TrainConfig.from_dict(checkpoint["config"])
        _check_resume_matches(saved, config, Path(resume))
        # the run continues exactly as configured; only where and how verbosely may change
        for key in ("out", "workers", "device", "quiet", "checkpoint_every"):
            setattr(saved, key, getattr(config, key))
        config = saved
    device_kind = (
        "cuda"
        if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ddp = init_distributed(device_kind)
    device = pick_device(config.device, ddp)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)

    data = prepare_data(config, ddp, pin_memory=device.type == "cuda")
    classes, preset, train_set = data.classes, data.preset, data.train_set
    steps_per_epoch = math.ceil(len(data.sampler) / config.batch_size)
    if ddp.main and train_set.split.skipped:
        (out / "skipped_images.txt").write_text("\n".join(train_set.split.skipped) + "\n")

    # ---- model, same initial weights on every rank
    torch.manual_seed(config.seed)
    spec = config.spec
    spec.kwargs.setdefault("num_classes", len(classes))
    model = spec.build()
    counts = profile(model, (3, preset.input_size, preset.input_size))
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and ddp.enabled:
        if device.type != "cuda":
            raise GhostnetError("--sync-bn needs CUDA (torch has no CPU SyncBatchNorm)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        if config.ema > 0
        else None
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    torch.manual_seed(config.seed + ddp.rank)  # training randomness (dropout) per rank

    # ---- state to continue from
    start_epoch, start_step, global_step = 0, 0, 0
    meters = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "train_s": 0.0}
    history: list[dict[str, Any]] = []
    best = {"top1": -1.0, "epoch": -1}
    elapsed_before = 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step_in_epoch"]
        global_step = checkpoint["global_step"]
        meters = dict(checkpoint["meters"])
        history = list(checkpoint["history"])
        best = dict(checkpoint["best"])
        elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        states = checkpoint["rng"]
        if len(states) == ddp.world:
            set_rng_state(states[ddp.rank])
        else:
            log.warning(
                "resuming on %d processes, saved with %d: RNG streams restart",
                ddp.world,
                len(states),
            )
        if ddp.main:
            log.info("resuming %s at epoch %d, step %d", resume, start_epoch + 1, start_step)

    train_model: nn.Module = model
    if ddp.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    eval_model = ema.module if ema is not None else model

    def run_eval(progress: bool = False) -> dict[str, Any]:
        return evaluate(
            eval_model,
            data.test_loader,
            device,
            len(classes),
            amp=config.amp,
            channels_last=config.channels_last,
            ddp=ddp,
            progress=progress,
        )

    def make_checkpoint(epoch: int, step_in_epoch: int) -> dict[str, Any] | None:
        states = [rng_state()]
        if ddp.enabled:
            gathered: list[Any] = [None] * ddp.world
            dist.all_gather_object(gathered, states[0])
            states = gathered
        if not ddp.main:
            return None
        return {
            "format": FORMAT,
            "model_spec": spec.to_dict(),
            "classes": classes,
            "preset": preset.to_dict(),
            "config": asdict(config),
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "meters": dict(meters),
            "history": history,
            "best": best,
            "rng": states,
            "world_size": ddp.world,
            "elapsed_s": elapsed_before + time.perf_counter() - wall_start,
            "params": counts.params,
            "macs": counts.macs,
        }

    def save(name: str, epoch: int, step_in_epoch: int) -> None:
        state = make_checkpoint(epoch, step_in_epoch)
        if state is not None:
            atomic_save(state, out / name)

    board = _tensorboard(out) if ddp.main else None
    interactive = ddp.main and not config.quiet and sys.stderr.isatty()
    if ddp.main:
        log.info(
            "training %s (%s params, %s MACs) on %d images (%d classes), eval on %d; %s, "
            "%d process(es), %d epochs x %d steps",
            spec.label(),
            f"{counts.params:,}",
            f"{counts.macs:,}",
            len(train_set),
            len(classes),
            len(data.eval_set),
            device,
            ddp.world,
            config.epochs,
            steps_per_epoch,
        )

    from tqdm import tqdm

    last_eval: dict[str, Any] = {}
    with _StopRequested() as stop:
        for epoch in range(start_epoch, config.epochs):
            data.sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            data.sampler.skip = start_step * config.batch_size if epoch == start_epoch else 0
            first_step = start_step if epoch == start_epoch else 0
            if first_step == 0:
                meters = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "train_s": 0.0}
            train_model.train()
            bar = tqdm(
                total=steps_per_epoch,
                initial=first_step,
                disable=not interactive,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                leave=False,
            )
            tick = time.perf_counter()
            for step, (images, targets) in enumerate(data.loader, start=first_step):
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast_for(device, config.amp):
                    logits = train_model(images)
                    loss = criterion(logits, targets)
                if not torch.isfinite(loss):
                    save("last.pt", epoch, step)  # keep the state before the blow-up
                    raise GhostnetError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower "
                        "--lr or use --clip-grad (state before this step kept in last.pt)"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                global_step += 1
                meters["loss"] += loss.item() * len(targets)
                meters["correct"] += (logits.argmax(1) == targets).sum().item()
                meters["seen"] += len(targets)
                now = time.perf_counter()
                meters["train_s"] += now - tick
                tick = now
                bar.update(1)
                if interactive and step % 10 == 0:
                    bar.set_postfix(
                        loss=f"{meters['loss'] / meters['seen']:.3f}",
                        acc=f"{100 * meters['correct'] / meters['seen']:.1f}",
                        img_s=f"{meters['seen'] / max(meters['train_s'], 1e-9):.0f}",
                    )
                last_in_epoch = step + 1 >= steps_per_epoch
                periodic = config.checkpoint_every and global_step % config.checkpoint_every == 0
                stopping = stop.signal is not None
                if ddp.enabled:  # every rank must agree, or the checkpoint gather deadlocks
                    flag = _all_reduce(torch.tensor([float(stopping)]), ddp)
                    stopping = bool(flag.item() > 0)
                if (periodic or stopping) and not last_in_epoch:
                    save("last.pt", epoch, step + 1)
                if stopping:
                    bar.close()
                    if ddp.main:
                        log.info("stopped by a signal: state saved to %s", out / "last.pt")
                    raise KeyboardInterrupt
            bar.close()
            start_step = 0

            # ---- end of epoch: metrics over all ranks, evaluation, checkpoints
            sums = _all_reduce(
                torch.tensor(
                    [meters["loss"], meters["correct"], meters["seen"]], dtype=torch.float64
                ),
                ddp,
            )
            train_seconds = meters["train_s"]
            if ddp.enabled:
                for buffer in eval_model.buffers():  # BN statistics of rank 0
                    dist.broadcast(buffer, 0)
            last_eval = run_eval(progress=interactive)
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": sums[0].item() / max(sums[2].item(), 1),
                "train_top1": 100.0 * sums[1].item() / max(sums[2].item(), 1),
                "eval_loss": last_eval["loss"],
                "eval_top1": last_eval["top1"],
                "eval_top5": last_eval["top5"],
                "train_images_per_s": sums[2].item() / max(train_seconds, 1e-9),
                "epoch_s": train_seconds,
            }
            history.append(row)
            improved = last_eval["top1"] > best["top1"]
            if improved:
                best = {"top1": last_eval["top1"], "epoch": epoch + 1}
            if ddp.main:
                log.info(
                    "epoch %d/%d  train loss %.4f top-1 %.2f  |  eval loss %.4f top-1 %.2f "
                    "top-5 %.2f  |  %.0f img/s",
                    epoch + 1,
                    config.epochs,
                    row["train_loss"],
                    row["train_top1"],
                    row["eval_loss"],
                    row["eval_top1"],
                    row["eval_top5"],
                    row["train_images_per_s"],
                )
                _write_metrics(out, history)
                if board is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            board.add_scalar(key, value, epoch + 1)
            state = make_checkpoint(epoch + 1, 0)
            if state is not None:
                atomic_save(state, out / "last.pt")
                if improved:
                    atomic_save(state, out / "best.pt")

    if not last_eval:  # resumed a run that had already finished
        last_eval = run_eval()
    summary: dict[str, Any] = {}
    if ddp.main:
        if board is not None:
            board.close()
        images_per_s = [h["train_images_per_s"] for h in history]
        summary = {
            "model": spec.label(),
            "model_spec": spec.to_dict(),
            "top1": last_eval["top1"],
            "top5": last_eval["top5"],
            "eval_loss": last_eval["loss"],
            "best_top1": best["top1"],
            "best_epoch": best["epoch"],
            "params": counts.params,
            "macs": counts.macs,
            "epochs": config.epochs,
            "train_images": len(train_set),
            "eval_images": last_eval["count"],
            "train_images_per_s": float(np.median(images_per_s)) if images_per_s else None,
            "wall_s": elapsed_before + time.perf_counter() - wall_start,
            "world_size": ddp.world,
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "recipe": config.recipe,
            "config": asdict(config),
            "classes": classes,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        try:
            from .plots import plot_curves

            plot_curves(history, out / "curves.png", title=spec.label())
        except ImportError:
            log.info("matplotlib not installed: no curves.png (pip install 'ghostnet[viz]')")
    if ddp.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return summary

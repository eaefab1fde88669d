"""Image classification: ImageFolder / CIFAR data with seeded augmentation, any registry /
torchvision / timm model (ghostified or not), cross-entropy with label smoothing, mixup /
cutmix and knowledge distillation (logits and feature maps), top-1/top-5 evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...checkpoint import evaluation_weights, read_init_weights
from ...config import TrainConfig
from ...counting import profile
from ...data import (
    Batch,
    ImageDataset,
    Preset,
    balanced_subset,
    batch_mixer,
    build_transform,
    choose_preset,
    collate_skipping,
    open_data,
)
from ...distill import FeatureMatch, TrainLoss, load_teacher
from ...errors import GhostnetError
from ...models import ModelSpec
from ..distributed import Collectives
from ..optim import autocast_for
from ..task import ModelInfo, StepOutput, Task, TaskData, register_task


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    *,
    amp: str = "none",
    channels_last: bool = False,
    collectives: Collectives | None = None,
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
    if collectives is not None:
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
    dataset: ImageDataset, batch_size: int, workers: int, rank: int = 0, world: int = 1
) -> DataLoader:
    """Loader over this rank's share (rank::world, no padding) of an eval set."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(rank, len(dataset), world)),
        num_workers=workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(0),
    )


def build_classifier(
    config: TrainConfig, classes: list[str], preset: Preset
) -> tuple[nn.Module, ModelSpec, Any]:
    """The model (same initial weights on every rank), its spec and counts."""
    torch.manual_seed(config.seed)
    spec = config.spec
    spec.kwargs.setdefault("num_classes", len(classes))
    model = spec.build()
    if config.init_weights:
        from ...weights import load_into

        state, _ = read_init_weights(config.init_weights)
        load_into(model, state, source=config.init_weights)
    counts = profile(model, (3, preset.input_size, preset.input_size))
    return model, spec, counts


ModelFactory = Any  # (config, classes, preset) -> (model, spec, counts), as build_classifier


@register_task
class ClassificationTask(Task):
    """Image classification (the default task)."""

    name = "classification"
    best_metric = "top1"
    options = frozenset(
        {
            "label_smoothing",
            "augment",
            "randaugment",
            "random_erase",
            "mixup",
            "cutmix",
            "teacher",
            "kd_alpha",
            "kd_temperature",
            "kd_features",
            "kd_feature_weight",
            "channels_last",
            "compile",
            "preset",
            "input_size",
            "strict_data",
        }
    )
    train_stats = ("correct",)

    def __init__(self, config: TrainConfig, model_factory: ModelFactory | None = None) -> None:
        super().__init__(config)
        # a caller's own model builder (same signature as build_classifier), e.g. an
        # experiment that trains a reparameterised or otherwise custom student
        self.model_factory = model_factory or build_classifier
        self.teacher: nn.Module | None = None
        self.features: FeatureMatch | None = None

    # ------------------------------------------------------------ data

    def open_data(self, rank: int, world: int, checkpoint: dict[str, Any] | None) -> TaskData:
        config = self.config
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
        self.preset = choose_preset(config.preset, train_split.image_size, config.input_size)
        train_tf = build_transform(
            self.preset, True, config.randaugment, config.random_erase, config.augment
        )
        train_set = ImageDataset(train_split, train_tf, config.seed, config.strict_data)
        self.eval_set = ImageDataset(eval_split, build_transform(self.preset, False), config.seed)
        self.eval_loader = eval_loader(
            self.eval_set, config.batch_size, config.workers, rank, world
        )
        self.classes = source.classes
        return TaskData(
            train_set, self.eval_set, collate_skipping, source.classes, list(train_split.skipped)
        )

    # ------------------------------------------------------------ model

    def build_model(
        self, data: TaskData, checkpoint: dict[str, Any] | None
    ) -> tuple[nn.Module, ModelInfo]:
        model, self.spec, counts = self.model_factory(self.config, data.classes, self.preset)
        self.mixer = batch_mixer(self.config.mixup, self.config.cutmix, len(data.classes))
        return model, ModelInfo(self.spec.label(), counts.params, counts.macs)

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        config = self.config
        input_size = (3, self.preset.input_size, self.preset.input_size)
        if config.teacher:
            self.teacher = load_teacher(config.teacher, self.classes, input_size, device)
            if config.channels_last:
                self.teacher.to(memory_format=torch.channels_last)
            if config.kd_features:
                self.features = FeatureMatch(
                    model,
                    self.teacher,
                    config.kd_features,
                    config.kd_feature_weight,
                    input_size,
                    device,
                )
        self.loss = TrainLoss(
            config.label_smoothing,
            config.kd_alpha if self.teacher is not None else 0.0,
            config.kd_temperature,
        )

    def describe(self) -> list[str]:
        c, p = self.config, self.preset
        lines = []
        if self.teacher is not None:
            lines.append(f"teacher {c.teacher} (alpha {c.kd_alpha}, T {c.kd_temperature})")
        if self.features is not None:
            lines.append(
                f"feature distillation (weight {c.kd_feature_weight:g}) at "
                f"{len(self.features.names)} modules: {', '.join(self.features.names)}"
            )
        lines.append(
            f"data preset {p.name}: input {p.input_size}x{p.input_size}, mean "
            f"{','.join(f'{m:.3f}' for m in p.mean)}, std {','.join(f'{s:.3f}' for s in p.std)}"
        )
        return lines

    def close(self) -> None:
        if self.features is not None:
            self.features.remove()
            self.features = None

    # ------------------------------------------------------------ training

    def step(self, model: nn.Module, batch: Batch, device: torch.device) -> StepOutput | None:
        """(mix) -> forward (+ teacher) -> loss; the batch's correct count as the stat."""
        if not len(batch.targets):
            return None
        images = batch.images.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        if self.mixer is not None:
            images, targets = self.mixer(images, targets)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
        loss = self.loss(logits, targets, teacher_logits, self.features)
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        correct = (logits.detach().argmax(1) == hard).sum().reshape(1)
        return StepOutput(loss, len(hard), correct)

    def evaluate(
        self, model: nn.Module, device: torch.device, collectives: Collectives, progress: bool
    ) -> dict[str, Any]:
        return evaluate(
            model,
            self.eval_loader,
            device,
            len(self.classes),
            amp=self.config.amp,
            channels_last=self.config.channels_last,
            collectives=collectives,
            progress=progress,
        )

    def train_row(self, sums: dict[str, float]) -> dict[str, float]:
        return {"train_top1": 100.0 * sums["correct"] / max(sums["seen"], 1.0)}

    def eval_row(self, result: dict[str, Any]) -> dict[str, float]:
        return {
            "eval_loss": result["loss"],
            "eval_top1": result["top1"],
            "eval_top5": result["top5"],
        }

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "model_spec": self.spec.to_dict(),
            "classes": self.classes,
            "preset": self.preset.to_dict(),
        }

    def summary(self, last_eval: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        found = best.get("epoch", -1) > 0
        return {
            "model_spec": self.spec.to_dict(),
            "top1": last_eval.get("top1"),
            "top5": last_eval.get("top5"),
            "eval_loss": last_eval.get("loss"),
            "best_top1": best["top1"] if found else None,
            "eval_images": last_eval.get("count", len(self.eval_set)),
            "preset": self.preset.to_dict(),
            "teacher": self.config.teacher,
        }

    # ------------------------------------------------------------ outside training

    @classmethod
    def model_from_checkpoint(cls, checkpoint: dict[str, Any], source: str) -> nn.Module:
        from ...weights import load_into

        model = ModelSpec.from_dict(checkpoint["model_spec"]).build()
        load_into(model, evaluation_weights(checkpoint), source=source)
        return model.eval()

"""What a training run depends on: ``TrainConfig``, the named recipes, and their checks.

Each field carries its own help text and valid range (``field(metadata=...)``), so the
``ghostnet train`` flags, their ``--help`` and the checks that run before any work all come
from this one table. A config is plain data and is stored in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .errors import GhostnetError

AUGMENTS = ("crop-flip", "flip", "none")


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[str, ...] | None = None,
    group: str = "optimisation",
    flag: bool = True,
    resume: str = "fixed",
) -> Any:
    """A config field with its help text, its valid range or choices, and its CLI group.

    ``resume`` says what ``--resume`` may do with a changed value: ``fixed`` (refused, the
    run would not be the one in the checkpoint), ``free`` (only where/how verbosely it runs),
    ``replan`` (applied; the LR schedule is re-planned from the current step).
    """
    meta = {
        "help": help,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": choices,
        "group": group,
        "flag": flag,
        "resume": resume,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_options(options: Any) -> None:
    """Raise one ``GhostnetError`` naming the first field of the dataclass ``options``
    (fields made by :func:`option`) whose value is outside its range or choices."""
    for f in fields(options):
        value = getattr(options, f.name)
        meta = f.metadata
        name = "--" + f.name.replace("_", "-")
        if value is None or not meta:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise GhostnetError(
                f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}"
            )
        low, high = meta.get("low"), meta.get("high")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise GhostnetError(f"{name} must be a finite number, got {value}")
        if low is not None and (value < low or (meta["low_open"] and value == low)):
            op = ">" if meta["low_open"] else ">="
            raise GhostnetError(f"{name} must be {op} {low:g}, got {value:g}")
        if high is not None and (value > high or (meta["high_open"] and value == high)):
            op = "<" if meta["high_open"] else "<="
            raise GhostnetError(f"{name} must be {op} {high:g}, got {value:g}")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint as plain data."""

    model: str = option(MISSING, "model name", flag=False)
    data: str = option(MISSING, "data folder", flag=False)
    out: str = option(MISSING, "run folder", flag=False, resume="free")
    model_kwargs: dict[str, Any] = option({}, "extra model arguments", flag=False)
    ghostify: dict[str, Any] | None = option(None, "ghostify options", flag=False)
    recipe: str | None = option(None, "named recipe", flag=False, resume="free")
    task: str = option(
        "classification",
        "what to train: an image classifier, or a detector or segmenter over --model as backbone",
        choices=("classification", "detection", "segmentation"),
        group="task",
    )
    detector: str | None = option(
        None,
        "with --task detection: fasterrcnn, retinanet, fcos or ssdlite",
        choices=("fasterrcnn", "retinanet", "fcos", "ssdlite"),
        group="task",
    )
    fpn_channels: int = option(
        128, "with --task detection: width of the FPN and the detector's head", low=16, group="task"
    )
    head_convs: int = option(
        4,
        "with --detector fcos: 3x3 conv layers in each head branch (FCOS's paper: 4; "
        "2 halves the head's cost, which dominates a mobile backbone's detector)",
        low=1,
        group="task",
    )
    segmenter: str | None = option(
        None,
        "with --task segmentation: lraspp, deeplabv3 or fcn over --model, or torchvision's "
        "lraspp_mobilenet_v3_large / deeplabv3_mobilenet_v3_large (untrained; --model unused)",
        choices=(
            "lraspp",
            "deeplabv3",
            "fcn",
            "torchvision:lraspp_mobilenet_v3_large",
            "torchvision:deeplabv3_mobilenet_v3_large",
        ),
        group="task",
    )
    output_stride: int | None = option(
        None,
        "with --task segmentation: 8 or 16, the backbone dilated past it (default: lraspp 16, "
        "deeplabv3/fcn 8)",
        low=8,
        high=16,
        group="task",
    )
    aux_loss: float = option(
        0.0,
        "with --segmenter deeplabv3/fcn: weight of an auxiliary FCN head's loss on the "
        "second-last level (torchvision: 0.5); 0 = no auxiliary head",
        low=0,
        group="task",
    )
    epochs: int = option(30, "training epochs", low=1, resume="replan")
    batch_size: int = option(128, "images per step and process", low=1)
    lr: float = option(0.1, "peak learning rate", low=0, low_open=True, resume="replan")
    opt: str = option("sgd", "optimizer", choices=("sgd", "adamw", "rmsprop"))
    momentum: float = option(0.9, "SGD/RMSprop momentum", low=0, high=1, high_open=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    rmsprop_eps: float = option(1e-3, "RMSprop epsilon", low=0, low_open=True)
    weight_decay: float = option(5e-4, "on conv/linear weights only (not BN, not biases)", low=0)
    sched: str = option(
        "cosine", "LR schedule after warm-up", choices=("cosine", "step"), resume="replan"
    )
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs", low=0, resume="replan")
    milestones: list[int] = option(
        [], "epochs where --sched step divides the LR by 1/gamma, e.g. 82,123", resume="replan"
    )
    decay_epochs: float = option(
        0.0,
        "--sched step: decay every this many epochs instead of at --milestones (0 = off)",
        low=0,
        resume="replan",
    )
    gamma: float = option(0.1, "step decay factor", low=0, high=1, low_open=True, resume="replan")
    min_lr: float = option(0.0, "cosine floor", low=0, resume="replan")
    label_smoothing: float = option(0.0, "label smoothing", low=0, high=1, high_open=True)
    clip_grad: float = option(0.0, "max gradient norm (0 = off)", low=0)
    ema: float = option(
        0.0, "EMA decay per step, e.g. 0.9999 (0 = off)", low=0, high=1, high_open=True
    )
    on_nonfinite: str = option(
        "stop",
        "a non-finite loss: stop (every process, the last finite checkpoint kept) or skip "
        "the step (costs one host sync per step)",
        choices=("stop", "skip"),
    )
    augment: str = option(
        "crop-flip",
        "geometric augmentation of training images: random crop (cifar: pad 4 and crop; "
        "imagenet: random-resized crop) and horizontal flip, flips only, or none (then "
        "training images are prepared as evaluation images are, plus the flip for 'flip')",
        choices=AUGMENTS,
        group="augmentation",
    )
    randaugment: int = option(
        0,
        "RandAugment magnitude, 2 ops per image (0 = off; 9 is usual)",
        low=0,
        high=30,
        group="augmentation",
    )
    random_erase: float = option(
        0.0, "random erasing probability", low=0, high=1, group="augmentation"
    )
    mixup: float = option(
        0.0, "mixup alpha (0 = off), batch level, soft targets", low=0, group="augmentation"
    )
    cutmix: float = option(
        0.0,
        "cutmix alpha (0 = off); with --mixup too, one of the two per batch",
        low=0,
        group="augmentation",
    )
    teacher: str | None = option(
        None,
        "distil from a teacher: a run's best.pt, or a registry/torchvision/timm name with "
        "published weights",
        group="distillation",
    )
    kd_alpha: float = option(
        0.5,
        "weight of the distillation term: (1-a) CE + a T^2 KL(teacher || student)",
        low=0,
        high=1,
        group="distillation",
    )
    kd_temperature: float = option(
        4.0,
        "softmax temperature of the distillation term",
        low=0,
        low_open=True,
        group="distillation",
    )
    kd_features: str | None = option(
        None,
        "also match the teacher's feature maps: comma-separated module names (shell patterns, "
        "e.g. 'layer*.*') present in both models with outputs of the same shape; the loss "
        "adds --kd-feature-weight x their mean squared error relative to the teacher's",
        group="distillation",
    )
    kd_feature_weight: float = option(
        1.0,
        "weight of the feature-map term of --kd-features",
        low=0,
        group="distillation",
    )
    init_weights: str | None = option(
        None,
        "start the model from these weights (a training checkpoint or a weights file, "
        "loaded strictly); with --task detection a classifier's weights start the backbone "
        "(its head left out), a detection checkpoint's the whole detector",
        group="distillation",
    )
    amp: str = option("none", "mixed precision", choices=("none", "bf16", "fp16"), group="runtime")
    channels_last: bool = option(False, "channels_last memory format", group="runtime")
    compile: bool = option(
        False,
        "torch.compile the model for training (first steps are slow)",
        group="runtime",
        resume="free",
    )
    sync_bn: bool = option(False, "torchrun on CUDA: BatchNorm over all processes", group="runtime")
    dist_timeout: float = option(
        1800.0,
        "torchrun: seconds a collective may wait for the other processes before the run "
        "ends with one line (a dead or hung peer); passed to init_process_group",
        low=1,
        group="runtime",
        resume="free",
    )
    seed: int = option(0, "seed of data order, augmentation and init", low=0, group="runtime")
    workers: int = option(0, "data loader processes", low=0, group="runtime", resume="free")
    device: str = option(
        "auto", "where to train", choices=("auto", "cpu", "cuda"), group="runtime", resume="free"
    )
    checkpoint_every: int = option(
        0,
        "also save last.pt every N steps (0 = at epoch ends only)",
        low=0,
        group="runtime",
        resume="free",
    )
    log_every: int = option(
        50,
        "read the running metrics back every N steps (a log line when not on a terminal)",
        low=1,
        group="runtime",
        resume="free",
    )
    quiet: bool = option(False, "no progress output", group="runtime", resume="free")
    preset: str = option(
        "auto",
        "image preparation: cifar (pad-crop, flip) or imagenet (random-resized crop, flip); "
        "auto picks by the images' size",
        choices=("auto", "cifar", "imagenet"),
        group="data",
    )
    input_size: int | None = option(
        None, "network input side (default: cifar 32, imagenet 224)", low=8, group="data"
    )
    train_subset: int | None = option(
        None, "class-balanced subset of N training images", low=1, group="data"
    )
    eval_subset: int | None = option(
        None, "class-balanced subset of N eval images", low=1, group="data", resume="free"
    )
    strict_data: bool = option(
        False, "an unreadable image is an error instead of being skipped", group="data"
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise one ``GhostnetError`` naming the first value out of its range."""
        check_options(self)
        if any(not isinstance(m, int) or m < 1 for m in self.milestones):
            raise GhostnetError(f"--milestones must be epochs >= 1, got {self.milestones}")
        if self.task == "detection" and self.detector is None:
            raise GhostnetError(
                "--task detection needs --detector fasterrcnn|retinanet|fcos|ssdlite"
            )
        if self.teacher is not None and not str(self.teacher).strip():
            raise GhostnetError("--teacher is empty: give a checkpoint path or a model name")
        if self.kd_features is not None and self.teacher is None:
            raise GhostnetError("--kd-features needs --teacher (the model whose maps to match)")

    @property
    def spec(self) -> Any:
        from .models import ModelSpec

        return ModelSpec(self.model, dict(self.model_kwargs), self.ghostify)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def flag_fields() -> list[Any]:
    """The config fields that are ``ghostnet train`` flags, in declaration order."""
    return [f for f in fields(TrainConfig) if f.metadata.get("flag", True)]


def default_of(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


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
    # The published GhostNetV2 ImageNet recipe (official ghostnetv2_pytorch README, run with
    # timm's train.py on 8 GPUs x 128): 450 epochs, RMSprop (eps 1e-3) at lr 0.064, the LR
    # multiplied by 0.973 every 2.4 epochs after 3 warm-up epochs, wd 1e-5, EMA 0.9999,
    # RandAugment m9, random erasing 0.2, dropout 0.2 (the models' default), AMP. Reported:
    # GhostNetV2-1.0x 75.3% top-1. Not reproduced here: timm's "rmsproptf" variant (torch's
    # RMSprop is used), its LR noise, and "mstd0.5" magnitude noise of RandAugment.
    "ghostnetv2-imagenet": dict(
        epochs=450,
        batch_size=128,
        lr=0.064,
        opt="rmsprop",
        momentum=0.9,
        rmsprop_eps=1e-3,
        weight_decay=1e-5,
        sched="step",
        decay_epochs=2.4,
        gamma=0.973,
        warmup_epochs=3.0,
        ema=0.9999,
        randaugment=9,
        random_erase=0.2,
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
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise GhostnetError(f"unknown training option(s): {', '.join(unknown)}")
    return TrainConfig(**values)

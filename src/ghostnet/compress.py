"""Compress a trained CNN into a Ghost model: inherit the trained weights, then distil.

``compress(...)``: the trained model and the data -> calibration images from the training
split -> ``ghostify`` with inherited weights (:mod:`ghostnet.inherit`; per-layer fit errors)
-> a training-format checkpoint of the inherited model (``inherited.pt``, usable by
``ghostnet eval/predict/export``) -> its top-1 before any training -> optionally a few
epochs of knowledge distillation from the original (``train.fit`` with ``teacher`` and
``init_weights``) -> ``summary.json`` with the original, inherited and distilled numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import MISSING, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from .checkpoint import FORMAT, atomic_save, model_from_checkpoint, remove_stale_temp_files
from .config import AUGMENTS, RECIPES, check_options, config_from, option
from .convert import ghostify
from .counting import profile
from .data import ImageDataset, Preset, balanced_subset, build_transform, choose_preset, open_data
from .data import calibration_images as load_calibration
from .distill import matched_modules
from .errors import GhostnetError
from .inherit import FIT_ON, MIN_CALIBRATION_IMAGES, inherit_weights
from .layers import GhostConv2d
from .models import ModelSpec
from .safe_io import RunFolderLock, error_line, write_failure, write_text
from .weights import safe_torch_load

log = logging.getLogger("ghostnet")


@dataclass
class CompressOptions:
    """What ``compress`` does. Each field carries its help text and range (``option``), so
    the ``ghostnet compress`` flags and the checks before any work come from this table."""

    data: str = option(MISSING, "folder with train/ and test/ (or val/)", flag=False)
    out: str = option(MISSING, "output folder", flag=False)
    checkpoint: str | None = option(
        None, "a training run's best.pt; with --model, any weights file of that model", flag=False
    )
    model: str | None = option(
        None,
        "registry name, torchvision:NAME or timm:NAME (weights: --checkpoint, else the "
        "published ones)",
        flag=False,
    )
    model_kwargs: dict[str, Any] = option({}, "extra model arguments", flag=False)
    ratio: int = option(2, "ratio s: 1/s of each converted conv's maps kept", low=2, group="ghost")
    dw_size: int = option(3, "cheap-op kernel d", low=1, group="ghost")
    include: list[str] | None = option(
        None, "only convs matching this name pattern (repeatable)", group="ghost"
    )
    exclude: list[str] | None = option(
        None, "keep convs matching this name pattern (repeatable)", group="ghost"
    )
    skip_first: bool = option(True, "leave the stem conv as it is", group="ghost")
    calibration_images: int = option(
        256,
        "training images the cheap ops are fitted on",
        low=MIN_CALIBRATION_IMAGES,
        group="inherit",
    )
    bn_images: int = option(
        2048,
        "re-estimate BN statistics on N training images after inheriting (0: off)",
        low=0,
        group="inherit",
    )
    fit_on: str = option(
        "converted",
        "fit each layer on the partially converted network or the original",
        choices=FIT_ON,
        group="inherit",
    )
    refine_steps: int = option(
        0,
        "after the least-squares fits, N Adam steps per layer matching the original conv's "
        "output on the calibration images (layer-wise reconstruction; 0: off)",
        low=0,
        group="inherit",
    )
    epochs: int = option(
        3, "distillation epochs (0: inherit and evaluate only)", low=0, group="distillation"
    )
    recipe: str | None = option(
        "cifar-fast",
        "training recipe of the distillation",
        choices=tuple(sorted(RECIPES)),
        group="distillation",
    )
    lr: float = option(
        0.01, "peak LR of the distillation", low=0, low_open=True, group="distillation"
    )
    batch_size: int | None = option(
        None, "distillation batch size (default: the recipe's)", low=1, group="distillation"
    )
    kd_alpha: float | None = option(
        None, "weight of the distillation term", low=0, high=1, group="distillation"
    )
    kd_temperature: float | None = option(
        None,
        "distillation temperature (default: the trainer's)",
        low=0,
        low_open=True,
        group="distillation",
    )
    kd_features: str | None = option(
        None,
        "also distil feature maps: 'blocks' (the outputs of the blocks that hold converted "
        "convs) or comma-separated module-name patterns",
        group="distillation",
    )
    kd_feature_weight: float | None = option(
        None, "weight of the feature term (default: 1)", low=0, group="distillation"
    )
    augment: str | None = option(
        None,
        "augmentation of the distillation's training images (default crop-flip; 'flip' "
        "distils better in 3 epochs, see the compress results)",
        choices=AUGMENTS,
        group="distillation",
    )
    train_subset: int | None = option(
        None, "distil on N class-balanced images", low=1, group="data"
    )
    eval_subset: int | None = option(
        None, "evaluate on N class-balanced images", low=1, group="data"
    )
    seed: int = option(0, "seed of the calibration draw and the distillation", group="runtime")
    workers: int = option(0, "data-loading worker processes", low=0, group="runtime")
    device: str = option("auto", "where to run", choices=("auto", "cpu", "cuda"), group="runtime")
    eval_batch_size: int = option(256, "evaluation batch size", low=1, group="runtime")
    quiet: bool = option(False, "no progress output", flag=False)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class Original:
    model: nn.Module
    spec: ModelSpec
    classes: list[str] | None
    preset: Preset | None
    teacher: str | None  # a training checkpoint the trainer can load as --teacher


def load_original(options: CompressOptions) -> Original:
    """The trained model: a training checkpoint (it records its model), or ``--model NAME``
    with a weights file (any state_dict / safetensors / training checkpoint) or, without
    one, the model's published weights."""
    if options.model is None:
        if options.checkpoint is None:
            raise GhostnetError("give --checkpoint RUN/best.pt, or --model NAME [--checkpoint W]")
        model, checkpoint = model_from_checkpoint(options.checkpoint)
        spec = ModelSpec.from_dict(checkpoint["model_spec"])
        preset = Preset.from_dict(checkpoint["preset"])
        return Original(model, spec, list(checkpoint["classes"]), preset, options.checkpoint)
    spec = ModelSpec(options.model, dict(options.model_kwargs))
    path = options.checkpoint
    if path is not None and Path(path).is_file() and not path.endswith(".safetensors"):
        data = safe_torch_load(path)
        if isinstance(data, dict) and data.get("format") == FORMAT:
            recorded = ModelSpec.from_dict(data["model_spec"])
            if recorded.name != spec.name:
                raise GhostnetError(
                    f"--checkpoint {path} holds a {recorded.name}, not {spec.name}; drop "
                    "--model or pass the matching checkpoint"
                )
            model, checkpoint = model_from_checkpoint(path)
            preset = Preset.from_dict(checkpoint["preset"])
            return Original(model, recorded, list(checkpoint["classes"]), preset, path)
    if path is not None and not Path(path).is_file():
        raise GhostnetError(f"--checkpoint: file not found: {path}")
    model = spec.build(pretrained=path if path is not None else True)
    return Original(model.eval(), spec, None, None, None)


RUN_FILES = ("summary.json", "inherited.pt", "last.pt", "best.pt", "distill")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GhostnetError(f"--out {out} is an existing file; give a folder path")
    held = [n for n in RUN_FILES if (out / n).exists()]
    if held:
        raise GhostnetError(
            f"--out {out} already holds a run ({', '.join(held)}); choose a new --out"
        )


def _dataset(split: Any, preset: Preset, subset: int | None, seed: int) -> ImageDataset:
    if subset:
        split = split.subset(balanced_subset(split.labels, subset, seed))
    return ImageDataset(split, build_transform(preset, train=False), seed)


def calibration_images(train_split: Any, preset: Preset, count: int, seed: int) -> torch.Tensor:
    """``count`` class-balanced *training* images prepared as for evaluation (no
    augmentation), through the one loader :func:`ghostnet.data.calibration_images`."""
    return load_calibration(train_split, preset, count, seed, minimum=MIN_CALIBRATION_IMAGES)


def reestimate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> int:
    """Re-estimate every BatchNorm's running statistics on ``images`` with torch's
    ``swa_utils.update_bn`` (training-mode forwards, a cumulative average, no gradient
    step). An inherited layer's ghost maps are fits, so their mean and variance drift from
    what the next BN stored; this measures them again. Leaves the model in eval mode;
    returns the number of BN layers."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    device = next(model.parameters()).device
    with torch.no_grad():
        update_bn(images.split(batch_size), model, device=device)
    model.eval()
    return len(norms)


@torch.no_grad()
def teacher_kl(
    student: nn.Module, teacher: nn.Module, images: torch.Tensor, batch_size: int = 128
) -> float:
    """Mean KL(teacher || student) of the softmax outputs over ``images`` (eval mode)."""
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        target = torch.log_softmax(teacher(batch).float(), dim=1)
        guess = torch.log_softmax(student(batch).float(), dim=1)
        kl = torch.nn.functional.kl_div(guess, target, log_target=True, reduction="sum")
        total += float(kl)
    return total / max(len(images), 1)


def _evaluate(
    model: nn.Module, dataset: ImageDataset, options: CompressOptions, device: torch.device
) -> dict[str, Any]:
    from .train import eval_loader, evaluate

    loader = eval_loader(dataset, options.eval_batch_size, options.workers)
    start = time.perf_counter()
    result = evaluate(model.to(device), loader, device, len(dataset.split.classes))
    result["wall_s"] = time.perf_counter() - start
    result.pop("per_class", None)
    result.pop("per_class_count", None)
    return result


def training_checkpoint(
    model: nn.Module, spec: ModelSpec, classes: list[str], preset: Preset, extra: dict[str, Any]
) -> dict[str, Any]:
    """The keys ``checkpoint.model_from_checkpoint`` and ``--init-weights`` read."""
    return {
        "format": FORMAT,
        "task": "classification",
        "model_spec": spec.to_dict(),
        "classes": list(classes),
        "preset": preset.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": None,
        **extra,
    }


def block_names(model: nn.Module, converted: list[str]) -> list[str]:
    """The blocks holding converted convs: for each, the shortest prefix of its name that is
    an element of a Sequential/ModuleList (ResNet's ``layer1.0``, MobileNet's ``blocks.3``
    or ``features.3``; a VGG conv that sits in the Sequential itself is its own block).
    Their outputs keep the original's shapes, so they are where the student can be held
    to the teacher's maps (``--kd-features blocks``)."""
    modules = dict(model.named_modules())
    found: list[str] = []
    for name in converted:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            parent = modules[".".join(parts[: end - 1])]
            if isinstance(parent, (nn.Sequential, nn.ModuleList)):
                prefix = ".".join(parts[:end])
                if prefix not in found:
                    found.append(prefix)
                break
        else:
            found.append(name)  # no container: the conv's own output
    return found


def compress(options: CompressOptions) -> dict[str, Any]:
    """Inherit, evaluate, distil, evaluate; writes ``summary.json`` and returns it.

    The --out folder is locked (``DIR/.lock``, as ``ghostnet train`` does) before anything
    is written in it: a second compress or a training on it refuses in one line naming
    this process. A folder this call created is removed again when it fails before
    writing a file."""
    wall_start = time.perf_counter()
    if 0 < options.bn_images < MIN_CALIBRATION_IMAGES:
        raise GhostnetError(
            f"--bn-images must be 0 (off) or >= {MIN_CALIBRATION_IMAGES}, got {options.bn_images}"
        )
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise GhostnetError(f"--out {out} is an existing file; give a folder path")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        failure = write_failure(out, exc)
        if failure is not None:
            raise error_line(out, failure) from None
        raise GhostnetError(f"--out {out}: cannot create the folder ({exc})") from exc
    lock = RunFolderLock(out).acquire()
    try:
        remove_stale_temp_files(out)  # a killed compress's temp files; we own the folder now
        _check_out(out)  # after the lock: a live owner is named, not its half-written files
        return _compress_owned(options, out, wall_start)
    except BaseException:
        if created and all(p.name == ".lock" for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def _compress_owned(options: CompressOptions, out: Path, wall_start: float) -> dict[str, Any]:
    from .train import fit, pick_device

    original = load_original(options)
    if original.spec.ghostify is not None:
        raise GhostnetError(
            f"{original.spec.label()} is already ghostified; compress its plain original"
        )
    source = open_data(options.data)
    assert source.train is not None
    classes = source.classes
    if original.classes is not None and original.classes != classes:
        raise GhostnetError(
            f"the model was trained on {len(original.classes)} classes "
            f"({', '.join(original.classes[:4])}...), {options.data} has {len(classes)} "
            f"({', '.join(classes[:4])}...); use the data it was trained on"
        )
    preset = original.preset or choose_preset("auto", source.train.image_size)
    device = pick_device(options.device)
    eval_set = _dataset(source.eval, preset, options.eval_subset, options.seed)
    size = (3, preset.input_size, preset.input_size)

    model = original.model.to(device).eval()
    with torch.no_grad():
        probe = model(torch.zeros(1, *size, device=device))
    if probe.ndim != 2 or probe.shape[1] != len(classes):
        raise GhostnetError(
            f"{original.spec.name} outputs {tuple(probe.shape[1:])} logits, the data has "
            f"{len(classes)} classes; pass --model-kwarg num_classes={len(classes)} with "
            "weights trained on these classes"
        )

    ghost_options: dict[str, Any] = {
        "ratio": options.ratio,
        "dw_size": options.dw_size,
        "skip_first": options.skip_first,
        "include": options.include,
        "exclude": options.exclude,
        "inherited": True,
    }
    spec = ModelSpec(original.spec.name, dict(original.spec.kwargs), ghost_options)
    inherited_path = out / "inherited.pt"
    teacher = original.teacher or str(out / "original.pt")
    config = None
    if options.epochs > 0:  # checked now, before minutes of work
        overrides: dict[str, Any] = dict(
            model=spec.name,
            model_kwargs=dict(spec.kwargs),
            ghostify=ghost_options,
            data=options.data,
            out=str(out / "distill"),
            epochs=options.epochs,
            lr=options.lr,
            warmup_epochs=0.0,  # the start is a trained model: no warm-up from scratch
            ema=0.0,  # a few epochs: an EMA would stay at the inherited start
            teacher=teacher,
            init_weights=str(inherited_path),
            kd_alpha=options.kd_alpha,
            kd_temperature=options.kd_temperature,
            kd_features=options.kd_features,
            kd_feature_weight=options.kd_feature_weight,
            batch_size=options.batch_size,
            augment=options.augment,
            train_subset=options.train_subset,
            eval_subset=options.eval_subset,
            seed=options.seed,
            workers=options.workers,
            device=options.device,
            preset=preset.name,
            input_size=preset.input_size,
            quiet=options.quiet,
        )
        config = config_from(options.recipe, **overrides)
        if config.kd_features not in (None, "blocks"):  # the student keeps these names
            matched_modules(model, model, config.kd_features)

    # 1. calibrate and inherit
    start = time.perf_counter()
    images = calibration_images(source.train, preset, options.calibration_images, options.seed)
    torch.manual_seed(options.seed)
    converted = ghostify(model, **ghost_options)
    names = [n for n, m in converted.named_modules() if isinstance(m, GhostConv2d)]
    fits = inherit_weights(
        model,
        converted,
        names,
        images.to(device),
        fit_on=options.fit_on,
        refine_steps=options.refine_steps,
    )
    converted.eval()
    inherit_s = time.perf_counter() - start
    if config is not None and config.kd_features == "blocks":
        config = replace(config, kd_features=",".join(block_names(converted, names)))
    counts_before, counts_after = profile(model, size), profile(converted, size)

    # 2. evaluate before any training; then with BN statistics re-estimated (no training)
    before = _evaluate(model, eval_set, options, device)
    inherited = _evaluate(converted, eval_set, options, device)
    log.info(
        "top-1: original %.2f, inherited Ghost model (0 epochs) %.2f",
        before["top1"],
        inherited["top1"],
    )
    reestimated: dict[str, Any] | None = None
    bn_s = 0.0
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in converted.modules())
    if options.bn_images > 0 and has_bn:
        # which BN statistics to keep is decided on other *training* images (the KL to the
        # original's predictions, no labels), never on the test set the top-1 reports
        held_out = calibration_images(
            source.train, preset, min(512, len(source.train)), options.seed + 2
        )
        fitted_stats = {k: v.clone() for k, v in converted.state_dict().items()}
        kl_fitted = teacher_kl(converted, model, held_out)
        start = time.perf_counter()
        bn_count = min(options.bn_images, len(source.train))
        bn_batch = calibration_images(source.train, preset, bn_count, options.seed + 1)
        reestimate_bn(converted, bn_batch)
        bn_s = time.perf_counter() - start
        reestimated = _evaluate(converted, eval_set, options, device)
        reestimated["images"] = len(bn_batch)
        reestimated["teacher_kl"] = teacher_kl(converted, model, held_out)
        reestimated["teacher_kl_fitted"] = kl_fitted
        reestimated["kept"] = reestimated["teacher_kl"] < kl_fitted
        if not reestimated["kept"]:
            converted.load_state_dict(fitted_stats)
        log.info(
            "top-1 with BN statistics re-estimated: %.2f (KL to the original on %d other "
            "training images: %.4f re-estimated vs %.4f fitted; keeping %s)",
            reestimated["top1"],
            len(held_out),
            reestimated["teacher_kl"],
            kl_fitted,
            "re-estimated" if reestimated["kept"] else "the fitted model's statistics",
        )

    # 3. training-format checkpoints: the inherited student, and the teacher if it has none
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(
        training_checkpoint(
            converted,
            spec,
            classes,
            preset,
            {"params": counts_after.params, "macs": counts_after.macs},
        ),
        inherited_path,
    )
    if original.teacher is None:  # a bare weights file: the trainer needs a checkpoint
        atomic_save(training_checkpoint(model, original.spec, classes, preset, {}), teacher)
    # the rebuilt model (what eval/export/the trainer will load) must be this very model
    rebuilt, _ = model_from_checkpoint(inherited_path)
    with torch.no_grad():
        sample = images[:8].to(device)
        gap = (rebuilt.to(device)(sample) - converted(sample)).abs().max().item()
    if gap > 1e-4:
        raise GhostnetError(f"{inherited_path}: the rebuilt model differs by {gap:.3g} (a bug)")

    # 4. distil from the original
    distilled: dict[str, Any] | None = None
    if config is not None:
        start = time.perf_counter()
        run = fit(config)
        distilled = {
            "epochs": options.epochs,
            "top1": run["top1"],
            "top5": run["top5"],
            "best_top1": run["best_top1"],
            "run": str(out / "distill"),
            "checkpoint": str(out / "distill" / "last.pt"),
            "train_images": run["train_images"],
            "eval_images": run["eval_images"],
            "lr": config.lr,
            "kd_alpha": config.kd_alpha,
            "kd_temperature": config.kd_temperature,
            "kd_features": config.kd_features,
            "kd_feature_weight": config.kd_feature_weight if config.kd_features else None,
            "batch_size": config.batch_size,
            "augment": config.augment,
            "recipe": config.recipe,
            "wall_s": time.perf_counter() - start,
        }

    summary: dict[str, Any] = {
        "original": {
            "model": original.spec.label(),
            "model_spec": original.spec.to_dict(),
            "source": options.checkpoint or "published weights",
            "top1": before["top1"],
            "top5": before["top5"],
            "params": counts_before.params,
            "macs": counts_before.macs,
        },
        "inherited": {
            "model": spec.label(),
            "checkpoint": str(inherited_path),
            "top1": inherited["top1"],
            "top5": inherited["top5"],
            "top1_bn_reestimated": reestimated["top1"] if reestimated else None,
            "top5_bn_reestimated": reestimated["top5"] if reestimated else None,
            "bn_images": reestimated["images"] if reestimated else 0,
            "bn_reestimate_kept": reestimated["kept"] if reestimated else False,
            "teacher_kl_fitted": reestimated["teacher_kl_fitted"] if reestimated else None,
            "teacher_kl_bn_reestimated": reestimated["teacher_kl"] if reestimated else None,
            "params": counts_after.params,
            "macs": counts_after.macs,
        },
        "distilled": distilled,
        "ratio": options.ratio,
        "dw_size": options.dw_size,
        "converted_layers": len(fits),
        "calibration_images": len(images),
        "fit_on": options.fit_on,
        "refine_steps": options.refine_steps,
        "eval_images": before["count"],
        "wall_s": {
            "inherit": inherit_s,
            "eval_original": before["wall_s"],
            "eval_inherited": inherited["wall_s"],
            "bn_reestimate": bn_s,
            "distill": distilled["wall_s"] if distilled else 0.0,
            "total": time.perf_counter() - wall_start,
        },
        "threads": torch.get_num_threads(),
        "device": str(device),
        "layers": [
            {
                "name": f.name,
                "channels": f.channels,
                "intrinsic": len(f.intrinsic),
                "mean_error": f.mean_error,
                "median_error": f.median_error,
                "max_error": max(f.errors, default=0.0),
                "output_error_before_refine": f.output_error_before,
                "output_error_after_refine": f.output_error_after,
                "seconds": f.seconds,
            }
            for f in fits
        ],
        "layout": {f.name: {"intrinsic": f.intrinsic, "sources": f.sources} for f in fits},
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary

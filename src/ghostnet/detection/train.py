"""Detector training and COCO evaluation beside the classification engine: same config
(:class:`ghostnet.config.TrainConfig` with ``task="detection"``), same optimizer/schedule/
device/RNG helpers, same checkpoint format (plus ``task``, ``detector`` and ``classes``),
atomic saves and exact resume (data order from seed + epoch, flips from (seed, epoch,
index), a resumed epoch skips the batches already done).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import FORMAT, atomic_save, read_checkpoint, remove_stale_temp_files
from ..config import TrainConfig
from ..engine import (
    ResumableSampler,
    autocast_for,
    build_optimizer,
    build_scheduler,
    pick_device,
    read_init_weights,
    replan_scheduler,
    resolve_resume,
    rng_state,
    set_rng_state,
)
from ..errors import GhostnetError
from .data import CocoSplit, DetectionDataset, collate, open_split
from .models import DetectorSpec

log = logging.getLogger("ghostnet")


def _spec(config: TrainConfig, num_classes: int) -> DetectorSpec:
    kind = getattr(config, "detector", None)
    if kind is None:
        raise GhostnetError("--task detection needs --detector fasterrcnn|retinanet|fcos|ssdlite")
    size = getattr(config, "input_size", None) or 256
    return DetectorSpec(
        kind=kind,
        backbone=config.model,
        num_classes=num_classes,
        backbone_kwargs=dict(config.model_kwargs),
        ghostify=config.ghostify,
        fpn_channels=config.fpn_channels,
        head_convs=config.head_convs,
        image_size=size,
    )


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    split: CocoSplit,
    device: torch.device,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """COCO box mAP (0.5:0.95), mAP@0.5 and per-class AP of ``model`` on ``split``; also
    both mAPs with classes ignored (``agnostic_*``, pycocotools' ``useCats=0``): the gap
    between the two says how much is lost to wrong classes rather than to missed or
    misplaced boxes."""
    from pycocotools.cocoeval import COCOeval

    dataset = DetectionDataset(split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    model.eval()
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for start in range(0, count, batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, count))]
        images = [b[0].to(device) for b in batch]
        for (_, target), out in zip(batch, model(images), strict=True):
            image_id = int(target["image_id"])
            image_ids.append(image_id)
            for box, score, label in zip(
                out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
            ):
                if not 1 <= label <= len(split.category_ids):
                    continue
                x0, y0, x1, y1 = box
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": split.category_ids[label - 1],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                    }
                )
    summary: dict[str, Any] = {"images": len(image_ids), "detections": len(results)}
    if not results:
        summary.update(
            mAP=0.0,
            mAP50=0.0,
            per_class_AP={c: 0.0 for c in split.classes},
            agnostic_mAP=0.0,
            agnostic_mAP50=0.0,
        )
        return summary
    evals = []
    with contextlib.redirect_stdout(io.StringIO()):
        detections = split.coco.loadRes(results)
        for use_cats in (1, 0):
            coco_eval = COCOeval(split.coco, detections, "bbox")
            coco_eval.params.imgIds = image_ids
            coco_eval.params.useCats = use_cats
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            evals.append(coco_eval)
    coco_eval, agnostic = evals
    precision = coco_eval.eval["precision"]  # [IoU, recall, class, area, maxDets]
    per_class = {}
    for k, name in enumerate(split.classes):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else 0.0
    summary.update(
        mAP=max(float(coco_eval.stats[0]), 0.0),
        mAP50=max(float(coco_eval.stats[1]), 0.0),
        per_class_AP=per_class,
        agnostic_mAP=max(float(agnostic.stats[0]), 0.0),
        agnostic_mAP50=max(float(agnostic.stats[1]), 0.0),
    )
    return summary


def load_detector_init(model: nn.Module, source: str) -> str:
    """``--init-weights`` for a detector: a detection checkpoint's weights go into the whole
    detector (same kind, backbone and classes); a classifier's (a training checkpoint or a
    weights file, e.g. the backbone trained on CIFAR-10) into the backbone, its head left
    out. Returns what was initialised: "detector" or "backbone"."""
    from ..weights import load_into

    state, checkpoint = read_init_weights(source)
    if checkpoint is not None and checkpoint.get("task") == "detection":
        load_into(model, state, source=source)
        return "detector"
    body = getattr(getattr(model, "backbone", None), "body", None)
    if not hasattr(body, "load_backbone_state_dict"):
        raise GhostnetError(
            f"--init-weights {source}: this backbone ({type(body).__name__}) cannot take a "
            "classifier's weights; build it from a registry or torchvision: model"
        )
    try:
        unused = body.load_backbone_state_dict(state)
    except GhostnetError as exc:
        raise GhostnetError(f"--init-weights {source}: {exc}") from exc
    log.info(
        "backbone initialised from %s (%d tensors; not used: %s)",
        source,
        len(body.body.state_dict()),
        ", ".join(unused) or "none",
    )
    return "backbone"


def _save(out: Path, names: tuple[str, ...], state: dict[str, Any]) -> None:
    for name in names:
        atomic_save(state, out / name)


def fit_detection(
    config: TrainConfig,
    resume: str | os.PathLike | None = None,
    *,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train a detector on the COCO-layout folder ``config.data``; writes last.pt/best.pt,
    metrics.jsonl and summary.json to ``config.out``; returns the summary. ``max_steps``
    stops after that many optimizer steps in total (last.pt saved; resume continues); a
    stop that falls on an epoch's last step scores and logs that epoch first, and on the
    last epoch's last step the run finishes as without it."""
    out = Path(config.out)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    checkpoint = read_checkpoint(resume) if resume else None
    if checkpoint is not None and checkpoint.get("task") != "detection":
        raise GhostnetError(f"{resume} is not a detection checkpoint; resume it with its own task")
    if checkpoint is None and (out / "last.pt").exists():
        raise GhostnetError(f"{out} already holds a run (last.pt); resume it or pick a new --out")
    replan = False
    if checkpoint is not None:  # as classification: refuse another run, re-plan new epochs/LR
        config, replan = resolve_resume(config, checkpoint, Path(resume))
    classes = checkpoint["classes"] if checkpoint else None
    train_split = open_split(config.data, "train", classes)
    val_split = open_split(config.data, "val", train_split.classes)
    spec = (
        DetectorSpec.from_dict(checkpoint["detector"])
        if checkpoint
        else _spec(config, len(train_split.classes))
    )
    model = spec.build()
    if checkpoint is None and config.init_weights:
        load_detector_init(model, config.init_weights)
    model.to(device)
    train_set = DetectionDataset(train_split, flip=True, seed=config.seed)
    if config.train_subset:
        train_split.image_ids = train_split.image_ids[: config.train_subset]
    sampler = ResumableSampler(train_set, 1, 0, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=config.workers,
        generator=generator,
        drop_last=False,
    )
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    # the folder only once data, model and optimizer are known to work: a bad --data or
    # --model leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    epoch, step_in_epoch, global_step, history = 0, 0, 0, []
    best = {"mAP": -1.0, "epoch": -1}
    elapsed = 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        epoch, step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        global_step, history = checkpoint["global_step"], list(checkpoint["history"])
        if replan:
            scheduler = replan_scheduler(optimizer, config, steps_per_epoch, global_step)
        else:
            scheduler.load_state_dict(checkpoint["scheduler"])
        best, elapsed = dict(checkpoint["best"]), float(checkpoint.get("train_s", 0.0))
        set_rng_state(checkpoint["rng"])
    # the resumed epoch's loss sums so far, so its metrics row is the uninterrupted one's
    carried = dict(checkpoint.get("epoch_loss_sums") or {}) if checkpoint and step_in_epoch else {}
    carried_steps = step_in_epoch if carried else 0

    def state() -> dict[str, Any]:
        return {
            "format": FORMAT,
            "task": "detection",
            "detector": spec.to_dict(),
            "classes": train_split.classes,
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "epoch_loss_sums": sums,
            "global_step": global_step,
            "history": history,
            "best": best,
            "rng": rng_state(),
            "train_s": elapsed + time.perf_counter() - started,
        }

    def stop_at(step: int) -> bool:
        return max_steps is not None and step >= max_steps

    started = time.perf_counter()
    first_step = global_step
    last_eval: dict[str, Any] | None = None
    while epoch < config.epochs:
        model.train()
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        sampler.skip = step_in_epoch * config.batch_size
        generator.manual_seed(config.seed + epoch)
        sums, counted = carried, carried_steps
        carried, carried_steps = {}, 0
        for images, targets in loader:
            images = [i.to(device) for i in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with autocast_for(device, config.amp):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise GhostnetError(
                    f"non-finite loss at epoch {epoch} step {step_in_epoch} "
                    f"({ {k: float(v) for k, v in losses.items()} }); lower --lr "
                    "(last.pt keeps the last finite state)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            step_in_epoch += 1
            counted += 1
            global_step += 1
            if not config.quiet and step_in_epoch % config.log_every == 0:
                seconds = time.perf_counter() - started
                log.info(
                    "epoch %d/%d step %d/%d  loss %.4f (%s)  %.1f img/s  lr %.3g",
                    epoch + 1,
                    config.epochs,
                    step_in_epoch,
                    steps_per_epoch,
                    sum(sums.values()) / counted,
                    " ".join(f"{k} {v / counted:.3f}" for k, v in sums.items()),
                    (global_step - first_step) * config.batch_size / max(seconds, 1e-9),
                    optimizer.param_groups[0]["lr"],
                )
            if config.checkpoint_every and global_step % config.checkpoint_every == 0:
                _save(out, ("last.pt",), state())
            if stop_at(global_step) and step_in_epoch < steps_per_epoch:
                # mid-epoch; a stop at an epoch's last step first scores and logs the epoch
                _save(out, ("last.pt",), state())
                return {"task": "detection", "status": "stopped", "global_step": global_step}
        last_eval = evaluate_detector(model, val_split, device, limit=config.eval_subset)
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v / max(counted, 1) for k, v in sums.items()},
            "mAP": last_eval["mAP"],
            "mAP50": last_eval["mAP50"],
        }
        history.append(row)
        if not config.quiet:
            print(json.dumps(row), flush=True)
        epoch, step_in_epoch = epoch + 1, 0
        names: tuple[str, ...] = ("last.pt",)
        if last_eval["mAP"] > best["mAP"]:
            best = {"mAP": last_eval["mAP"], "mAP50": last_eval["mAP50"], "epoch": epoch}
            names = ("last.pt", "best.pt")
        _save(out, names, state())
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if stop_at(global_step) and epoch < config.epochs:
            return {"task": "detection", "status": "stopped", "global_step": global_step}
    skipped = train_split.skipped + val_split.skipped + train_set.bad
    summary = {
        "task": "detection",
        "detector": spec.to_dict(),
        "status": "finished",
        "epochs": config.epochs,
        "classes": train_split.classes,
        "params": sum(p.numel() for p in model.parameters()),
        "train_s": round(elapsed + time.perf_counter() - started, 1),
        "init_weights": config.init_weights,
        "best": best,
        "final": last_eval,
        "skipped": skipped,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def detector_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector from a detection checkpoint and load its weights (eval mode)."""
    checkpoint = read_checkpoint(path)
    if checkpoint.get("task") != "detection":
        raise GhostnetError(f"{path} is not a detection checkpoint")
    model = DetectorSpec.from_dict(checkpoint["detector"]).build()
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


def is_detection_checkpoint(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a readable ghostnet checkpoint of a detector (never raises)."""
    if not path or not Path(path).is_file():
        return False
    try:
        return read_checkpoint(path).get("task") == "detection"
    except Exception:
        return False

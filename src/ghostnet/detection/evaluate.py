"""COCO evaluation of detectors (box mAP, mAP@0.5, per-class and class-agnostic AP),
``--init-weights`` for a detector, and rebuilding a detector from its checkpoint. Training
goes through the one loop (``ghostnet.train``, ``--task detection``)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import evaluation_weights, read_checkpoint, read_init_weights
from ..errors import GhostnetError
from .data import CocoSplit, DetectionDataset
from .models import DetectorSpec

log = logging.getLogger("ghostnet")


@torch.no_grad()
def detect(
    model: nn.Module,
    split: CocoSplit,
    device: torch.device,
    indices: Sequence[int],
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], list[int]]:
    """COCO-style results (``image_id``, ``category_id``, xywh ``bbox``, ``score``) of
    ``model`` on the images ``indices`` of ``split``, and their image ids."""
    dataset = DetectionDataset(split)
    model.eval()
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for start in range(0, len(indices), batch_size):
        batch = [dataset[i] for i in indices[start : start + batch_size]]
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
    return results, image_ids


def evaluate_detector(
    model: nn.Module,
    split: CocoSplit,
    device: torch.device,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """COCO box mAP (0.5:0.95), mAP@0.5 and per-class AP of ``model`` on ``split`` (its
    first ``limit`` images); see ``coco_scores``."""
    count = len(split.image_ids) if limit is None else min(limit, len(split.image_ids))
    results, image_ids = detect(model, split, device, range(count), batch_size)
    return coco_scores(split, results, image_ids)


def coco_scores(
    split: CocoSplit, results: list[dict[str, Any]], image_ids: list[int]
) -> dict[str, Any]:
    """mAP, mAP@0.5, per-class AP, and both mAPs with classes ignored (``agnostic_*``,
    pycocotools' ``useCats=0``): the gap between the two says how much is lost to wrong
    classes rather than to missed or misplaced boxes."""
    from pycocotools.cocoeval import COCOeval

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


def detector_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector from a detection checkpoint and load its weights (eval mode)."""
    checkpoint = read_checkpoint(path)
    if checkpoint.get("task") != "detection":
        raise GhostnetError(f"{path} is not a detection checkpoint")
    model = DetectorSpec.from_dict(checkpoint["detector"]).build()
    model.load_state_dict(evaluation_weights(checkpoint))
    return model.eval(), checkpoint


def is_detection_checkpoint(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a readable ghostnet checkpoint of a detector (never raises)."""
    if not path or not Path(path).is_file():
        return False
    try:
        return read_checkpoint(path).get("task") == "detection"
    except Exception:
        return False

"""Object detection: torchvision detectors (Faster R-CNN, RetinaNet, FCOS, SSDlite) over
any feature model, COCO-layout data with seeded flips, COCO box mAP for best.pt."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...config import TrainConfig
from ...detection.data import DetectionDataset, collate, open_split
from ...detection.evaluate import coco_scores, detect, load_detector_init
from ...detection.models import DetectorSpec, detector_params
from ...detection.tools import eval_lines, evaluate_checkpoint, predict_images, predict_lines
from ...errors import GhostnetError
from ..distributed import Collectives
from ..task import ModelInfo, StepOutput, Task, TaskData, register_task

# the loss terms torchvision's detectors return in training mode, per kind
LOSS_TERMS = {
    "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
    "retinanet": ("classification", "bbox_regression"),
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
    "ssdlite": ("bbox_regression", "classification"),
}


def detector_spec(config: TrainConfig, num_classes: int) -> DetectorSpec:
    """The detector a config asks for (``--detector`` over ``--model`` as backbone)."""
    if config.detector is None:
        raise GhostnetError("--task detection needs --detector fasterrcnn|retinanet|fcos|ssdlite")
    return DetectorSpec(
        kind=config.detector,
        backbone=config.model,
        num_classes=num_classes,
        backbone_kwargs=dict(config.model_kwargs),
        ghostify=config.ghostify,
        fpn_channels=config.fpn_channels,
        head_convs=config.head_convs,
        image_size=config.input_size or 256,
    )


@register_task
class DetectionTask(Task):
    """Detectors on COCO-layout folders (train2017/, val2017/, annotations/)."""

    name = "detection"
    best_metric = "mAP"
    options = frozenset({"detector", "fpn_channels", "head_convs", "input_size"})

    def open_data(self, rank: int, world: int, checkpoint: dict[str, Any] | None) -> TaskData:
        config = self.config
        classes = checkpoint["classes"] if checkpoint else None
        train_split = open_split(config.data, "train", classes)
        self.val_split = open_split(config.data, "val", train_split.classes)
        if config.train_subset:
            train_split.image_ids = train_split.image_ids[: config.train_subset]
        self.train_set = DetectionDataset(train_split, flip=True, seed=config.seed)
        count = len(self.val_split.image_ids)
        count = min(config.eval_subset, count) if config.eval_subset else count
        self.eval_indices = list(range(rank, count, world))  # this rank's share, no padding
        self.classes = train_split.classes
        return TaskData(
            self.train_set,
            DetectionDataset(self.val_split),
            collate,
            train_split.classes,
            [*train_split.skipped, *self.val_split.skipped],
        )

    def build_model(
        self, data: TaskData, checkpoint: dict[str, Any] | None
    ) -> tuple[nn.Module, ModelInfo]:
        torch.manual_seed(self.config.seed)
        if checkpoint is not None:
            self.spec = DetectorSpec.from_dict(checkpoint["detector"])
        else:
            self.spec = detector_spec(self.config, len(data.classes))
        model = self.spec.build()
        if checkpoint is None and self.config.init_weights:
            load_detector_init(model, self.config.init_weights)
        self.train_stats = LOSS_TERMS[self.spec.kind]
        label = f"{self.spec.kind} on {self.spec.backbone}"
        return model, ModelInfo(label, detector_params(model))

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepOutput:
        images, targets = batch
        images = [i.to(device, non_blocking=True) for i in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        terms = torch.stack([losses[k].float() for k in self.train_stats])
        return StepOutput(terms.sum(), len(images), terms.detach() * len(images))

    def evaluate(
        self, model: nn.Module, device: torch.device, collectives: Collectives, progress: bool
    ) -> dict[str, Any]:
        """Each rank detects on its share; every rank scores all results (same numbers)."""
        results, image_ids = detect(model, self.val_split, device, self.eval_indices)
        gathered = collectives.gather_objects((results, image_ids))
        all_results = [r for part in gathered for r in part[0]]  # type: ignore[index]
        all_ids = sorted(i for part in gathered for i in part[1])  # type: ignore[index]
        return coco_scores(self.val_split, all_results, all_ids)

    def eval_row(self, result: dict[str, Any]) -> dict[str, float]:
        return {"eval_mAP": result["mAP"], "eval_mAP50": result["mAP50"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"detector": self.spec.to_dict(), "classes": self.classes}

    def summary(self, last_eval: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        return {
            "detector": self.spec.to_dict(),
            "mAP": last_eval.get("mAP"),
            "mAP50": last_eval.get("mAP50"),
            "final": last_eval,
            "best": best if best.get("epoch", -1) > 0 else None,
            "init_weights": self.config.init_weights,
            "unreadable_images": list(self.train_set.bad),
        }

    def describe(self) -> list[str]:
        return [f"detector spec: {self.spec.to_dict()}"]

    # ------------------------------------------------------------ outside training

    @classmethod
    def model_from_checkpoint(cls, checkpoint: dict[str, Any], source: str) -> nn.Module:
        from ...checkpoint import evaluation_weights

        model = DetectorSpec.from_dict(checkpoint["detector"]).build()
        model.load_state_dict(evaluation_weights(checkpoint))
        return model.eval()

    @classmethod
    def evaluate_checkpoint(
        cls, path: str | os.PathLike, data: str, device: torch.device, batch_size: int
    ) -> dict[str, Any]:
        # eval's --batch-size default (256) suits 32x32 classification, not detection images
        return evaluate_checkpoint(path, data, device, min(batch_size, 16))

    @classmethod
    def eval_lines(cls, result: dict[str, Any]) -> list[str]:
        return eval_lines(result)

    @classmethod
    def predict(
        cls, path: str | os.PathLike, images: Sequence[str], out: Path | None, threshold: float
    ) -> list[dict[str, Any]]:
        return predict_images(path, images, out or "predictions", threshold)

    @classmethod
    def predict_lines(cls, results: list[dict[str, Any]]) -> list[str]:
        return predict_lines(results)

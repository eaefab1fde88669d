"""Semantic segmentation: torchvision's LR-ASPP / DeepLabV3 / FCN heads over any feature
model (or torchvision's own reference segmenters), Pascal VOC-layout data with seeded joint
crops and flips, cross-entropy ignoring 255 (+ the auxiliary head's), mIoU for best.pt."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ...checkpoint import evaluation_weights, read_checkpoint, read_init_weights
from ...config import TrainConfig
from ...counting import profile
from ...errors import GhostnetError
from ...segmentation.data import (
    IGNORE_INDEX,
    SegmentationDataset,
    collate_skipping,
    eval_transform,
    open_split,
    train_transform,
)
from ...segmentation.metrics import ConfusionMatrix
from ...segmentation.models import LogitsOnly, SegmenterSpec, segmenter_params
from ...segmentation.tools import evaluate_folder, export_segmenter_onnx, predict_images
from ...weights import load_into
from ..distributed import Collectives
from ..optim import autocast_for
from ..task import ModelInfo, StepOutput, Task, TaskData, register_task

log = logging.getLogger("ghostnet")
DEFAULT_SIZE = 256  # crop side when --input-size is not given


def segmenter_spec(config: TrainConfig, num_classes: int) -> SegmenterSpec:
    """The segmenter a config asks for (``--segmenter`` over ``--model`` as backbone)."""
    if config.segmenter is None:
        raise GhostnetError("--task segmentation needs --segmenter lraspp|deeplabv3|fcn")
    return SegmenterSpec(
        kind=config.segmenter,
        backbone=config.model,
        num_classes=num_classes,
        backbone_kwargs=dict(config.model_kwargs),
        ghostify=config.ghostify,
        output_stride=config.output_stride,
        aux=config.aux_loss > 0,
    )


def load_segmenter_init(model: nn.Module, source: str) -> str:
    """``--init-weights``: a segmentation checkpoint's weights go into the whole segmenter;
    a classifier's (checkpoint or weights file) into the backbone, its head left out.
    Returns what was initialised: "segmenter" or "backbone"."""
    state, checkpoint = read_init_weights(source)
    if checkpoint is not None and checkpoint.get("task") == "segmentation":
        load_into(model, state, source=source)
        return "segmenter"
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "load_backbone_state_dict"):
        raise GhostnetError(
            f"--init-weights {source}: this backbone ({type(backbone).__name__}) cannot take "
            "a classifier's weights; build it from a registry or torchvision: model"
        )
    try:
        unused = backbone.load_backbone_state_dict(state)
    except GhostnetError as exc:
        raise GhostnetError(f"--init-weights {source}: {exc}") from exc
    log.info("backbone initialised from %s (not used: %s)", source, ", ".join(unused) or "none")
    return "backbone"


@register_task
class SegmentationTask(Task):
    """Segmenters on Pascal VOC-layout folders (JPEGImages/, SegmentationClass/,
    ImageSets/Segmentation/{train,val}.txt)."""

    name = "segmentation"
    best_metric = "miou"
    options = frozenset(
        {"segmenter", "output_stride", "aux_loss", "input_size", "label_smoothing", "channels_last"}
    )
    train_stats = ("ce", "pixel_acc")

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        super().check(config)
        if config.segmenter is None:
            raise GhostnetError("--task segmentation needs --segmenter lraspp|deeplabv3|fcn")
        if config.output_stride not in (None, 8, 16):
            raise GhostnetError(f"--output-stride must be 8 or 16, got {config.output_stride}")
        if config.aux_loss > 0 and config.segmenter == "lraspp":
            raise GhostnetError("--aux-loss needs --segmenter deeplabv3 or fcn (lraspp has no aux)")
        if config.segmenter.startswith("torchvision:") and (
            config.output_stride is not None or config.ghostify or config.model_kwargs
        ):
            raise GhostnetError(
                f"--segmenter {config.segmenter} is torchvision's fixed model: drop "
                "--output-stride / ghostify / model options"
            )

    def open_data(self, rank: int, world: int, checkpoint: dict[str, Any] | None) -> TaskData:
        config = self.config
        classes = checkpoint["classes"] if checkpoint else None
        train_split = open_split(config.data, "train", classes)
        self.val_split = open_split(config.data, "val", train_split.classes)
        if config.train_subset:
            train_split.images = train_split.images[: config.train_subset]
            train_split.masks = train_split.masks[: config.train_subset]
        self.size = config.input_size or DEFAULT_SIZE
        self.classes = train_split.classes
        self.train_set = SegmentationDataset(
            train_split, train_transform(self.size), seed=config.seed
        )
        eval_set = SegmentationDataset(self.val_split, eval_transform(self.size))
        count = len(self.val_split)
        count = min(config.eval_subset, count) if config.eval_subset else count
        # this rank's share, no padding: every image counted once in the summed matrix
        self.eval_loader = DataLoader(
            Subset(eval_set, list(range(rank, count, world))),
            batch_size=config.batch_size,
            num_workers=config.workers,
            collate_fn=collate_skipping,
        )
        return TaskData(
            self.train_set,
            eval_set,
            collate_skipping,
            train_split.classes,
            [*train_split.skipped, *self.val_split.skipped],
        )

    def build_model(
        self, data: TaskData, checkpoint: dict[str, Any] | None
    ) -> tuple[nn.Module, ModelInfo]:
        torch.manual_seed(self.config.seed)
        if checkpoint is not None:
            self.spec = SegmenterSpec.from_dict(checkpoint["segmenter"])
        else:
            self.spec = segmenter_spec(self.config, len(data.classes))
        model = self.spec.build()
        if checkpoint is None and self.config.init_weights:
            load_segmenter_init(model, self.config.init_weights)
        macs = profile(LogitsOnly(model), (3, self.size, self.size)).macs
        backbone = "" if self.spec.kind.startswith("torchvision:") else f" on {self.spec.backbone}"
        return model, ModelInfo(f"{self.spec.kind}{backbone}", segmenter_params(model), macs)

    def _images(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepOutput | None:
        if batch.images.numel() == 0:
            return None
        images = self._images(batch.images, device)
        masks = batch.masks.to(device, non_blocking=True)
        out = model(images)
        # summed over the labelled pixels / all pixels of the batch (ignored ones add 0): a
        # constant divisor, so processes splitting a batch average to the same loss and
        # gradient as one process, and an all-255 batch gives 0, not NaN
        pixels = masks.numel()
        logits = out["out"].float()
        smoothing = self.config.label_smoothing

        def ce(x: torch.Tensor) -> torch.Tensor:
            return (
                F.cross_entropy(
                    x,
                    masks,
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                    label_smoothing=smoothing,
                )
                / pixels
            )

        main = ce(logits)
        loss = main
        if "aux" in out and self.config.aux_loss > 0:
            loss = loss + self.config.aux_loss * ce(out["aux"].float())
        n = len(images)
        with torch.no_grad():  # per-image pixel accuracy, summed over the batch's images
            labelled = masks != IGNORE_INDEX
            correct = ((logits.argmax(1) == masks) & labelled).flatten(1).sum(1)
            accuracy = (correct / labelled.flatten(1).sum(1).clamp(min=1)).sum()
        return StepOutput(loss, n, torch.stack([main.detach() * n, accuracy.float()]))

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, device: torch.device, collectives: Collectives, progress: bool
    ) -> dict[str, Any]:
        """Each rank fills a confusion matrix over its share; one all-reduce sums them."""
        model.eval()
        matrix = ConfusionMatrix(len(self.classes), device)
        for batch in self.eval_loader:
            if batch.images.numel() == 0:
                continue
            with autocast_for(device, self.config.amp):
                logits = model(self._images(batch.images, device))["out"]
            matrix.update(logits.float(), batch.masks.to(device))
        matrix.matrix = collectives.sum(matrix.matrix)
        return matrix.compute(self.classes)

    def train_row(self, sums: dict[str, float]) -> dict[str, float]:
        seen = max(sums["seen"], 1.0)
        return {"train_ce": sums["ce"] / seen, "train_pixel_acc": sums["pixel_acc"] / seen}

    def eval_row(self, result: dict[str, Any]) -> dict[str, float]:
        return {"eval_miou": result["miou"], "eval_pixel_acc": result["pixel_acc"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"segmenter": self.spec.to_dict(), "classes": self.classes, "image_size": self.size}

    def summary(self, last_eval: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        return {
            "segmenter": self.spec.to_dict(),
            "miou": last_eval.get("miou"),
            "pixel_acc": last_eval.get("pixel_acc"),
            "per_class_iou": last_eval.get("per_class_iou"),
            "final": last_eval,
            "best": best,
            "init_weights": self.config.init_weights,
            "image_size": self.size,
        }

    def describe(self) -> list[str]:
        return [f"segmenter spec: {self.spec.to_dict()}, crop {self.size}x{self.size}"]

    # ------------------------------------------------------------ outside training

    @classmethod
    def model_from_checkpoint(cls, checkpoint: dict[str, Any], source: str) -> nn.Module:
        model = SegmenterSpec.from_dict(checkpoint["segmenter"]).build()
        load_into(model, evaluation_weights(checkpoint), source=source)
        return model.eval()

    @classmethod
    def evaluate_checkpoint(
        cls, path: str | os.PathLike, data: str, device: torch.device, batch_size: int
    ) -> dict[str, Any]:
        checkpoint = read_checkpoint(path)
        model = cls.model_from_checkpoint(checkpoint, str(path)).to(device)
        # eval's --batch-size default (256) suits 32x32 classification, not segmentation
        result = evaluate_folder(
            model,
            data,
            "val",
            size=int(checkpoint["image_size"]),
            classes=checkpoint["classes"],
            device=device,
            batch_size=min(batch_size, 16),
        )
        spec = checkpoint["segmenter"]
        return {
            **result,
            "checkpoint": str(path),
            "kind": spec["kind"],
            "backbone": spec["backbone"],
        }

    @classmethod
    def eval_lines(cls, result: dict[str, Any]) -> list[str]:
        lines = [
            f"{result['kind']} on {result['backbone']}: {result['images']} images "
            f"({result['skipped']} skipped)",
            f"mIoU {result['miou']:.4f}   pixel accuracy {result['pixel_acc']:.4f}",
        ]
        for name, iou in result["per_class_iou"].items():
            lines.append(f"{name:<20} IoU {'-' if iou is None else f'{iou:.4f}'}")
        return lines

    @classmethod
    def predict(
        cls, path: str | os.PathLike, images: Sequence[str], out: Path | None, threshold: float
    ) -> list[dict[str, Any]]:
        """One overlay PNG per image under ``out`` (default ``predictions``); ``threshold``
        does not apply (every pixel gets its most likely class)."""
        checkpoint = read_checkpoint(path)
        model = cls.model_from_checkpoint(checkpoint, str(path))
        results = predict_images(
            model,
            images,
            out or "predictions",
            checkpoint["classes"],
            size=int(checkpoint["image_size"]),
        )
        return [{"image": r.image, "drawn": r.overlay, "classes": r.classes_found} for r in results]

    @classmethod
    def predict_lines(cls, results: list[dict[str, Any]]) -> list[str]:
        lines = []
        for r in results:
            found = ", ".join(f"{k} {v:.0%}" for k, v in r["classes"].items())
            lines.append(f"{r['image']}: {found} -> {r['drawn']}")
        return lines

    @classmethod
    def export_checkpoint(
        cls,
        path: str | os.PathLike,
        out: str | os.PathLike,
        *,
        input_size: int | None,
        opset: int | None,
        tolerance: float,
    ) -> list[str]:
        """The segmenter's logits as ONNX (``export_segmenter_onnx``: metadata ``task``,
        ``image_size``, ``classes``), at the trained size unless ``input_size`` is given."""
        checkpoint = read_checkpoint(path)
        model = cls.model_from_checkpoint(checkpoint, str(path))
        size = input_size or int(checkpoint["image_size"])
        file, diff = export_segmenter_onnx(
            model,
            out,
            size,
            classes=checkpoint["classes"],
            opset=opset or 17,
            tolerance=tolerance,
        )
        megabytes = file.stat().st_size / 1e6
        return [
            f"wrote {file} ({megabytes:.1f} MB): segmenter logits, input 1x3x{size}x{size}, "
            f"{len(checkpoint['classes'])} classes",
            f"ONNX Runtime vs PyTorch max abs diff {diff:.2e} (limit {tolerance:g})",
        ]

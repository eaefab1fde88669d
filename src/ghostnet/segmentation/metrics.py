"""Segmentation metrics from one confusion matrix, accumulated on the device.

The matrix is a plain ``int64`` tensor (``[true, predicted]``), so distributed evaluation
is one ``all_reduce(SUM)`` of it; mIoU, per-class IoU and pixel accuracy are computed from
the reduced matrix (averaging per-rank mIoUs would be wrong: IoU is not additive).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import IGNORE_INDEX


class ConfusionMatrix:
    """``update(logits_or_labels, target)`` adds a batch; pixels labelled ``ignore_index``
    are left out. ``matrix`` may be all-reduced across ranks before :meth:`compute`."""

    def __init__(
        self,
        num_classes: int,
        device: torch.device | str = "cpu",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction``: (N, C, H, W) logits or (N, H, W) labels; ``target``: (N, H, W)."""
        if prediction.ndim == target.ndim + 1:
            prediction = prediction.argmax(1)
        keep = target != self.ignore_index
        n = self.num_classes
        index = target[keep].long() * n + prediction[keep].long()
        self.matrix += torch.bincount(index, minlength=n * n).view(n, n)

    def compute(self, classes: Sequence[str] | None = None) -> dict[str, object]:
        return metrics_from_matrix(self.matrix, classes)


def metrics_from_matrix(
    matrix: torch.Tensor, classes: Sequence[str] | None = None
) -> dict[str, object]:
    """mIoU (mean over classes that occur in the truth or the prediction), per-class IoU
    (None for a class absent from both), pixel accuracy and the pixel count."""
    m = matrix.double().cpu()
    true_positive = m.diag()
    union = m.sum(0) + m.sum(1) - true_positive
    total = m.sum()
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
    names = list(classes) if classes is not None else [str(i) for i in range(m.shape[0])]
    per_class: dict[str, float | None] = {
        name: (float(iou[i]) if bool(present[i]) else None) for i, name in enumerate(names)
    }
    return {
        "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else 0.0,
        "per_class_iou": per_class,
        "pixels": int(total),
    }

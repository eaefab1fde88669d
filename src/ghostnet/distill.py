"""Knowledge distillation: the teacher, and the loss that mixes its soft targets in.

The loss is Hinton et al.'s: ``(1 - alpha) * CE(student, labels) + alpha * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``; the ``T^2`` keeps the soft term's
gradients on the scale of the hard term's whatever the temperature. The teacher is a
frozen model in eval mode: it is never trained, never saved with the student, and rebuilt
from its name or file when a run resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GhostnetError

log = logging.getLogger("ghostnet")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


class TrainLoss(nn.Module):
    """Cross-entropy on hard or soft (mixup/cutmix) targets, plus the distillation term."""

    def __init__(
        self, label_smoothing: float = 0.0, kd_alpha: float = 0.0, kd_temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hard = self.ce(logits, targets)
        if teacher_logits is None or self.kd_alpha == 0:
            return hard
        soft = kd_loss(logits, teacher_logits, self.kd_temperature)
        return (1 - self.kd_alpha) * hard + self.kd_alpha * soft


def load_teacher(
    source: str,
    classes: list[str],
    input_size: tuple[int, int, int],
    device: torch.device,
) -> nn.Module:
    """The frozen teacher: a training checkpoint (``best.pt``) or a model name with weights.

    Its output must have one logit per class of the data (and, for a checkpoint that
    records them, the same class names in the same order), else one clear line says so.
    """
    from .checkpoint import FORMAT, model_from_checkpoint
    from .models import create_model
    from .weights import safe_torch_load

    path = Path(source).expanduser()
    if path.exists() or source.endswith((".pt", ".pth", ".tar", ".safetensors")):
        if not path.is_file():
            raise GhostnetError(f"--teacher: file not found: {path}")
        data = safe_torch_load(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise GhostnetError(
                f"--teacher {path}: not a ghostnet training checkpoint; give a run's best.pt, "
                "or a model name with published weights (e.g. timm:resnet50)"
            )
        teacher, checkpoint = model_from_checkpoint(path)
        if checkpoint["classes"] != classes:
            raise GhostnetError(
                f"--teacher {path} was trained on {len(checkpoint['classes'])} classes "
                f"({', '.join(checkpoint['classes'][:4])}...), the data has {len(classes)} "
                f"({', '.join(classes[:4])}...); use a teacher trained on these classes"
            )
    else:
        teacher = create_model(source, pretrained=True)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        probe = teacher(torch.zeros(1, *input_size, device=device))
    if probe.ndim != 2 or probe.shape[1] != len(classes):
        raise GhostnetError(
            f"--teacher {source} outputs {tuple(probe.shape[1:])} logits per image, the data "
            f"has {len(classes)} classes; use a teacher trained on these classes"
        )
    return teacher

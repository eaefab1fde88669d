"""Knowledge distillation: the teacher, and the loss that mixes its soft targets in.

The loss is Hinton et al.'s: ``(1 - alpha) * CE(student, labels) + alpha * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``; the ``T^2`` keeps the soft term's
gradients on the scale of the hard term's whatever the temperature. The teacher is a
frozen model in eval mode: it is never trained, never saved with the student, and rebuilt
from its name or file when a run resumes.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any

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
        features: FeatureMatch | None = None,
    ) -> torch.Tensor:
        hard = self.ce(logits, targets)
        if teacher_logits is None or self.kd_alpha == 0:
            loss = hard
        else:
            soft = kd_loss(logits, teacher_logits, self.kd_temperature)
            loss = (1 - self.kd_alpha) * hard + self.kd_alpha * soft
        if features is not None:
            loss = loss + features.loss()
        return loss


class FeatureMatch:
    """Forward hooks on the same-named modules of student and teacher, and their loss.

    ``loss()`` is ``weight x`` the mean over the matched modules of
    ``||student - teacher||^2 / ||teacher||^2`` (relative, so a 64-channel map and a
    16-channel one weigh the same); it reads and forgets the maps of the last forward.
    The student's maps are kept only from training-mode forwards (an evaluation pass leaves
    nothing referenced); ``remove()`` takes the hooks off both models.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        patterns: str,
        weight: float,
        input_size: tuple[int, int, int],
        device: torch.device,
    ) -> None:
        self.names = matched_modules(student, teacher, patterns)
        self.weight = weight
        self.maps: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self._probing = False
        for side, model in (("student", student), ("teacher", teacher)):
            modules = dict(model.named_modules())
            for name in self.names:
                hook = self._keeper(self.maps[side], name, always=side == "teacher")
                self.handles.append(modules[name].register_forward_hook(hook))
        self._check_shapes(student, teacher, input_size, device)

    def _keeper(self, store: dict[str, torch.Tensor], name: str, always: bool) -> Any:
        # the teacher always runs in eval mode, and only for training steps
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            if always or module.training or self._probing:
                store[name] = output

        return keep

    def remove(self) -> None:
        """Take the hooks off student and teacher and forget any kept maps."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.clear()

    def _check_shapes(
        self,
        student: nn.Module,
        teacher: nn.Module,
        input_size: tuple[int, int, int],
        device: torch.device,
    ) -> None:
        was_training = student.training
        student.eval()  # no BN statistics from the zero probe
        self._probing = True
        try:
            with torch.no_grad():
                student(torch.zeros(1, *input_size, device=device))
                teacher(torch.zeros(1, *input_size, device=device))
        finally:
            self._probing = False
            student.train(was_training)
        for name in self.names:
            s, t = self.maps["student"][name], self.maps["teacher"][name]
            if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor):
                raise GhostnetError(
                    f"--kd-features: module {name!r} does not return one tensor; match "
                    "modules that output a feature map"
                )
            if s.shape != t.shape:
                raise GhostnetError(
                    f"--kd-features: module {name!r} outputs {tuple(s.shape[1:])} in the "
                    f"student but {tuple(t.shape[1:])} in the teacher; match modules whose "
                    "outputs have the same shape"
                )
        self.clear()

    def clear(self) -> None:
        for store in self.maps.values():
            store.clear()

    def loss(self) -> torch.Tensor:
        terms = []
        for name in self.names:
            s = self.maps["student"][name].float()
            t = self.maps["teacher"][name].float()
            terms.append((s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-8))
        self.clear()
        return self.weight * torch.stack(terms).mean()


def matched_modules(student: nn.Module, teacher: nn.Module, patterns: str) -> list[str]:
    """Module names in both models matching any of the comma-separated shell patterns."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    in_teacher = {name for name, _ in teacher.named_modules() if name}
    names = [
        name
        for name, _ in student.named_modules()
        if name in in_teacher and any(fnmatch.fnmatchcase(name, p) for p in wanted)
    ]
    if not names:
        shared = [n for n, _ in student.named_modules() if n in in_teacher and "." not in n]
        raise GhostnetError(
            f"--kd-features {patterns!r} matches no module that both the student and the "
            f"teacher have; top-level names they share: {', '.join(shared[:8]) or 'none'}"
        )
    return names


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

"""Training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .safe_io import atomic_path


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and top-1 per epoch (train vs eval) and the learning rate, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]

    def series(key: str) -> list[float] | None:
        # each task logs its own columns (top-1 for classifiers, mIoU, mAP...): plot those
        values = [h.get(key) for h in history]
        ok = all(isinstance(v, (int, float)) for v in values)
        return [float(v) for v in values] if ok else None  # type: ignore[arg-type]

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    for key, label in (("train_loss", "train objective"), ("eval_loss", "eval cross-entropy")):
        if (values := series(key)) is not None:
            ax_loss.plot(epochs, values, marker="o", label=label)
    # the training objective is cross-entropy only without a teacher and mixing: KD adds
    # its T^2-scaled KL term, so the two curves need not share a scale
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    if series("eval_top1") is not None:
        metrics = [
            ("train_top1", "train top-1"),
            ("eval_top1", "eval top-1"),
            ("eval_top5", "eval top-5"),
        ]
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    else:
        names = sorted(
            k for k in history[0] if k.startswith(("train_", "eval_")) and "loss" not in k
        )
        metrics = [(k, k.replace("_", " ")) for k in names if k != "train_images_per_s"]
        ax_acc.set(xlabel="epoch", title="metrics")
    for key, label in metrics:
        if (values := series(key)) is not None:
            ax_acc.plot(epochs, values, marker="o", label=label)
    ax_lr.plot(epochs, [h["lr"] for h in history], marker="o", color="tab:purple")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="LR at the end of each epoch")
    ax_lr.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path

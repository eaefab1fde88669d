"""Training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .safe_io import atomic_path


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and the task's metrics per epoch (train vs eval) and the learning rate (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train objective")
    if "eval_loss" in history[0]:
        ax_loss.plot(epochs, [h["eval_loss"] for h in history], marker="o", label="eval loss")
    # the training objective is cross-entropy only without a teacher and mixing: KD adds
    # its T^2-scaled KL term, so the two curves need not share a scale
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    # every other metric column of the task (train_top1, eval_top1, eval_mAP, ...)
    skip = {"train_loss", "eval_loss", "train_images_per_s"}
    metrics = [k for k in history[0] if k.startswith(("train_top", "eval_")) and k not in skip]
    for key in metrics:
        ax_acc.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("_", " "))
    ax_acc.set(xlabel="epoch", ylabel="metric", title="metrics")
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

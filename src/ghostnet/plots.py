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
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train objective")
    ax_loss.plot(epochs, [h["eval_loss"] for h in history], marker="o", label="eval cross-entropy")
    # the training objective is cross-entropy only without a teacher and mixing: KD adds
    # its T^2-scaled KL term, so the two curves need not share a scale
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["train_top1"] for h in history], marker="o", label="train top-1")
    ax_acc.plot(epochs, [h["eval_top1"] for h in history], marker="o", label="eval top-1")
    ax_acc.plot(epochs, [h["eval_top5"] for h in history], marker=".", ls="--", label="eval top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
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

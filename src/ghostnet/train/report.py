"""What a run tells: progress lines, metrics.csv, TensorBoard scalars, summary.json and
curves.png. Rank 0 only; the loop decides when."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..safe_io import atomic_open, write_text

log = logging.getLogger("ghostnet")


class Board(Protocol):
    def add_scalar(self, tag: str, value: float, step: int) -> None: ...
    def close(self) -> None: ...


def tensorboard(out: Path) -> Board | None:
    """A TensorBoard writer under OUT/tensorboard when tensorboard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def progress_line(
    epoch: int,
    epochs: int,
    step: int,
    steps: int,
    sums: dict[str, float],
    train_row: dict[str, float],
    images_per_s: float,
    lr: float,
) -> str:
    """``epoch E/N step S/M  loss L  <task columns>  I img/s  lr X`` (off a terminal)."""
    seen = max(sums["seen"], 1.0)
    columns = "  ".join(f"{k.removeprefix('train_')} {v:.4g}" for k, v in train_row.items())
    return (
        f"epoch {epoch}/{epochs} step {step}/{steps}  loss {sums['loss'] / seen:.4f}  "
        f"{columns}  {images_per_s:.0f} img/s  lr {lr:.3g}"
    )


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    train = "  ".join(f"{k.removeprefix('train_')} {row[k]:.4g}" for k in row if _is(k, "train_"))
    evals = "  ".join(f"{k.removeprefix('eval_')} {row[k]:.4g}" for k in row if _is(k, "eval_"))
    return (
        f"epoch {row['epoch']}/{epochs}  train {train}  |  eval {evals}  |  "
        f"{row['train_images_per_s']:.0f} img/s"
    )


def _is(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and key != "train_images_per_s"


def write_metrics(out: Path, history: list[dict[str, Any]], survived: str = "") -> None:
    """Rewrite metrics.csv from the run's history (so a resumed run never duplicates rows)."""
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    with atomic_open(out / "metrics.csv", "w", survived=survived or None, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def log_scalars(board: Board | None, row: dict[str, Any]) -> None:
    if board is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                board.add_scalar(key, value, row["epoch"])


def write_summary(out: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """summary.json, and curves.png when matplotlib is there."""
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if history:
        try:
            from ..plots import plot_curves

            plot_curves(history, out / "curves.png", title=str(summary.get("model", "")))
        except ImportError:
            log.info("matplotlib not installed: no curves.png (pip install 'ghostnet[viz]')")


def median_rate(history: list[dict[str, Any]]) -> float | None:
    rates = [h["train_images_per_s"] for h in history]
    return float(np.median(rates)) if rates else None


def runtime_fields(device: torch.device, world: int, wall_s: float) -> dict[str, Any]:
    return {
        "wall_s": wall_s,
        "world_size": world,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }

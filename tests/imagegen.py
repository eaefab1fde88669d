"""Tiny synthetic image data sets for tests (written to a temp dir, never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


def make_image_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 12,
    size: int = 16,
    test_per_class: int = 4,
    seed: int = 0,
) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png; each class a noisy colour."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.array(COLOURS[c % len(COLOURS)], dtype=np.float64)
                pixels = base + rng.normal(0, 40, size=(size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"{i:04d}.png"
                )
    return root

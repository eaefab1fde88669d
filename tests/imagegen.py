"""Tiny synthetic image data sets for tests (written to a temp dir, never committed)."""

from __future__ import annotations

import json
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


def write_coco(root: Path, images: int = 6, seed: int = 0, size: int = 64) -> Path:
    """A tiny COCO 2017 layout set: coloured squares (class = colour) on noise."""
    rng = np.random.default_rng(seed)
    colours = [(230, 30, 30), (30, 200, 30)]
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        imgs, anns = [], []
        for i in range(images):
            pixels = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
            for _ in range(int(rng.integers(1, 3))):
                c = int(rng.integers(2))
                side = int(rng.integers(12, 28))
                x, y = (int(v) for v in rng.integers(0, size - side, size=2))
                pixels[y : y + side, x : x + side] = colours[c]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": c + 1,
                        "bbox": [x, y, side, side],
                        "area": side * side,
                        "iscrowd": 0,
                    }
                )
            Image.fromarray(pixels).save(root / f"{split}2017" / f"{i}.png")
            imgs.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
        coco = {
            "images": imgs,
            "annotations": anns,
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}],
        }
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    return root


def write_voc(
    root: Path, count: int = 4, size: tuple[int, int] = (40, 30), classes: int = 3, seed: int = 0
) -> Path:
    """A tiny Pascal VOC-layout segmentation set: noise with one coloured rectangle (class =
    colour) per image, palette masks with a row of 255 above it, train.txt = val.txt, and
    classes.txt."""
    from ghostnet.segmentation.data import IGNORE_INDEX, voc_palette

    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"im{i:02d}" for i in range(count)]
    w, h = size
    for i, stem in enumerate(ids):
        label = 1 + i % (classes - 1)
        pixels = rng.normal(128, 40, size=(h, w, 3))
        top, left = int(rng.integers(2, h // 3)), int(rng.integers(0, w // 3))
        pixels[top : top + h // 2, left : left + w // 2] = COLOURS[label % len(COLOURS)]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            root / "JPEGImages" / f"{stem}.jpg", quality=95
        )
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[top : top + h // 2, left : left + w // 2] = label
        mask[top - 1, left : left + w // 2] = IGNORE_INDEX
        write_mask(root / "SegmentationClass" / f"{stem}.png", mask, voc_palette())
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    names = ["background", *[f"c{k}" for k in range(1, classes)]]
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def write_mask(path: Path, labels: np.ndarray, palette: list[int]) -> None:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(palette)
    image.save(path)

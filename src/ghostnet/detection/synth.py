"""A real-image detection set that trains on a CPU: CIFAR-10 images pasted onto
backgrounds made from other CIFAR-10 images, with exactly known boxes, in COCO 2017 layout.

Each 256x256 canvas: a background (one CIFAR image of another split position, upscaled and
blurred, so it is a real photo without sharp object edges), then 1-4 CIFAR images scaled
0.5-2x (16-64 px) pasted at random places; a new object may cover at most half of an
earlier one, so overlaps occur but every object stays visible. Train canvases use CIFAR's
train split, val canvases its test split (no image is shared). Deterministic in ``seed``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ..errors import GhostnetError

CANVAS = 256
SCALES = (0.5, 2.0)
MAX_OBJECTS = 4
MAX_COVER = 0.5  # largest fraction of an earlier object a new one may hide


def cifar_class_files(root: Path, split: str) -> tuple[list[str], list[list[Path]]]:
    """(class names, each class's image files) of a CIFAR-10 ImageFolder split; the source
    of both synthetic sets (detection here, segmentation in segmentation/synth.py)."""
    folder = root / split
    if not folder.is_dir():
        raise GhostnetError(
            f"{folder} is missing: --cifar needs CIFAR-10 as train/ and test/ class folders"
        )
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [sorted(p for p in (folder / c).iterdir() if p.is_file()) for c in classes]
    if not classes or not all(files):
        raise GhostnetError(f"{folder} has no class folders with images")
    return classes, files


def _covered(a: list[int], b: list[int]) -> float:
    """Fraction of box ``a`` (x, y, w, h) that box ``b`` covers."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0) / (a[2] * a[3])


def _canvas(
    rng: np.random.Generator, files: list[list[Path]], pool: list[Path]
) -> tuple[Image.Image, list[tuple]]:
    bg_path = pool[rng.integers(len(pool))]
    with Image.open(bg_path) as im:
        background = im.convert("RGB").resize((CANVAS, CANVAS), Image.BILINEAR)
    canvas = background.filter(ImageFilter.GaussianBlur(3))
    objects: list[tuple[int, list[int]]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(files)))
        path = files[cls][rng.integers(len(files[cls]))]
        scale = float(np.exp(rng.uniform(np.log(SCALES[0]), np.log(SCALES[1]))))
        with Image.open(path) as im:
            side = max(8, round(im.width * scale))
            obj = im.convert("RGB").resize((side, side), Image.BILINEAR)
        for _try in range(20):
            x, y = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
            box = [x, y, side, side]
            if all(_covered(other, box) <= MAX_COVER for _, other in objects):
                canvas.paste(obj, (x, y))
                objects.append((cls, box))
                break
    return canvas, objects


def write_split(
    cifar: Path, out: Path, split: str, count: int, seed: int, source: str
) -> dict[str, Any]:
    """Write ``count`` canvases to ``out/<split>2017`` and their COCO json; returns it."""
    classes, files = cifar_class_files(cifar, source)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    folder = out / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    pool = [p for paths in files for p in paths]  # backgrounds: any image of the split
    for i in range(count):
        canvas, objects = _canvas(rng, files, pool)
        name = f"{i:06d}.jpg"
        canvas.save(folder / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": CANVAS, "height": CANVAS})
        for cls, box in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"CIFAR-10 objects on CIFAR-10 backgrounds, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(classes)],
    }
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    tmp = out / "annotations" / f".instances_{split}2017.json.tmp"
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, out / "annotations" / f"instances_{split}2017.json")
    return coco


def make_cifar_detection(
    cifar: str | os.PathLike, out: str | os.PathLike, train: int, val: int, seed: int = 0
) -> dict[str, int]:
    """The whole set (train from CIFAR train/, val from CIFAR test/); returns counts."""
    cifar, out = Path(cifar), Path(out)
    counts = {}
    for split, count, source in (("train", train, "train"), ("val", val, "test")):
        coco = write_split(cifar, out, split, count, seed, source)
        counts[f"{split}_images"] = len(coco["images"])
        counts[f"{split}_objects"] = len(coco["annotations"])
    return counts

"""A real-image segmentation set that trains on a CPU, in Pascal VOC layout: CIFAR-10
objects cut out through varied non-rectangular masks and pasted onto CIFAR-10 backgrounds.

Each ``size`` x ``size`` canvas: a background (another CIFAR image, upscaled and blurred, so
a real photo without sharp edges), then 1-3 CIFAR images scaled to 30-70% of the canvas,
each pasted through a seeded shape (an ellipse, a star-like polygon or a blob: a blurred
union of ellipses, thresholded); later objects occlude earlier ones. Labels: 0 background,
1..10 the CIFAR classes (``classes.txt``), and 255 (ignore) on a thin band (``border`` px
each side) along every edge between two labels, where a resized or anti-aliased boundary
is ambiguous. Train canvases come from CIFAR's train split, val canvases from its test
split (no image is shared). Deterministic in ``seed``: the same seed writes the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..detection.synth import cifar_class_files
from ..errors import GhostnetError
from ..safe_io import write_text
from .data import IGNORE_INDEX, voc_palette

SHAPES = ("ellipse", "polygon", "blob")
MAX_OBJECTS = 3
SCALE = (0.3, 0.7)  # object side as a fraction of the canvas


def shape_mask(rng: np.random.Generator, side: int) -> tuple[str, np.ndarray]:
    """A seeded non-rectangular mask (bool, side x side) and its shape's name."""
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    centre = side / 2
    if kind == "ellipse":
        rx, ry = (side / 2) * rng.uniform(0.55, 1.0, size=2)
        draw.ellipse([centre - rx, centre - ry, centre + rx, centre + ry], fill=255)
    elif kind == "polygon":
        corners = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radii = (side / 2) * rng.uniform(0.45, 1.0, corners)
        points = [
            (float(centre + r * np.cos(a)), float(centre + r * np.sin(a)))
            for a, r in zip(angles, radii, strict=True)
        ]
        draw.polygon(points, fill=255)
    else:
        for _ in range(int(rng.integers(3, 6))):
            cx, cy = side * rng.uniform(0.3, 0.7, size=2)
            rx, ry = side * rng.uniform(0.12, 0.3, size=2)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        canvas = canvas.filter(ImageFilter.GaussianBlur(max(1.0, side / 16)))
    mask = np.asarray(canvas) >= 128
    return kind, mask


def ambiguous_band(labels: np.ndarray, border: int) -> np.ndarray:
    """Pixels within ``border`` px (Chebyshev) of a pixel with another label."""
    h, w = labels.shape
    padded = np.pad(labels, border, mode="edge")
    band = np.zeros((h, w), dtype=bool)
    for dy in range(2 * border + 1):
        for dx in range(2 * border + 1):
            band |= padded[dy : dy + h, dx : dx + w] != labels
    return band


def make_canvas(
    rng: np.random.Generator,
    files: list[list[Path]],
    size: int,
    border: int = 1,
    pool: list[Path] | None = None,
) -> tuple[Image.Image, np.ndarray, list[tuple[int, str]]]:
    """One image, its label map (uint8) and its objects' (label, shape); backgrounds come
    from ``pool`` (default: every file of ``files``)."""
    pool = pool if pool is not None else [p for paths in files for p in paths]
    with Image.open(pool[int(rng.integers(len(pool)))]) as im:
        background = im.convert("RGB").resize((size, size), Image.BILINEAR)
    canvas = background.filter(ImageFilter.GaussianBlur(size / 64))
    labels = np.zeros((size, size), dtype=np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(files)))
        path = files[cls][int(rng.integers(len(files[cls])))]
        side = max(8, round(size * rng.uniform(*SCALE)))
        with Image.open(path) as im:
            obj = im.convert("RGB").resize((side, side), Image.BICUBIC)
        kind, mask = shape_mask(rng, side)
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        canvas.paste(obj, (x, y), Image.fromarray(mask.astype(np.uint8) * 255))
        labels[y : y + side, x : x + side][mask] = cls + 1
        objects.append((cls + 1, kind))
    if border > 0:
        labels[ambiguous_band(labels, border)] = IGNORE_INDEX
    return canvas, labels, objects


def _png(labels: np.ndarray) -> Image.Image:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(voc_palette())
    return image


def make_cifar_segmentation(
    cifar: str | os.PathLike,
    out: str | os.PathLike,
    train: int,
    val: int,
    size: int = 128,
    seed: int = 0,
    border: int = 1,
) -> dict[str, int]:
    """Write the set to ``out`` (VOC layout); returns counts per split and per shape."""
    cifar, root = Path(cifar), Path(out)
    if size < 32:
        raise GhostnetError(f"--size must be >= 32 (objects are 30-70% of it), got {size}")
    if train < 1 or val < 1:
        raise GhostnetError(f"--train and --val must be >= 1, got {train} and {val}")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    classes: list[str] = []
    for index, (split, count, source) in enumerate(
        (("train", train, "train"), ("val", val, "test"))
    ):
        classes, files = cifar_class_files(cifar, source)
        rng = np.random.default_rng([seed, index])
        pool = [p for paths in files for p in paths]
        ids = []
        for i in range(count):
            stem = f"{split}_{i:06d}"
            image, labels, objects = make_canvas(rng, files, size, border, pool)
            # fixed encoder settings: the same seed gives the same bytes
            image.save(root / "JPEGImages" / f"{stem}.jpg", quality=95, optimize=False)
            _png(labels).save(root / "SegmentationClass" / f"{stem}.png", optimize=False)
            ids.append(stem)
            for _, kind in objects:
                counts[kind] = counts.get(kind, 0) + 1
            counts[f"{split}_objects"] = counts.get(f"{split}_objects", 0) + len(objects)
        write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
        counts[f"{split}_images"] = count
    write_text(root / "classes.txt", "\n".join(["background", *classes]) + "\n")
    return counts

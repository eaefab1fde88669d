"""The CIFAR segmentation set: deterministic bytes per seed, sane labels, readable by the
VOC loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ghostnet.errors import GhostnetError
from ghostnet.segmentation.data import IGNORE_INDEX, open_split
from ghostnet.segmentation.synth import ambiguous_band, make_cifar_segmentation, shape_mask


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_and_sane_labels(tmp_path: Path, cifar10_path: Path) -> None:
    counts = make_cifar_segmentation(cifar10_path, tmp_path / "a", 6, 3, size=64, seed=1)
    make_cifar_segmentation(cifar10_path, tmp_path / "b", 6, 3, size=64, seed=1)
    make_cifar_segmentation(cifar10_path, tmp_path / "c", 6, 3, size=64, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert counts["train_images"] == 6 and counts["val_images"] == 3
    split = open_split(tmp_path / "a", "train")
    assert len(split) == 6 and split.skipped == []
    assert split.classes[0] == "background" and len(split.classes) == 11
    for mask_path in split.masks:
        labels = np.asarray(Image.open(mask_path))
        assert labels.shape == (64, 64)
        values = set(np.unique(labels).tolist())
        assert values <= set(range(11)) | {IGNORE_INDEX}
        assert 0 in values and values - {0, IGNORE_INDEX}, "background and an object"
        # the ignore band is thin: a small share of the pixels, and only on edges
        assert 0 < (labels == IGNORE_INDEX).mean() < 0.3
    assert (tmp_path / "a" / "ImageSets/Segmentation/val.txt").read_text().split() == [
        "val_000000",
        "val_000001",
        "val_000002",
    ]


def test_shapes_are_not_rectangles() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        kind, mask = shape_mask(rng, 40)
        seen.add(kind)
        assert 0.1 < mask.mean() < 0.95  # neither empty nor the full square
    assert seen == {"ellipse", "polygon", "blob"}


def test_band_marks_both_sides_of_an_edge() -> None:
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[:, 3:] = 4
    band = ambiguous_band(labels, 1)
    assert band[:, 2:4].all() and not band[:, :2].any() and not band[:, 4:].any()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(GhostnetError, match="is missing"):
        make_cifar_segmentation(tmp_path / "none", tmp_path / "out", 1, 1)
    with pytest.raises(GhostnetError, match="--size must be >= 32"):
        make_cifar_segmentation(tmp_path, tmp_path / "out", 1, 1, size=8)

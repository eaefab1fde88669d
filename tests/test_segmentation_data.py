"""VOC-layout segmentation data: a good folder loads with joint transforms; each bad input
is skipped with a warning naming the file, or is one clear GhostnetError line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ghostnet.errors import GhostnetError
from ghostnet.segmentation.data import (
    IGNORE_INDEX,
    SegmentationDataset,
    collate_skipping,
    eval_transform,
    open_split,
    train_transform,
    voc_palette,
)

from . import imagegen
from .imagegen import write_voc


def write_mask(path: Path, labels: np.ndarray) -> None:
    imagegen.write_mask(path, labels, voc_palette())


def test_good_folder_loads_with_joint_transforms(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    split = open_split(root, "train")
    assert len(split) == 4 and split.classes == ["background", "c1", "c2"]
    data = SegmentationDataset(split, train_transform(32), seed=3)
    image, mask = data[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    # seeded per (seed, epoch, index): the same crop again, another one next epoch
    assert torch.equal(data[0][1], mask)
    image2, _ = data[0]
    assert torch.equal(image2, image)
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_skipping)))
    assert batch.images.shape == (4, 3, 32, 32) and batch.masks.shape == (4, 32, 32)


def test_eval_transform_keeps_labels_exact(tmp_path: Path) -> None:
    root = write_voc(tmp_path, size=(32, 32))
    data = SegmentationDataset(open_split(root, "val"), eval_transform(32))
    _, mask = data[1]
    expected = np.asarray(Image.open(root / "SegmentationClass" / "im01.png"))
    assert torch.equal(mask, torch.from_numpy(expected.astype(np.int64)))


def test_real_voc_parent_folder_is_found(tmp_path: Path) -> None:
    write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    assert len(open_split(tmp_path, "val", classes=["a", "b", "c"])) == 4


def test_size_mismatch_and_missing_files_are_skipped_by_name(tmp_path: Path, caplog) -> None:
    root = write_voc(tmp_path, count=5)
    write_mask(root / "SegmentationClass" / "im01.png", np.zeros((10, 10), dtype=np.uint8))
    (root / "SegmentationClass" / "im02.png").unlink()
    (root / "JPEGImages" / "im03.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        split = open_split(root, "train")
    assert [p.stem for p in split.images] == ["im00", "im04"]
    (record,) = caplog.records
    assert "skipped 3 of 5" in record.getMessage()
    assert "im01.png: mask is 10x10, its image 40x30" in record.getMessage()
    assert "im02.png: mask missing" in record.getMessage()
    assert "im03.jpg: image missing" in record.getMessage()


def test_rgb_mask_is_skipped(tmp_path: Path, caplog) -> None:
    root = write_voc(tmp_path, count=2)
    Image.new("RGB", (40, 30)).save(root / "SegmentationClass" / "im00.png")
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        assert len(open_split(root, "train")) == 1
    assert "mask mode RGB" in caplog.text


def test_label_outside_the_classes_is_skipped_at_decode(tmp_path: Path, caplog) -> None:
    root = write_voc(tmp_path, count=3)
    bad = np.zeros((30, 40), dtype=np.uint8)
    bad[0, 0] = 7  # 3 classes: 7 is neither a class nor 255
    write_mask(root / "SegmentationClass" / "im01.png", bad)
    data = SegmentationDataset(open_split(root, "train"), eval_transform(16))
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        batches = list(DataLoader(data, batch_size=3, collate_fn=collate_skipping))
        list(DataLoader(data, batch_size=3, collate_fn=collate_skipping))  # warned once only
    (batch,) = batches
    assert batch.images.shape[0] == 2 and batch.skipped == [
        str(root / "SegmentationClass" / "im01.png")
    ]
    assert len(caplog.records) == 1
    assert "im01.png: label 7 outside 0..2 (and not 255)" in caplog.text


def test_undecodable_image_is_skipped_mid_epoch(tmp_path: Path) -> None:
    root = write_voc(tmp_path, count=2)
    path = root / "JPEGImages" / "im00.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, pixel data truncated
    data = SegmentationDataset(open_split(root, "train"), eval_transform(16))
    batch = collate_skipping([data[0], data[1]])
    assert batch.images.shape[0] == 1 and batch.skipped == [str(path)]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "ImageSets/Segmentation/train.txt").write_text("\n"), "lists no images"),
        (
            lambda r: (r / "ImageSets/Segmentation/train.txt").unlink(),
            "train.txt: no such image set",
        ),
        (
            lambda r: __import__("shutil").rmtree(r / "SegmentationClass"),
            "no SegmentationClass/ folder",
        ),
        (lambda r: __import__("shutil").rmtree(r / "JPEGImages"), "no JPEGImages/ folder"),
        (
            lambda r: (r / "ImageSets/Segmentation/train.txt").write_text("nope\n"),
            "none of its 1 entries",
        ),
        (lambda r: (r / "classes.txt").write_text("one\n"), "lists 1 classes"),
    ],
)
def test_fatal_problems_are_one_line(tmp_path: Path, damage, message: str) -> None:
    root = write_voc(tmp_path, count=2)
    damage(root)
    with pytest.raises(GhostnetError, match=message) as info:
        open_split(root, "train")
    assert "\n" not in str(info.value)


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(GhostnetError, match="no such folder"):
        open_split(tmp_path / "absent", "train")

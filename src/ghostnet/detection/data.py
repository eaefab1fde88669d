"""COCO-layout detection data (``annotations/instances_{train,val}2017.json`` with images
in ``train2017/`` and ``val2017/``), read with pycocotools, with bad entries skipped.

Skipped, each named once in a warning: an image file that is missing or does not decode,
a box outside its image (or with no area), an annotation with an unknown category id.
Fatal, in one line: no json, a json that is not COCO, no categories, a split with no
usable annotation at all.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import GhostnetError

log = logging.getLogger("ghostnet")
EDGE_SLACK = 1.0  # pixels a box may pass the border by (rounding in converters)


@dataclass
class CocoSplit:
    """One split: the pycocotools index, the usable images and their targets."""

    coco: Any
    folder: Path
    image_ids: list[int]
    targets: dict[int, dict[str, np.ndarray]]
    classes: list[str]
    category_ids: list[int]  # label k (1-based) is category_ids[k - 1]
    skipped: list[str] = field(default_factory=list)


def _load_json(path: Path) -> Any:
    from pycocotools.coco import COCO

    if not path.is_file():
        raise GhostnetError(
            f"{path} is missing: --data must be a COCO 2017 layout folder "
            "(annotations/instances_train2017.json, train2017/, val2017/)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(path))
    except Exception as exc:  # json errors, missing keys: all mean "not a COCO file"
        raise GhostnetError(
            f"{path}: not a COCO annotation file ({type(exc).__name__}: {exc})"
        ) from exc


def open_split(root: str | Path, split: str, classes: list[str] | None = None) -> CocoSplit:
    """Read ``root/annotations/instances_<split>2017.json``; ``classes`` (a checkpoint's)
    fixes the label order, else it is the json's categories sorted by id."""
    root = Path(root)
    path = root / "annotations" / f"instances_{split}2017.json"
    coco = _load_json(path)
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    if not cats:
        raise GhostnetError(f"{path} has no categories")
    by_name = {c["name"]: c["id"] for c in cats}
    if classes is None:
        classes = [c["name"] for c in cats]
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise GhostnetError(f"{path} lacks the categories {missing[:5]} the model was trained on")
    category_ids = [by_name[c] for c in classes]
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    folder = root / f"{split}2017"
    skipped: list[str] = []
    targets: dict[int, dict[str, np.ndarray]] = {}
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        file = folder / info["file_name"]
        if not file.is_file():
            skipped.append(f"{file} (missing file)")
            continue
        width, height = info.get("width"), info.get("height")
        boxes, labels = [], []
        for ann in coco.imgToAnns.get(image_id, []):
            name = f"{path.name} annotation {ann.get('id')} (image {info['file_name']})"
            if ann.get("iscrowd", 0):
                continue
            if ann.get("category_id") not in label_of:
                skipped.append(f"{name}: unknown category id {ann.get('category_id')}")
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            outside = width is not None and (
                x < -EDGE_SLACK
                or y < -EDGE_SLACK
                or x + w > width + EDGE_SLACK
                or y + h > height + EDGE_SLACK
            )
            if w <= 0 or h <= 0 or outside:
                skipped.append(f"{name}: box {[x, y, w, h]} outside the {width}x{height} image")
                continue
            boxes.append(
                [max(x, 0), max(y, 0), min(x + w, width or x + w), min(y + h, height or y + h)]
            )
            labels.append(label_of[ann["category_id"]])
        targets[image_id] = {
            "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.array(labels, dtype=np.int64),
        }
    if not any(len(t["labels"]) for t in targets.values()):
        raise GhostnetError(
            f"{path}: no usable annotation (annotation list empty or every entry skipped); "
            "a detector needs boxes to learn from"
        )
    if skipped:
        shown = "; ".join(skipped[:5]) + (
            f"; ... {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        log.warning("%s: skipped %d bad entries: %s", path, len(skipped), shown)
    return CocoSplit(coco, folder, sorted(targets), targets, classes, category_ids, skipped)


class DetectionDataset(Dataset):
    """Images as float tensors in [0, 1] with ``{"boxes", "labels", "image_id"}`` targets.
    ``flip`` mirrors an image with probability 0.5, seeded by (seed, epoch, index) so a
    resumed run sees the same flips. An image that fails to decode is replaced by the next
    good one and recorded in ``bad`` (named once), never raised mid-epoch."""

    def __init__(self, split: CocoSplit, flip: bool = False, seed: int = 0) -> None:
        self.split = split
        self.flip = flip
        self.seed = seed
        self.epoch = 0
        self.bad: list[str] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.image_ids)

    def _read(self, index: int) -> torch.Tensor | None:
        info = self.split.coco.imgs[self.split.image_ids[index]]
        path = self.split.folder / info["file_name"]
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            if str(path) not in self.bad:
                self.bad.append(str(path))
                log.warning("skipped unreadable image %s (%s)", path, exc)
            return None
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            image = self._read(i)
            if image is not None:
                break
        else:
            raise GhostnetError(f"no image of {self.split.folder} decodes")
        image_id = self.split.image_ids[i]
        t = self.split.targets[image_id]
        boxes = torch.from_numpy(t["boxes"]).clone()
        if self.flip:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if rng.random() < 0.5:
                image = image.flip(-1)
                width = image.shape[-1]
                boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        target = {
            "boxes": boxes,
            "labels": torch.from_numpy(t["labels"]).clone(),
            "image_id": torch.tensor(image_id),
        }
        return image, target


def collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)

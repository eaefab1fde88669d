"""Pascal VOC-layout segmentation data: ``JPEGImages/ID.jpg``, ``SegmentationClass/ID.png``
(palette or greyscale PNGs whose pixel values are class indices, 255 = ignore) and
``ImageSets/Segmentation/{train,val}.txt`` (one ID a line). A real VOC2012 download works
as is (its ``VOCdevkit/VOC2012`` folder, or the folder above it). Class names come from
``classes.txt`` (one a line, line k = label k) when the folder has one, else VOC's 21.

When each check is made, and why there:

- at open, before any training: the folders and the list exist and the list is not empty
  (one GhostnetError line); per entry, the image and the mask exist and their PNG/JPEG
  headers agree on the size and the mask is single-channel. PIL reads only the header for
  this, so it costs ~0.1 ms per pair even for VOC-sized sets. Bad entries are skipped and
  named in one warning.
- label values when the mask is decoded for a sample: checking them at open would decode
  every mask once more before the first step (seconds for VOC's ~1.5k masks, minutes for
  large sets), while the sample's own decode gives them for free. A mask with a value
  outside ``0..num_classes-1`` (and not 255) is skipped (the sample yields ``None``,
  dropped by :func:`collate_skipping`) and named once in a warning; nothing is raised
  mid-epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import GhostnetError
from .models import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("ghostnet")
IGNORE_INDEX = 255
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
LAYOUT_HELP = (
    "point --data at a Pascal VOC-layout folder: JPEGImages/ID.jpg, SegmentationClass/ID.png, "
    "ImageSets/Segmentation/{train,val}.txt"
)


def voc_palette() -> list[int]:
    """VOC's colour map (768 ints: r, g, b per label), the bit-interleaving one of its devkit."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def find_root(root: str | os.PathLike) -> Path:
    """``root`` itself, or its ``VOCdevkit/VOC2012`` (or ``VOC2012``) when that holds the layout."""
    path = Path(root)
    if not path.is_dir():
        raise GhostnetError(f"{path}: no such folder; {LAYOUT_HELP}")
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise GhostnetError(f"{path} has no JPEGImages/ folder; {LAYOUT_HELP}")


def read_classes(root: Path) -> list[str]:
    file = root / "classes.txt"
    if not file.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if len(names) < 2 or len(names) > IGNORE_INDEX:
        raise GhostnetError(
            f"{file} lists {len(names)} classes; it needs 2..255 (background first), one a line"
        )
    return names


@dataclass
class SegSplit:
    """One split: image/mask path pairs that passed the header checks, the class names."""

    root: Path
    name: str
    images: list[Path]
    masks: list[Path]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _header_problem(image: Path, mask: Path) -> str | None:
    """What is wrong with an image/mask pair from their headers alone, or None."""
    if not image.is_file():
        return f"{image}: image missing"
    if not mask.is_file():
        return f"{mask}: mask missing"
    try:
        with Image.open(image) as im:
            image_size = im.size
        with Image.open(mask) as m:
            mask_size, mode = m.size, m.mode
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{image}: unreadable ({str(exc).splitlines()[0][:120]})"
    if mask_size != image_size:
        return (
            f"{mask}: mask is {mask_size[0]}x{mask_size[1]}, its image "
            f"{image_size[0]}x{image_size[1]}"
        )
    if mode not in ("P", "L"):
        return f"{mask}: mask mode {mode}, expected a palette (P) or greyscale (L) PNG of labels"
    return None


def open_split(
    root: str | os.PathLike, split: str, classes: Sequence[str] | None = None
) -> SegSplit:
    """The ``split`` list of a VOC-layout folder, checked from file headers (see module doc).
    ``classes`` (e.g. from a checkpoint) overrides the folder's class names."""
    base = find_root(root)
    for sub in ("SegmentationClass", "ImageSets/Segmentation"):
        if not (base / sub).is_dir():
            raise GhostnetError(f"{base} has no {sub}/ folder; {LAYOUT_HELP}")
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise GhostnetError(f"{listing}: no such image set; {LAYOUT_HELP}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise GhostnetError(f"{listing} lists no images: add one ID a line")
    names = list(classes) if classes is not None else read_classes(base)
    images, masks, skipped = [], [], []
    for stem in ids:
        image = base / "JPEGImages" / f"{stem}.jpg"
        mask = base / "SegmentationClass" / f"{stem}.png"
        problem = _header_problem(image, mask)
        if problem is None:
            images.append(image)
            masks.append(mask)
        else:
            skipped.append(problem)
    if skipped:
        shown = "; ".join(skipped[:5]) + (
            f"; ... {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        log.warning("%s: skipped %d of %d entries: %s", listing, len(skipped), len(ids), shown)
    if not images:
        raise GhostnetError(f"{listing}: none of its {len(ids)} entries is usable ({skipped[0]})")
    return SegSplit(base, split, images, masks, names, skipped)


def train_transform(
    size: int, scale: tuple[float, float] = (0.5, 2.0), flip: bool = True
) -> v2.Compose:
    """torchvision's segmentation recipe: shorter side resized to ``size`` x U(scale), a
    random ``size`` x ``size`` crop (padded with ignore on the mask), horizontal flip."""
    steps: list[v2.Transform] = [
        v2.RandomResize(max(1, int(size * scale[0])), max(2, int(size * scale[1]))),
        v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Mask: IGNORE_INDEX, "others": 0}),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, *_to_float()])


def eval_transform(size: int) -> v2.Compose:
    """Resized to ``size`` x ``size`` (the mask with nearest neighbours), normalised."""
    return v2.Compose([v2.Resize((size, size)), *_to_float()])


def _to_float() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
    ]


def read_pair(image: Path, mask: Path) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    with Image.open(mask) as m:
        labels = np.asarray(m, dtype=np.uint8).copy()  # palette indices, not colours
    return (
        tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1)),
        tv_tensors.Mask(torch.from_numpy(labels)),
    )


class SegmentationDataset(Dataset):
    """(image float tensor, mask int64 tensor) pairs; augmentation seeded per (seed, epoch,
    index) so a resumed run sees the same crops. A sample that fails to decode or has a
    label outside the classes yields ``(None, path)``, named once in a warning."""

    def __init__(self, split: SegSplit, transform: v2.Compose, seed: int = 0) -> None:
        self.split = split
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.warned: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def _bad(self, path: Path, why: str) -> tuple[None, str]:
        if str(path) not in self.warned:
            self.warned.add(str(path))
            log.warning("skipped %s: %s", path, why)
        return None, str(path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, str]:
        image_path, mask_path = self.split.images[index], self.split.masks[index]
        try:
            image, mask = read_pair(image_path, mask_path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return self._bad(image_path, f"does not decode ({str(exc).splitlines()[0][:120]})")
        values = torch.unique(mask)
        bad = values[(values >= len(self.split.classes)) & (values != IGNORE_INDEX)]
        if bad.numel():
            return self._bad(
                mask_path,
                f"label {int(bad[0])} outside 0..{len(self.split.classes) - 1} (and not "
                f"{IGNORE_INDEX}); fix the mask or list the classes in classes.txt",
            )
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 100_000_007 + index
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed % (1 << 63))
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


@dataclass
class SegBatch:
    """A collated batch: images (N,3,H,W), masks (N,H,W) and the files that were skipped."""

    images: torch.Tensor
    masks: torch.Tensor
    skipped: list[str]

    def __iter__(self):  # (images, masks) unpacking, as with the default collate
        return iter((self.images, self.masks))


def collate_skipping(
    samples: list[tuple[torch.Tensor, torch.Tensor] | tuple[None, str]],
) -> SegBatch:
    """Stack the good samples; name the skipped ones (see :class:`SegmentationDataset`)."""
    good = [(x, y) for x, y in samples if x is not None]
    skipped = [str(y) for x, y in samples if x is None]
    if not good:
        return SegBatch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    return SegBatch(torch.stack([x for x, _ in good]), torch.stack([y for _, y in good]), skipped)

"""Data sets for training and evaluation: sources, transform presets, bad files.

``--data`` may be an ImageFolder-style folder with ``train/`` and ``test/`` (or ``val/``),
the official ``cifar-10-batches-py`` folder, or the word ``cifar10`` (torchvision's
CIFAR10, downloaded once into the cache). Small images are decoded once and kept in memory
as one uint8 tensor, so CPU epochs are not spent decoding JPEGs.

Augmentation is seeded per (seed, epoch, sample index): the same sample gets the same crop
and flip whatever the worker count or a resume point, which makes resumed runs exact.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .config import AUGMENTS
from .errors import GhostnetError

log = logging.getLogger("ghostnet")

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875
IN_MEMORY_MAX_SIDE = 64  # images up to this size are decoded once and kept in memory
IN_MEMORY_MAX_BYTES = 8 << 30
DATA_HELP = (
    "point --data at a folder with train/ and test/ (or val/) class subfolders, at a "
    "cifar-10-batches-py folder, or use --data cifar10 to download CIFAR-10"
)


class BadImageError(GhostnetError):
    """An image file that cannot be decoded."""


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode any common image file to a uint8 RGB tensor (3, H, W).

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted to 8-bit
    RGB, and the EXIF orientation is applied (a phone photo taken upright reads upright).
    Unreadable files, and images past PIL's decompression-bomb limit, raise
    :class:`BadImageError` naming the file and the reason.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as opened:
            opened.load()
            img = ImageOps.exif_transpose(opened) or opened
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                # 16-bit (or float) grayscale: scale to 8 bits instead of clipping
                arr = np.asarray(img, dtype=np.float64)
                scale = 257.0 if img.mode != "F" else max(float(arr.max()), 1.0) / 255.0
                arr = np.clip(arr / scale, 0, 255).astype(np.uint8)
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            else:
                if img.mode == "P":  # palette, possibly with transparency
                    img = img.convert("RGBA")
                arr = np.array(img.convert("RGB"))
    except BadImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImageError(
            f"{path}: image too large to decode safely ({exc}); resize it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from exc
    except UnidentifiedImageError as exc:
        raise BadImageError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"{path}: not a readable image ({exc})") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class Split:
    """One split of a data set, before transforms: decoded images or file paths, labels."""

    name: str
    classes: list[str]
    labels: torch.Tensor  # int64 (N,)
    images: torch.Tensor | None = None  # uint8 (N, 3, H, W) when kept in memory
    files: list[str] | None = None  # paths when decoded lazily
    skipped: list[str] = field(default_factory=list)  # paths of unreadable files left out

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int] | None:
        if self.images is not None:
            return int(self.images.shape[2]), int(self.images.shape[3])
        return None

    def subset(self, indices: torch.Tensor) -> Split:
        """The same split restricted to ``indices``."""
        images = self.images[indices] if self.images is not None else None
        files = [self.files[i] for i in indices.tolist()] if self.files is not None else None
        return Split(self.name, self.classes, self.labels[indices], images, files, self.skipped)


@dataclass
class DataSource:
    """Train and eval splits with their class names, and what they were read from."""

    train: Split | None
    eval: Split
    classes: list[str]
    description: str


# ----------------------------------------------------------------------------- sources


def _scan_classes(root: Path) -> tuple[list[str], list[list[Path]], list[Path]]:
    """Class folders of an ImageFolder split, their image files, and non-image files."""
    if not root.is_dir():
        raise GhostnetError(f"folder not found: {root}; {DATA_HELP}")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise GhostnetError(f"{root} has no class subfolders; {DATA_HELP}")
    files: list[list[Path]] = []
    others: list[Path] = []
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                target = found if fname.lower().endswith(IMAGE_EXTENSIONS) else others
                target.append(Path(dirpath) / fname)
        if not found:
            raise GhostnetError(
                f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        files.append(found)
    return classes, files, others


def _decode_all(paths: list[Path]) -> tuple[list[torch.Tensor | None], list[str]]:
    """Decode many files with a small thread pool (PIL releases the GIL)."""

    def one(path: Path) -> torch.Tensor | str:
        try:
            return read_image(path)
        except BadImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, paths, chunksize=256))
    bad = [r for r in results if isinstance(r, str)]
    return [r if isinstance(r, torch.Tensor) else None for r in results], bad


@functools.lru_cache(maxsize=8)
def _image_folder_split(root: str, name: str, strict: bool, in_memory: str) -> Split:
    """Read one ImageFolder split (memoised per process: tests and eval reuse it)."""
    path = Path(root)
    classes, per_class, others = _scan_classes(path)
    if others:
        log.warning(
            "%s: ignored %d non-image file(s), e.g. %s",
            path,
            len(others),
            ", ".join(str(p.relative_to(path)) for p in others[:3]),
        )
    paths = [p for files in per_class for p in files]
    labels = torch.tensor([i for i, files in enumerate(per_class) for _ in files])
    keep_in_memory = in_memory == "always"
    if in_memory == "auto":
        # probe images spread over the whole list (all classes), and go by the majority:
        # one odd file must not decide how the whole set is read
        probe = paths[:: max(1, len(paths) // 32)][:32]
        sides = []
        for candidate in probe:
            try:
                sides.append(max(read_image(candidate).shape[1:]))
            except BadImageError:
                continue
        if sides:
            side = Counter(sides).most_common(1)[0][0]
            keep_in_memory = (
                side <= IN_MEMORY_MAX_SIDE and 3 * side * side * len(paths) <= IN_MEMORY_MAX_BYTES
            )
    if not keep_in_memory:
        return Split(name, classes, labels, files=[str(p) for p in paths])

    decoded, bad = _decode_all(paths)
    if bad:
        if strict:
            raise BadImageError(f"{len(bad)} unreadable image(s) in {path}, first: {bad[0]}")
        log.warning(
            "%s: skipping %d unreadable image(s) (listed once): %s",
            path,
            len(bad),
            "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""),
        )
    good = [i for i, t in enumerate(decoded) if t is not None]
    if not good:
        raise GhostnetError(f"{path}: no readable images; {DATA_HELP}")
    sizes = Counter(tuple(decoded[i].shape[1:]) for i in good)
    if len(sizes) > 1:  # mixed sizes: resize the odd ones to the majority's size
        (height, width), _ = sizes.most_common(1)[0]
        odd = [str(paths[i]) for i in good if tuple(decoded[i].shape[1:]) != (height, width)]
        log.warning(
            "%s: %d of %d images are not %dx%d like the rest (e.g. %s); resized to %dx%d",
            path,
            len(odd),
            len(good),
            height,
            width,
            odd[0],
            height,
            width,
        )
        for i in good:
            if tuple(decoded[i].shape[1:]) != (height, width):
                decoded[i] = v2.functional.resize(decoded[i], [height, width], antialias=True)
    images = torch.stack([decoded[i] for i in good])
    unreadable = [str(p) for p, t in zip(paths, decoded) if t is None]
    return Split(name, classes, labels[good], images=images, skipped=unreadable)


def _cifar_python_root(path: Path) -> Path | None:
    """The folder holding ``cifar-10-batches-py`` if ``path`` is (or contains) it."""
    if (path / "data_batch_1").exists() and path.name == "cifar-10-batches-py":
        return path.parent
    if (path / "cifar-10-batches-py" / "data_batch_1").exists():
        return path
    return None


def _torchvision_cifar10(root: Path, download: bool) -> DataSource:
    from torchvision.datasets import CIFAR10

    def split(train: bool) -> Split:
        try:
            ds = CIFAR10(str(root), train=train, download=download)
        except (RuntimeError, OSError) as exc:
            hint = (
                f"could not download CIFAR-10 into {root} ({exc}); offline? {DATA_HELP} "
                "(e.g. --data ../shared/data/cifar10)"
                if download
                else f"{root}/cifar-10-batches-py is incomplete or corrupt ({exc})"
            )
            raise GhostnetError(hint) from exc
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return Split(
            "train" if train else "test", list(ds.classes), torch.tensor(ds.targets), images=images
        )

    train, test = split(True), split(False)
    return DataSource(train, test, train.classes, f"CIFAR-10 ({root})")


def data_cache_dir() -> Path:
    """``$GHOSTNET_CACHE/data``, else ``~/.cache/ghostnet/data`` (weights: ``weights/``)."""
    base = os.environ.get("GHOSTNET_CACHE") or Path.home() / ".cache" / "ghostnet"
    return Path(base) / "data"


def open_data(
    spec: str,
    *,
    strict: bool = False,
    in_memory: str = "auto",
    need_train: bool = True,
) -> DataSource:
    """Open ``--data``: an ImageFolder root, a cifar-10-batches-py folder, or ``cifar10``."""
    if in_memory not in ("auto", "always", "never"):
        raise GhostnetError(f"in_memory must be auto, always or never, got {in_memory!r}")
    if spec.lower() == "cifar10":
        return _torchvision_cifar10(data_cache_dir(), download=True)
    path = Path(spec).expanduser()
    if not path.exists():
        raise GhostnetError(f"--data path does not exist: {path}; {DATA_HELP}")
    cifar_root = _cifar_python_root(path)
    if cifar_root is not None:
        return _torchvision_cifar10(cifar_root, download=False)
    if not path.is_dir():
        raise GhostnetError(f"--data must be a folder, got a file: {path}; {DATA_HELP}")
    eval_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    has_train = (path / "train").is_dir()
    if need_train and not has_train:
        subdirs = sorted(p.name for p in path.iterdir() if p.is_dir())[:8]
        raise GhostnetError(
            f"no train/ folder in {path} (found: {', '.join(subdirs) or 'nothing'}); {DATA_HELP}"
        )
    if eval_dir is None:
        raise GhostnetError(f"no test/ or val/ folder in {path}; {DATA_HELP}")
    root = str(path.resolve())
    evaluation = _image_folder_split(
        str(Path(root) / eval_dir.name), eval_dir.name, strict, in_memory
    )
    train = (
        _image_folder_split(str(Path(root) / "train"), "train", strict, in_memory)
        if need_train
        else None
    )
    if train is not None and train.classes != evaluation.classes:
        raise GhostnetError(
            f"train/ and {eval_dir.name}/ in {path} have different class folders "
            f"({len(train.classes)} vs {len(evaluation.classes)}); they must match"
        )
    return DataSource(train, evaluation, evaluation.classes, f"image folders in {path}")


# ------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class Preset:
    """How images are prepared: ``cifar`` (pad-crop, flip) or ``imagenet`` (RRC, flip)."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preset:
        return cls(data["name"], int(data["input_size"]), tuple(data["mean"]), tuple(data["std"]))


def choose_preset(
    name: str, image_size: tuple[int, int] | None = None, input_size: int | None = None
) -> Preset:
    """``auto`` picks ``cifar`` for images up to 64 px (kept at their size), else ``imagenet``.

    ``image_size`` is the stored images' (H, W) when known (in-memory data sets)."""
    if name == "auto":
        small = image_size is not None and max(image_size) <= IN_MEMORY_MAX_SIDE
        name = "cifar" if small else "imagenet"
    if name == "cifar":
        side = input_size or (image_size[0] if image_size else 32)
        return Preset("cifar", side, CIFAR_MEAN, CIFAR_STD)
    if name == "imagenet":
        return Preset("imagenet", input_size or 224, IMAGENET_MEAN, IMAGENET_STD)
    raise GhostnetError(f"unknown preset {name!r}: use auto, cifar or imagenet")


def build_transform(
    preset: Preset,
    train: bool,
    randaugment: int = 0,
    random_erase: float = 0.0,
    augment: str = "crop-flip",
) -> v2.Compose:
    """torchvision transforms v2 for a uint8 (3, H, W) tensor -> normalised float tensor.

    Training crops and flips (``augment="crop-flip"``), only flips (``"flip"``: a short
    fine-tune, such as ``compress``'s distillation, underfits with crops) or neither
    (``"none"``); without the crop the image is resized (and centre-cropped) as for
    evaluation. Then, when asked, RandAugment (2 ops at ``randaugment`` magnitude, on uint8)
    and random erasing (probability ``random_erase``) last."""
    if augment not in AUGMENTS:
        raise GhostnetError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    size = preset.input_size
    crop = train and augment == "crop-flip"
    steps: list[v2.Transform]
    if preset.name == "cifar":
        steps = [v2.Resize((size, size), antialias=True)]
        if crop:
            steps.append(v2.RandomCrop(size, padding=4))
    elif crop:
        steps = [
            v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        ]
    else:
        steps = [
            v2.Resize(
                round(size / EVAL_CROP_RATIO),
                interpolation=v2.InterpolationMode.BILINEAR,
                antialias=True,
            ),
            v2.CenterCrop(size),
        ]
    if train and augment != "none":
        steps.append(v2.RandomHorizontalFlip())
    if train and randaugment > 0:
        steps.append(v2.RandAugment(num_ops=2, magnitude=randaugment))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preset.mean, preset.std)]
    if train and random_erase > 0:
        steps.append(v2.RandomErasing(p=random_erase, value=0))
    return v2.Compose(steps)


class ImageDataset(Dataset):
    """A :class:`Split` with a transform; randomness seeded per (seed, epoch, index).

    An unreadable file met while decoding lazily yields ``(None, path)`` instead of a
    sample: :func:`collate_skipping` drops it from its batch and reports its path, so the
    run lists it in ``skipped_images.txt`` and no other sample is repeated in its place
    (``strict=True`` raises instead).
    """

    def __init__(
        self, split: Split, transform: v2.Compose, seed: int = 0, strict: bool = False
    ) -> None:
        self.split = split
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.strict = strict

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int | str]:
        if self.split.images is not None:
            image = self.split.images[index]
        else:
            assert self.split.files is not None
            try:
                image = read_image(self.split.files[index])
            except BadImageError:
                if self.strict:
                    raise
                return None, self.split.files[index]
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 100_000_007 + index
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed % (1 << 63))
            tensor = self.transform(image)
        return tensor, int(self.split.labels[index])


@dataclass
class Batch:
    """A collated batch: images, labels, and the files that could not be read."""

    images: torch.Tensor
    targets: torch.Tensor
    skipped: list[str]

    def __iter__(self):  # (images, targets) unpacking, as with the default collate
        return iter((self.images, self.targets))


def collate_skipping(samples: list[tuple[torch.Tensor | None, int | str]]) -> Batch:
    """Stack the readable samples; name the unreadable ones (see :class:`ImageDataset`)."""
    good = [(x, y) for x, y in samples if x is not None]
    skipped = [str(y) for x, y in samples if x is None]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images = torch.stack([x for x, _ in good])
    targets = torch.tensor([int(y) for _, y in good], dtype=torch.long)
    return Batch(images, targets, skipped)


def batch_mixer(mixup: float, cutmix: float, num_classes: int) -> v2.Transform | None:
    """Batch-level mixup and/or cutmix (torchvision v2), one of the two per batch when both
    are on; the targets become class probabilities (soft targets). ``None`` when off."""
    mixers: list[v2.Transform] = []
    if mixup > 0:
        mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def balanced_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` indices with (as near as possible) equal numbers per class, fixed by seed."""
    if count < 1:
        raise GhostnetError(f"a subset must hold >= 1 image, got {count}")
    classes = torch.unique(labels).tolist()
    generator = torch.Generator().manual_seed(seed)
    per_class = [
        count // len(classes) + (1 if i < count % len(classes) else 0) for i in range(len(classes))
    ]
    chosen = []
    for cls, want in zip(classes, per_class):
        members = torch.nonzero(labels == cls).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        chosen.append(order[:want])
    return torch.sort(torch.cat(chosen)).values


def load_images_for_prediction(inputs: Sequence[str]) -> tuple[list[str], list[torch.Tensor]]:
    """Expand files and folders into (paths, decoded images); bad files give one clear line."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise GhostnetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise GhostnetError(f"image not found: {path}")
    return [str(p) for p in paths], [read_image(p) for p in paths]


def sample_image_files(root: str | os.PathLike, count: int, seed: int = 0) -> list[Path]:
    """``count`` image files under ``root`` (its test/ or val/ split if it has one), spread
    evenly over the class subfolders and fixed by ``seed``."""
    path = Path(root)
    if not path.exists():
        raise GhostnetError(f"image folder not found: {path}")
    if path.is_file():
        return [path]
    for split in ("test", "val"):
        if (path / split).is_dir():
            path = path / split
            break
    groups: dict[str, list[Path]] = {}
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
            relative = file.relative_to(path)
            groups.setdefault(relative.parts[0] if len(relative.parts) > 1 else "", []).append(file)
    if not groups:
        raise GhostnetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {path}")
    generator = torch.Generator().manual_seed(seed)
    shuffled = [
        [files[i] for i in torch.randperm(len(files), generator=generator).tolist()]
        for files in groups.values()
    ]
    chosen: list[Path] = []
    while len(chosen) < count and any(shuffled):
        for files in shuffled:  # round robin over classes
            if files and len(chosen) < count:
                chosen.append(files.pop())
    return chosen


def calibration_images(
    source: Split | str | os.PathLike,
    preset: Preset,
    count: int,
    seed: int = 0,
    *,
    minimum: int = 1,
) -> torch.Tensor:
    """The one calibration loader (compress's inherited fits, BN re-estimation, INT8
    ranges): ``count`` class-balanced images prepared by the model's eval transform, as
    one (N, C, H, W) tensor.

    ``source`` is a :class:`Split` (compress passes its *training* split: the test split is
    what the result is measured on) or a folder (its test/ or val/ split if it has one).
    Unreadable images are skipped with one warning; fewer than ``minimum`` readable is one
    clear line."""
    if count < minimum:
        raise GhostnetError(f"--calibration-images must be >= {minimum}, got {count}")
    transform = build_transform(preset, train=False)
    images: list[torch.Tensor] = []
    bad: list[str] = []
    if isinstance(source, Split):
        if len(source) < count:
            raise GhostnetError(
                f"--calibration-images {count}: the training split has only {len(source)} "
                "images; ask for fewer"
            )
        dataset = ImageDataset(
            source.subset(balanced_subset(source.labels, count, seed)), transform
        )
        for index in range(len(dataset)):
            image, label = dataset[index]
            if image is None:
                bad.append(str(label))
            else:
                images.append(image)
        where = f"the {source.name} split"
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise GhostnetError(f"--calibration {folder}: not a folder of images")
        for file in sample_image_files(folder, count, seed):
            try:
                images.append(transform(read_image(file)))
            except (BadImageError, OSError):
                bad.append(str(file))
        where = f"--calibration {folder}"
    if len(images) < minimum:
        raise GhostnetError(
            f"{where}: only {len(images)} of {len(images) + len(bad)} calibration images "
            f"could be read (first unreadable: {bad[0] if bad else '-'}); need >= {minimum} "
            "real images like those the model will see"
        )
    if bad:
        log.warning("calibration: skipped %d unreadable images (first: %s)", len(bad), bad[0])
    return torch.stack(images)

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ghostnet import GhostnetError
from ghostnet.data import (
    BadImageError,
    ImageDataset,
    _image_folder_split,
    balanced_subset,
    build_transform,
    choose_preset,
    collate_skipping,
    open_data,
    read_image,
)

from .imagegen import make_image_folder


@pytest.fixture(autouse=True)
def _fresh_cache():
    _image_folder_split.cache_clear()


def _save(path, mode, size=(8, 6)):
    arr = np.random.default_rng(0).integers(0, 255, size=(size[1], size[0], 4), dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray(arr[:, :, 0].astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(arr, "RGBA").convert(mode).save(path)
    return path


@pytest.mark.parametrize(
    "mode, suffix",
    [
        ("L", ".png"),
        ("RGBA", ".png"),
        ("P", ".png"),
        ("CMYK", ".jpg"),
        ("I;16", ".png"),
        ("RGB", ".bmp"),
    ],
)
def test_read_image_modes(tmp_path, mode, suffix):
    t = read_image(_save(tmp_path / f"x{suffix}", mode))
    assert t.shape == (3, 6, 8) and t.dtype == torch.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(path)
    assert read_image(path)[0, 0, 0].item() == 128


@pytest.mark.parametrize("content, reason", [(b"", "0 bytes"), (b"not an image", "readable")])
def test_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason):
        read_image(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BadImageError, match=r"t\.jpg"):
        read_image(path)


def test_image_folder_in_memory(tmp_path):
    root = make_image_folder(tmp_path, classes=3, per_class=5, size=16)
    source = open_data(str(root))
    assert source.classes == ["class_0", "class_1", "class_2"]
    assert source.train.images.shape == (15, 3, 16, 16) and source.train.files is None
    assert len(source.eval) == 12


def test_bad_images_skipped_once_with_names(tmp_path, caplog):
    root = make_image_folder(tmp_path, classes=2, per_class=4, size=16)
    (root / "train" / "class_0" / "broken.jpg").write_bytes(b"garbage")
    (root / "train" / "class_1" / "empty.png").write_bytes(b"")
    (root / "train" / "class_1" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        source = open_data(str(root))
    assert len(source.train) == 8
    assert len(source.train.skipped) == 2
    assert "skipping 2 unreadable image(s)" in caplog.text and "broken.jpg" in caplog.text
    assert "non-image file" in caplog.text and "notes.txt" in caplog.text
    _image_folder_split.cache_clear()
    with pytest.raises(BadImageError, match="2 unreadable"):
        open_data(str(root), strict=True)


def test_lazy_dataset_drops_bad_file_from_its_batch(tmp_path):
    """An unreadable file read lazily is dropped from its batch and named; no other sample
    is repeated in its place."""
    root = make_image_folder(tmp_path, classes=2, per_class=3, size=16)
    bad = root / "train" / "class_0" / "0000.png"
    bad.write_bytes(b"broken")
    source = open_data(str(root), in_memory="never")
    assert source.train.files is not None
    preset = choose_preset("cifar", source.train.image_size, 16)
    dataset = ImageDataset(source.train, build_transform(preset, True))
    batch = collate_skipping([dataset[i] for i in range(len(dataset))])
    assert batch.skipped == [str(bad)]
    assert batch.images.shape == (5, 3, 16, 16) and batch.targets.tolist() == [0, 0, 1, 1, 1]
    strict = ImageDataset(source.train, build_transform(preset, True), strict=True)
    with pytest.raises(BadImageError):
        strict[0]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "does not exist"),
        ("no_train", "no train/ folder"),
        ("no_test", "no test/ or val/"),
        ("empty_class", "has no images"),
        ("no_classes", "no class subfolders"),
        ("class_mismatch", "different class folders"),
        ("file", "must be a folder"),
    ],
)
def test_data_errors(tmp_path, breakage, message):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=8)
    target = str(root)
    if breakage == "missing":
        target = str(tmp_path / "nope")
    elif breakage == "no_train":
        shutil.rmtree(root / "train")
    elif breakage == "no_test":
        shutil.rmtree(root / "test")
    elif breakage == "empty_class":
        (root / "train" / "class_9").mkdir()
        (root / "test" / "class_9").mkdir()
    elif breakage == "no_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
    elif breakage == "class_mismatch":
        shutil.copytree(root / "train" / "class_0", root / "train" / "class_x")
    elif breakage == "file":
        target = str(root / "train" / "class_0" / "0000.png")
    with pytest.raises(GhostnetError, match=message):
        open_data(target)


def test_cifar_word_offline_gives_local_path_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("GHOSTNET_CACHE", str(tmp_path))
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(GhostnetError, match="point --data at"):
        open_data("cifar10")


def test_cifar_python_batches_folder(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # torchvision checks the official MD5s: a folder with other files is reported clearly
    with pytest.raises(GhostnetError, match="incomplete or corrupt"):
        open_data(str(folder))


def test_balanced_subset_is_balanced_and_seeded():
    labels = torch.arange(10).repeat_interleave(50)
    a = balanced_subset(labels, 103, seed=1)
    assert len(a) == 103
    counts = torch.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(a, balanced_subset(labels, 103, seed=1))
    assert not torch.equal(a, balanced_subset(labels, 103, seed=2))


def test_augmentation_is_seeded_per_sample(tmp_path):
    root = make_image_folder(tmp_path, classes=2, per_class=3, size=16)
    source = open_data(str(root))
    preset = choose_preset("auto", source.train.image_size)
    assert preset.name == "cifar" and preset.input_size == 16
    ds = ImageDataset(source.train, build_transform(preset, True), seed=4)
    ds.set_epoch(2)
    first = ds[1][0]
    torch.rand(100)  # global RNG use elsewhere must not matter
    assert torch.equal(first, ds[1][0])
    ds.set_epoch(3)
    assert not torch.equal(first, ds[1][0])


@pytest.mark.parametrize("size", [16, 80])  # the cifar and the imagenet preset
def test_augment_flip_and_none_prepare_training_images_as_evaluation_ones(tmp_path, size):
    root = make_image_folder(tmp_path, classes=2, per_class=4, size=size)
    source = open_data(str(root), in_memory="never")
    preset = choose_preset("auto", source.train.image_size, 64 if size == 80 else None)
    plain = ImageDataset(source.train, build_transform(preset, False))
    none = ImageDataset(source.train, build_transform(preset, True, augment="none"), seed=1)
    flip = ImageDataset(source.train, build_transform(preset, True, augment="flip"), seed=1)
    crop = ImageDataset(source.train, build_transform(preset, True), seed=1)
    flipped = cropped = 0
    for epoch in range(4):
        for ds in (none, flip, crop):
            ds.set_epoch(epoch)
        for i in range(len(plain)):
            image = plain[i][0]
            assert torch.equal(none[i][0], image)
            got = flip[i][0]
            assert torch.equal(got, image) or torch.equal(got, image.flip(-1))
            flipped += not torch.equal(got, image)
            c = crop[i][0]
            cropped += not (torch.equal(c, image) or torch.equal(c, image.flip(-1)))
    assert 0 < flipped < 4 * len(plain)  # random flips, not always and not never
    assert cropped > 0  # the default still crops
    with pytest.raises(GhostnetError, match="augment must be one of crop-flip, flip, none"):
        build_transform(preset, True, augment="crops")


def test_imagenet_preset_sizes(tmp_path):
    root = make_image_folder(tmp_path, classes=2, per_class=2, size=80)
    source = open_data(str(root), in_memory="never")
    preset = choose_preset("auto", source.train.image_size, 64)
    assert preset.name == "imagenet"
    ds = ImageDataset(source.eval, build_transform(preset, False))
    assert ds[0][0].shape == (3, 64, 64)


@pytest.mark.data
def test_real_cifar10(cifar10_path):
    source = open_data(str(cifar10_path))
    assert len(source.train) == 50000 and len(source.eval) == 10000
    assert source.classes[:3] == ["airplane", "automobile", "bird"]
    assert source.train.images.shape == (50000, 3, 32, 32)
    assert torch.bincount(source.eval.labels).tolist() == [1000] * 10


def test_one_odd_image_does_not_change_the_preset(tmp_path, caplog):
    """A 224 px image among 32 px ones: the set stays in memory at 32 px (the majority), the
    odd file is resized, and one warning counts it."""
    root = make_image_folder(tmp_path, classes=2, per_class=6, size=32)
    Image.new("RGB", (224, 224), (200, 10, 10)).save(root / "train" / "class_0" / "0000.png")
    _image_folder_split.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        source = open_data(str(root))
    assert source.train.images is not None and source.train.image_size == (32, 32)
    assert choose_preset("auto", source.train.image_size).name == "cifar"
    warnings = [r.getMessage() for r in caplog.records if "not 32x32" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 12 images" in warnings[0]


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored landscape with EXIF orientation 6 (rotate 90 degrees) reads portrait."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the stored image's left
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.png", exif=exif)
    tensor = read_image(tmp_path / "rotated.png")
    assert tensor.shape == (3, 40, 20)  # portrait, as a viewer shows it
    assert tensor[0, :10, :].float().mean() > 200  # the red band is now on top


def test_decompression_bomb_is_one_clear_error(tmp_path):
    Image.new("1", (20000, 10000)).save(tmp_path / "bomb.png")  # 2e8 pixels
    with pytest.raises(BadImageError, match=r"bomb\.png: image too large to decode safely"):
        read_image(tmp_path / "bomb.png")

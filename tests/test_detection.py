"""Detection: detectors of each kind train a step and export, COCO data with bad entries,
the CIFAR detection generator, and a tiny fit with exact resume."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from ghostnet.config import TrainConfig
from ghostnet.detection import KINDS, create_detector
from ghostnet.detection.data import DetectionDataset, open_split
from ghostnet.detection.evaluate import detector_from_checkpoint
from ghostnet.detection.synth import make_cifar_detection
from ghostnet.detection.tools import export_dense
from ghostnet.errors import GhostnetError
from ghostnet.train import fit

from .imagegen import make_image_folder, write_coco

BACKBONE = "resnet20_cifar"  # small and quick to trace; levels at 1/1, 1/2, 1/4
SIZE = 64


@pytest.mark.slow  # four detectors, each exported and checked in ONNX Runtime
@pytest.mark.parametrize("kind", KINDS)
def test_detector_trains_and_exports(kind, tmp_path):
    model = create_detector(kind, BACKBONE, num_classes=2, image_size=SIZE, fpn_channels=64)
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]
    losses = model.train()(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.body")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # reaches the backbone
    out = model.eval()(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    report = export_dense(model, tmp_path / f"{kind}.onnx", SIZE)
    assert report["max_abs_diff"] < 1e-4


def test_ghostified_torchvision_backbone():
    model = create_detector(
        "fcos", "torchvision:mobilenet_v3_small", 2, ghostify={"ratio": 2}, image_size=SIZE
    )
    body = model.backbone.body
    assert any(type(m).__name__ == "GhostConv2d" for m in body.modules())
    assert body.feature_info.reduction() == [8, 16, 32]


def test_bad_entries_are_skipped_and_named(tmp_path, caplog):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train2017.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"] = [50, 50, 40, 40]  # outside the 64x64 image
    coco["annotations"][1]["category_id"] = 99  # unknown category
    coco["images"].append({"id": 100, "file_name": "gone.png", "width": 64, "height": 64})
    path.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger="ghostnet"):
        split = open_split(root, "train")
    text = caplog.text
    assert "gone.png (missing file)" in text
    assert "unknown category id 99" in text
    assert "outside the 64x64 image" in text
    assert 100 not in split.image_ids and len(split.skipped) == 3
    # a file that stops decoding mid-run is replaced, named once, never raised
    (root / "train2017" / "0.png").write_bytes(b"not a png")
    dataset = DetectionDataset(split)
    image, target = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and int(target["image_id"]) != 1
    assert dataset.bad == [str(root / "train2017" / "0.png")]


def test_empty_annotation_list_is_one_line(tmp_path):
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train2017.json"
    coco = json.loads(path.read_text())
    coco["annotations"] = []
    path.write_text(json.dumps(coco))
    with pytest.raises(GhostnetError, match="no usable annotation"):
        open_split(root, "train")
    path.write_text("{not json")
    with pytest.raises(GhostnetError, match="not a COCO annotation file"):
        open_split(root, "train")


def test_cifar_detection_set_is_deterministic(tmp_path):
    cifar = make_image_folder(tmp_path / "cifar", classes=3, per_class=4, size=32)
    a = make_cifar_detection(cifar, tmp_path / "a", train=4, val=2, seed=3)
    make_cifar_detection(cifar, tmp_path / "b", train=4, val=2, seed=3)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        ja = (tmp_path / "a" / "annotations" / name).read_text()
        assert ja == (tmp_path / "b" / "annotations" / name).read_text()
    coco = json.loads((tmp_path / "a" / "annotations" / "instances_train2017.json").read_text())
    assert a["train_images"] == 4 and 4 <= a["train_objects"] <= 16
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256 and 16 <= w <= 64
    split = open_split(tmp_path / "a", "val")  # readable by the training data path
    assert split.classes == ["class_0", "class_1", "class_2"]


def _config(root: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        model=BACKBONE,
        data=str(root),
        out=str(out),
        task="detection",
        detector="fasterrcnn",
        epochs=2,
        batch_size=2,
        lr=0.005,
        opt="sgd",
        device="cpu",
        input_size=SIZE,
        quiet=True,
    )


@pytest.mark.slow  # three short training runs
def test_fit_detection_resumes_exactly(tmp_path, caplog):
    root = write_coco(tmp_path / "coco", images=4)
    loud = dataclasses.replace(_config(root, tmp_path / "full"), quiet=False, log_every=1)
    with caplog.at_level(logging.INFO, logger="ghostnet"):
        full = fit(loud)
    assert full["status"] == "finished"
    # progress lines off a terminal: every --log-every steps, with the loss terms and img/s
    steps = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert len(steps) == 4 and "epoch 2/2 step 2/2" in steps[-1] and "img/s" in steps[-1]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert {"mAP", "mAP50", "per_class_AP", "agnostic_mAP", "agnostic_mAP50"} <= set(
        summary["final"]
    )
    assert set(summary["final"]["per_class_AP"]) == {"red", "green"}

    stopped = fit(_config(root, tmp_path / "cut"), max_steps=3)  # mid-epoch 2
    assert stopped["status"] == "stopped"
    fit(_config(root, tmp_path / "cut"), resume=tmp_path / "cut" / "last.pt")
    a, uncut = detector_from_checkpoint(tmp_path / "full" / "last.pt")
    b, checkpoint = detector_from_checkpoint(tmp_path / "cut" / "last.pt")
    assert checkpoint["task"] == "detection" and checkpoint["epoch"] == 2
    # the epoch cut in two reports the same mean losses (and mAP) as the uncut one
    timing = {"train_images_per_s", "epoch_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in checkpoint["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in uncut["history"]
    ]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_light_fcos_head_is_rebuilt_from_its_checkpoint(tmp_path):
    """--fpn-channels / --head-convs travel in the checkpoint's detector spec, so eval and
    resume rebuild the same light head; a spec written before they existed means FCOS's 4."""
    from ghostnet.detection.models import DetectorSpec

    root = write_coco(tmp_path / "coco", images=4)
    config = dataclasses.replace(
        _config(root, tmp_path / "run"), detector="fcos", epochs=1, fpn_channels=32, head_convs=2
    )
    fit(config)
    model, checkpoint = detector_from_checkpoint(tmp_path / "run" / "last.pt")
    tower = model.head.classification_head.conv
    assert sum(isinstance(m, torch.nn.Conv2d) for m in tower) == 2
    assert tower[0].out_channels == 32 and model.backbone.out_channels == 32
    assert checkpoint["detector"]["head_convs"] == 2
    old = {k: v for k, v in checkpoint["detector"].items() if k != "head_convs"}
    default = DetectorSpec.from_dict({**old, "fpn_channels": 32}).build()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in default.head.classification_head.conv) == 4


def test_max_steps_at_an_epoch_end_still_scores_that_epoch(tmp_path):
    """A step budget that ends on an epoch boundary logs that epoch's row (and, on the
    last epoch, finishes the run with summary.json) instead of stopping just before."""
    root = write_coco(tmp_path / "coco", images=4)  # 2 steps an epoch, 2 epochs
    config = _config(root, tmp_path / "run")
    first = fit(config, max_steps=2)
    assert first["status"] == "stopped"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped"
    second = fit(config, resume=tmp_path / "run" / "last.pt", max_steps=4)
    assert second["status"] == "finished"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    _, checkpoint = detector_from_checkpoint(tmp_path / "run" / "last.pt")
    assert [row["epoch"] for row in checkpoint["history"]] == [1, 2]


def test_resume_with_more_epochs_replans_the_schedule(tmp_path):
    """--resume with a new --epochs continues on a cosine planned for the new length (not
    the old cosine run past its end, which climbs back up); another model is refused."""
    root = write_coco(tmp_path / "coco", images=4)  # 2 steps an epoch
    config = dataclasses.replace(_config(root, tmp_path / "run"), epochs=1)
    fit(config)
    longer = dataclasses.replace(config, epochs=2)
    fit(longer, resume=tmp_path / "run" / "last.pt")
    _, checkpoint = detector_from_checkpoint(tmp_path / "run" / "last.pt")
    lrs = [row["lr"] for row in checkpoint["history"]]
    # epoch 1 ran on the 1-epoch plan (LR 0 at its end), epoch 2 on the 2-epoch plan from
    # step 2 (0 at step 4); the old plan run on past its end would be back at the peak
    assert lrs[0] == pytest.approx(0.0, abs=1e-9) and lrs[1] == pytest.approx(0.0, abs=1e-9)
    assert checkpoint["config"]["epochs"] == 2
    other = dataclasses.replace(longer, model="vgg16_cifar", epochs=3)
    with pytest.raises(GhostnetError, match="--model"):
        fit(other, resume=tmp_path / "run" / "last.pt")


@pytest.mark.slow
def test_train_cli_task_detection(tmp_path, capsys, cifar10_path):
    """`ghostnet train --task detection` trains through the one loop and refuses to write
    over the run it made."""
    from ghostnet.cli import main
    from ghostnet.detection.synth import make_cifar_detection

    data = tmp_path / "det"
    make_cifar_detection(cifar10_path, data, train=8, val=4, seed=0)
    argv = [
        "train",
        "--task",
        "detection",
        "--detector",
        "fcos",
        "--model",
        "resnet20_cifar",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--input-size",
        "64",  # the loop and the CLI are under test, not the detector at its full size
        "--quiet",
    ]
    assert main(argv) == 0
    assert "fcos on resnet20_cifar: mAP" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").exists()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_class_agnostic_map_separates_wrong_classes_from_missed_boxes(tmp_path):
    """Every true box found with the wrong class: mAP 0, class-agnostic mAP 1."""
    from ghostnet.detection.evaluate import evaluate_detector

    split = open_split(write_coco(tmp_path / "coco", images=3), "val")
    dataset = DetectionDataset(split)
    targets = [dataset[i][1] for i in range(len(dataset))]

    class Oracle(torch.nn.Module):
        def __init__(self, swap: bool) -> None:
            super().__init__()
            self.swap, self.next = swap, 0

        def forward(self, images):
            outs = []
            for _ in images:
                t = targets[self.next]
                self.next += 1
                labels = 3 - t["labels"] if self.swap else t["labels"]  # 1 <-> 2
                outs.append(
                    {"boxes": t["boxes"], "scores": torch.ones(len(labels)), "labels": labels}
                )
            return outs

    right = evaluate_detector(Oracle(False), split, torch.device("cpu"), batch_size=2)
    wrong = evaluate_detector(Oracle(True), split, torch.device("cpu"), batch_size=2)
    assert right["mAP50"] == pytest.approx(1.0) and right["agnostic_mAP50"] == pytest.approx(1.0)
    assert wrong["mAP50"] == 0.0 and wrong["agnostic_mAP"] == pytest.approx(1.0)


def test_init_weights_start_backbone_or_whole_detector(tmp_path):
    """A classifier's weights (its 10-class head left out) start the detector's backbone;
    a detection checkpoint's weights start the whole detector."""
    from ghostnet.checkpoint import FORMAT
    from ghostnet.detection.evaluate import load_detector_init
    from ghostnet.models import create_model

    torch.manual_seed(1)
    classifier = create_model(BACKBONE, num_classes=10)
    for p in classifier.parameters():  # far from any fresh init
        p.data.uniform_(-1, 1)
    torch.save(classifier.state_dict(), tmp_path / "cls.pt")
    detector = create_detector("fcos", BACKBONE, num_classes=2, image_size=SIZE)
    head_before = {k: v.clone() for k, v in detector.head.state_dict().items()}
    assert load_detector_init(detector, str(tmp_path / "cls.pt")) == "backbone"
    body = detector.backbone.body.body.state_dict()
    cls_state = classifier.state_dict()
    assert body and all(torch.equal(v, cls_state[k]) for k, v in body.items())
    for k, v in detector.head.state_dict().items():  # the rest is untouched
        assert torch.equal(v, head_before[k]), k

    torch.save(
        {"format": FORMAT, "task": "detection", "model": detector.state_dict()}, tmp_path / "det.pt"
    )
    fresh = create_detector("fcos", BACKBONE, num_classes=2, image_size=SIZE)
    assert load_detector_init(fresh, str(tmp_path / "det.pt")) == "detector"
    for (k, v), w in zip(fresh.state_dict().items(), detector.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_bad_detection_data_or_model_leaves_no_folder(tmp_path, capsys):
    """Data, model and optimizer are checked before the run folder is made."""
    from ghostnet.cli import main
    from ghostnet.models import create_model

    root = write_coco(tmp_path / "coco")
    other = tmp_path / "vgg.pt"
    torch.save(create_model("vgg16_cifar").state_dict(), other)
    common = ["train", "--task", "detection", "--detector", "fcos", "--epochs", "1"]
    cases = {
        "missing_json": (
            ["--model", "resnet20_cifar", "--data", str(tmp_path / "nothing")],
            "instances_train2017.json",
        ),
        "unknown_model": (["--model", "no_such_net", "--data", str(root)], "no_such_net"),
        "init_of_another_model": (
            ["--model", "resnet20_cifar", "--data", str(root), "--init-weights", str(other)],
            "lack",
        ),
        "init_missing": (
            ["--model", "resnet20_cifar", "--data", str(root), "--init-weights", "nope.pt"],
            "nope.pt",
        ),
        "head_convs_of_retinanet": (
            [
                "--model",
                "resnet20_cifar",
                "--data",
                str(root),
                "--detector",
                "retinanet",
                "--head-convs",
                "2",
            ],
            "--head-convs",
        ),
        "fpn_channels_not_for_groupnorm": (
            ["--model", "resnet20_cifar", "--data", str(root), "--fpn-channels", "40"],
            "--fpn-channels",
        ),
    }
    for name, (extra, needle) in cases.items():
        out = tmp_path / name
        assert main([*common, *extra, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (name, err)
        assert not out.exists(), name

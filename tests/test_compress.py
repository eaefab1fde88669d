"""ghostnet compress: inherit a trained model's weights into a Ghost model, then distil."""

import json

import pytest
import torch

from ghostnet import GhostConv2d, create_model, ghostify
from ghostnet.checkpoint import atomic_save, model_from_checkpoint
from ghostnet.cli import main
from ghostnet.compress import (
    CompressOptions,
    block_names,
    compress,
    reestimate_bn,
    training_checkpoint,
)
from ghostnet.data import choose_preset
from ghostnet.models import ModelSpec
from ghostnet.weights import save_weights

from .imagegen import make_image_folder

CLASSES = ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Generated 16x16 data (3 classes) and a resnet20_cifar checkpoint in training format."""
    root = tmp_path_factory.mktemp("compress")
    data = make_image_folder(root / "data", classes=3, per_class=8, size=16, test_per_class=4)
    torch.manual_seed(0)
    spec = ModelSpec("resnet20_cifar", {"num_classes": 3})
    model = spec.build().eval()
    preset = choose_preset("cifar", (16, 16))
    checkpoint = atomic_save(
        training_checkpoint(model, spec, CLASSES, preset, {}), root / "run" / "best.pt"
    )
    return root, data, checkpoint, model


def _args(tiny, out, *extra):
    root, data, checkpoint, _ = tiny
    return [
        "compress",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--out",
        str(root / out),
        "--calibration-images",
        "16",
        *extra,
    ]


@pytest.mark.slow  # > 20 s while the machine is loaded; ~1-10 s when quiet
def test_compress_cli_zero_epochs(tiny, capsys):
    root = tiny[0]
    assert main(_args(tiny, "c0", "--epochs", "0")) == 0
    printed = capsys.readouterr().out
    assert "inherited, 0 epochs" in printed and "layer3.2.conv2" in printed
    summary = json.loads((root / "c0" / "summary.json").read_text())
    assert summary["distilled"] is None
    assert summary["inherited"]["bn_images"] == 24  # all the training images there are
    assert summary["inherited"]["top1_bn_reestimated"] is not None
    assert summary["converted_layers"] == 18 and summary["calibration_images"] == 16
    original, inherited = summary["original"], summary["inherited"]
    assert inherited["params"] < original["params"] and inherited["macs"] < original["macs"]
    assert all(0 <= layer["mean_error"] <= 1 for layer in summary["layers"])
    assert [layer["intrinsic"] for layer in summary["layers"]][:2] == [8, 8]  # ceil(16/2)
    # inherited.pt is a training checkpoint: `ghostnet eval` reads it, same top-1
    evaluate = ["eval", "--checkpoint", inherited["checkpoint"], "--data", str(tiny[1])]
    assert main([*evaluate, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(inherited["top1"])
    model, _ = model_from_checkpoint(inherited["checkpoint"])
    assert isinstance(model.layer1[0].conv1, GhostConv2d) and model.layer1[0].conv1.inherited


def test_compress_refine_and_bn_choice_are_recorded(tiny):
    """--refine-steps: every refined layer's output error is recorded and never worse than
    the least-squares start; the BN re-estimate is kept or undone by the KL to the original
    on other training images, and inherited.pt holds the model that was chosen."""
    root = tiny[0]
    assert main(_args(tiny, "refined", "--epochs", "0", "--refine-steps", "10")) == 0
    summary = json.loads((root / "refined" / "summary.json").read_text())
    assert summary["refine_steps"] == 10
    for layer in summary["layers"]:
        before, after = layer["output_error_before_refine"], layer["output_error_after_refine"]
        assert before is not None and 0 <= after <= before
    inherited = summary["inherited"]
    kl_fitted, kl_bn = inherited["teacher_kl_fitted"], inherited["teacher_kl_bn_reestimated"]
    assert inherited["bn_reestimate_kept"] == (kl_bn < kl_fitted)
    model, _ = model_from_checkpoint(inherited["checkpoint"])
    bn = model.layer1[0].bn1
    if inherited["bn_reestimate_kept"]:  # re-estimated on the 24 images: cumulative average
        assert int(bn.num_batches_tracked) == 1
    else:
        assert int(bn.num_batches_tracked) == int(tiny[3].layer1[0].bn1.num_batches_tracked)


@pytest.mark.slow
def test_compress_distils_from_the_original(tiny):
    root = tiny[0]
    extra = ("--epochs", "1", "--batch-size", "8", "--kd-features", "blocks", "--augment", "flip")
    assert main(_args(tiny, "c1", *extra)) == 0
    summary = json.loads((root / "c1" / "summary.json").read_text())
    distilled = summary["distilled"]
    assert distilled["epochs"] == 1 and distilled["top1"] is not None
    blocks = [f"layer{stage}.{block}" for stage in (1, 2, 3) for block in range(3)]
    assert distilled["kd_features"] == ",".join(blocks)  # 'blocks': ResNet-20's nine
    run = json.loads((root / "c1" / "distill" / "summary.json").read_text())
    assert run["teacher"] == str(tiny[2]) and run["config"]["init_weights"].endswith("inherited.pt")
    assert run["config"]["ghostify"]["inherited"] is True
    assert run["config"]["augment"] == distilled["augment"] == "flip"


def test_compress_model_name_with_weights_file(tiny, tmp_path):
    """--model NAME --checkpoint WEIGHTS: a bare state_dict; the teacher checkpoint is written."""
    weights = save_weights(tiny[3], tmp_path / "w.safetensors")
    options = CompressOptions(
        data=str(tiny[1]),
        out=str(tmp_path / "c"),
        checkpoint=str(weights),
        model="resnet20_cifar",
        model_kwargs={"num_classes": 3},
        include=["layer3.*"],
        calibration_images=16,
        epochs=0,
        quiet=True,
    )
    summary = compress(options)
    assert summary["converted_layers"] == 6
    assert (tmp_path / "c" / "original.pt").is_file()  # the teacher, in training format


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--calibration-images", "3"], "--calibration-images must be >= 16, got 3"),
        (["--include", "nothing*"], "nothing to convert"),
        (["--calibration-images", "1000"], "the training split has only 24"),
        (["--epochs", "1", "--lr", "0"], "--lr must be > 0, got 0"),
        (["--ratio", "1"], "--ratio must be >= 2, got 1"),
        (["--kd-alpha", "1.5"], "--kd-alpha must be <= 1, got 1.5"),
        (["--bn-images", "5"], "--bn-images must be 0 (off) or >= 16"),
        (["--epochs", "1", "--kd-features", "stage*"], "matches no module"),
        (["--kd-feature-weight", "inf"], "--kd-feature-weight must be a finite number, got inf"),
    ],
)
def test_compress_errors_are_one_line(tiny, capsys, extra, fragment):
    try:
        code = main([*_args(tiny, "bad", "--epochs", "0"), *extra])
    except SystemExit as exc:  # argparse's own range checks
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in err
    assert not (tiny[0] / "bad" / "inherited.pt").exists()


def test_compress_flags_are_generated_from_compress_options():
    """Every CompressOptions field the CLI should set is a flag of that name, and a parsed
    command line gives exactly the options it names (the rest keep the options' defaults)."""
    import argparse
    import dataclasses

    from ghostnet.cli import build_parser
    from ghostnet.cli.common import given_options, option_flag_fields

    parser = build_parser()
    (compress_parser,) = [
        a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)
    ]
    flags = {o for a in compress_parser.choices["compress"]._actions for o in a.option_strings}
    names = [f.name for f in option_flag_fields(CompressOptions)]
    assert len(names) == 24  # every field but data, out, checkpoint, model, kwargs, quiet
    for name in names:
        assert "--" + name.replace("_", "-") in flags, name
    line = "compress --data d --out o --ratio 3 --no-skip-first --include a* --include b* "
    args = parser.parse_args([*line.split(), "--kd-alpha", "0.5", "--fit-on", "original"])
    given = given_options(args, CompressOptions)
    assert given == {
        "ratio": 3,
        "skip_first": False,
        "include": ["a*", "b*"],
        "kd_alpha": 0.5,
        "fit_on": "original",
    }
    options = CompressOptions(data="d", out="o", **given)
    defaults = CompressOptions(data="d", out="o")
    changed = {
        f.name
        for f in dataclasses.fields(CompressOptions)
        if getattr(options, f.name) != getattr(defaults, f.name)
    }
    assert changed == set(given)


def test_compress_refuses_wrong_classes_and_reused_out(tiny, tmp_path, capsys):
    checkpoint = tiny[2]
    other = make_image_folder(tmp_path / "other", classes=2, per_class=8, size=16)
    args = ["compress", "--checkpoint", str(checkpoint), "--data", str(other)]
    assert main([*args, "--out", str(tmp_path / "x"), "--epochs", "0"]) == 2
    assert "trained on 3 classes" in capsys.readouterr().err
    out = tmp_path / "used"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(_args(tiny, out, "--epochs", "0")) == 2
    assert "already holds a run (summary.json)" in capsys.readouterr().err


def test_block_names_are_the_blocks_that_hold_converted_convs():
    for name, expected in (
        ("mobilenetv2_cifar", [f"blocks.{i}" for i in range(17)] + ["head_conv"]),
        ("vgg16_cifar", None),
    ):
        model = ghostify(create_model(name), ratio=2)
        converted = [n for n, m in model.named_modules() if isinstance(m, GhostConv2d)]
        found = block_names(model, converted)
        if expected is None:  # VGG: the convs sit in the Sequential itself
            assert found == converted
        else:
            assert found == expected


def test_reestimate_bn_measures_the_statistics_again():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.1))
    model[1].running_mean.fill_(5.0)
    images = torch.randn(48, 3, 8, 8)  # three equal batches: each batch weighs the same
    assert reestimate_bn(model, images, batch_size=16) == 1
    with torch.no_grad():
        maps = model[0](images)
    assert torch.allclose(model[1].running_mean, maps.mean(dim=(0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_compress_owns_its_out_folder(tiny, capsys, monkeypatch):
    """While a compress runs, a second compress and a training on its --out refuse in one
    line naming it (pid, host); the folder it owns gets nothing from them."""
    import os
    import socket
    import threading

    import ghostnet.compress as compress_module

    root, data, _, _ = tiny
    out = root / "owned"
    started, release = threading.Event(), threading.Event()
    real = compress_module.calibration_images

    def held_calibration(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(compress_module, "calibration_images", held_calibration)
    codes = []
    first = threading.Thread(
        target=lambda: codes.append(main(_args(tiny, "owned", "--epochs", "0", "--bn-images", "0")))
    )
    first.start()
    try:
        assert started.wait(60)
        owner = f"{out} is in use by another run (pid {os.getpid()} on {socket.gethostname()} "
        again = _args(tiny, "owned", "--epochs", "0")
        train = ["train", "--model", "resnet20_cifar", "--data", str(data), "--out", str(out)]
        for argv in (again, [*train, "--epochs", "1"]):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and owner in err, err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        release.set()
        first.join(120)
    assert codes == [0]
    assert (out / "summary.json").is_file() and (out / ".lock").read_text() == ""


def test_compress_refuses_a_locked_folder_and_leaves_it(tiny, capsys):
    from ghostnet.safe_io import RunFolderLock

    out = tiny[0] / "locked"
    with RunFolderLock(out):
        assert main(_args(tiny, "locked", "--epochs", "0")) == 2
    err = capsys.readouterr().err
    assert "is in use by another run (pid" in err and "choose another --out" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_failed_compress_removes_the_folder_it_created(tiny, capsys):
    out = tiny[0] / "failed"
    args = _args(tiny, "failed", "--epochs", "0")
    args[args.index("--data") + 1] = str(tiny[0] / "no-such-data")
    assert main(args) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()

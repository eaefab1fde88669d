"""The ghostnet command: help, JSON outputs, a train -> eval -> predict round trip, and one
clear line (no traceback) for each kind of bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from ghostnet.cli import COMMANDS, main

from .imagegen import make_image_folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    with pytest.raises(SystemExit) as info:
        main(["--help"] if command is None else [command, "--help"])
    assert info.value.code == 0


def test_profile_json_and_ghostify(capsys):
    code, out, _ = run_cli(capsys, "profile", "ghostnet_100", "--json")
    data = json.loads(out)
    assert code == 0 and data["params"] == 5182508 and data["macs"] == 141150512
    code, out, _ = run_cli(capsys, "profile", "resnet56_cifar", "--ghostify", "--json")
    assert json.loads(out)["macs"] < 70e6
    code, out, _ = run_cli(
        capsys,
        "profile",
        "torchvision:resnet18",
        "--ghostify",
        "--ratio",
        "4",
        "--input-size",
        "3,64,64",
    )
    assert code == 0 and "total" in out


def test_module_compare(capsys):
    code, out, _ = run_cli(
        capsys, "profile", "--module-compare", "--channels", "32", "--spatial", "8", "--json"
    )
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    assert {(r["kernel_size"], r["ratio"]) for r in rows} == {(1, 2), (1, 4), (3, 2), (3, 4)}


def test_models_and_paper_table(capsys):
    code, out, _ = run_cli(capsys, "models", "ghost*")
    skip = ("Also", "name ")  # the footer and the header line
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith(skip)]
    assert code == 0 and "ghost_resnet50" in names and all(n.startswith("ghost") for n in names)
    code, out, _ = run_cli(capsys, "paper-table", "--json")
    assert code == 0 and len(json.loads(out)) >= 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "data", classes=3, per_class=8, size=16)
    out = root / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "resnet20_cifar",
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--lr",
                "0.05",
                "--quiet",
            ]
        )
        == 0
    )
    return data, out


def test_train_eval_predict(capsys, trained):
    data, out = trained
    code, text, _ = run_cli(
        capsys, "eval", "--checkpoint", str(out / "best.pt"), "--data", str(data), "--json"
    )
    result = json.loads(text)
    assert code == 0 and result["count"] == 12 and len(result["per_class"]) == 3
    code, text, _ = run_cli(
        capsys, "eval", "--checkpoint", str(out / "last.pt"), "--data", str(data)
    )
    assert code == 0 and "top-1" in text and "class_2" in text
    code, text, _ = run_cli(
        capsys,
        "predict",
        "--checkpoint",
        str(out / "last.pt"),
        str(data / "test" / "class_1"),
        "--topk",
        "2",
        "--json",
    )
    predictions = json.loads(text)
    assert code == 0 and len(predictions) == 4
    assert all(
        len(p["top"]) == 2 and p["top"][0]["class"].startswith("class_") for p in predictions
    )
    total = sum(t["probability"] for t in predictions[0]["top"])
    assert 0 < total <= 1.0 + 1e-6


def test_bad_inputs_are_one_line(capsys, trained, tmp_path):
    data, out = trained
    cases = [
        (
            [
                "train",
                "--model",
                "resnet20_cifar",
                "--data",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "o"),
            ],
            ["does not exist"],
        ),
        (
            ["train", "--model", "resnet_20", "--data", str(data), "--out", str(tmp_path / "o")],
            ["unknown model", "resnet20_cifar"],
        ),
        (
            ["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data)],
            ["not found"],
        ),
        (
            ["predict", "--checkpoint", str(out / "last.pt"), str(tmp_path / "nope.png")],
            ["image not found"],
        ),
        (["profile", "ghostnet_100", "--input-size", "1,224,224"], ["cannot run"]),
        (
            [
                "train",
                "--model",
                "resnet20_cifar",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--resume",
            ],
            ["no checkpoint"],
        ),
    ]
    for argv, fragments in cases:
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, *fragments)

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 10)
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(out / "last.pt"), str(bad))
    assert_one_line_error(code, err, "bad.jpg")

    state_dict = tmp_path / "plain.pt"
    import torch

    torch.save({"w": torch.zeros(1)}, state_dict)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(state_dict), "--data", str(data))
    assert_one_line_error(code, err, "not a ghostnet training checkpoint")

    other = make_image_folder(tmp_path / "four", classes=4, per_class=2, size=16)
    code, _, err = run_cli(
        capsys, "eval", "--checkpoint", str(out / "last.pt"), "--data", str(other)
    )
    assert_one_line_error(code, err, "same class folders")

    broken = tmp_path / "broken.pt"
    shutil.copy(out / "last.pt", broken)
    broken.write_bytes(broken.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(broken), str(data / "test"))
    assert_one_line_error(code, err, "truncated or corrupt")


@pytest.mark.data
@pytest.mark.slow
def test_short_training_on_real_cifar10(capsys, cifar10_path, tmp_path):
    """Two epochs on a 2,000-image subset of the real CIFAR-10 learn well above chance."""
    out = tmp_path / "real"
    code = main(
        [
            "train",
            "--model",
            "resnet20_cifar",
            "--data",
            str(cifar10_path),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--lr",
            "0.05",
            "--train-subset",
            "2000",
            "--eval-subset",
            "1000",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 2000 and summary["eval_images"] == 1000
    assert summary["top1"] > 20.0  # chance is 10%
    capsys.readouterr()
    code, text, _ = run_cli(
        capsys, "eval", "--checkpoint", str(out / "best.pt"), "--data", str(cifar10_path), "--json"
    )
    assert code == 0 and json.loads(text)["count"] == 10000

"""Trainer: exact resume after SIGKILL, DDP (gloo) vs one process, recipes, checkpoints."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ghostnet import GhostnetError
from ghostnet.checkpoint import atomic_save, read_checkpoint
from ghostnet.engine import RECIPES, TrainConfig, build_scheduler, config_from, fit

from .imagegen import make_image_folder

PYTHON = sys.executable


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "ghostnet",
        "train",
        "--model",
        "ghostnet_050",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "0.05",
        "--checkpoint-every",
        "1",
        "--ema",
        "0.9",
        "--seed",
        "3",
        "--quiet",
        *extra,
    ]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=16, size=32)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tiny_data, tmp_path):
    """GhostNet (dropout) + EMA, checkpoint every step: kill -9 at a random moment, resume."""
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(tiny_data, reference), check=True, env=_env(), capture_output=True)
    rng = random.Random()
    killed_at = None
    for attempt in range(4):
        run = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(
            _train_cmd(tiny_data, run),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5 / (attempt + 1)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and not (run / "summary.json").exists():
            killed_at = read_checkpoint(run / "last.pt")
            break
    assert killed_at is not None, "the run always finished before the kill"
    assert killed_at["epoch"] < 4
    subprocess.run(
        _train_cmd(tiny_data, run, "--resume"), check=True, env=_env(), capture_output=True
    )

    a, b = read_checkpoint(reference / "last.pt"), read_checkpoint(run / "last.pt")
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])
    drop = {"train_images_per_s", "epoch_s"}
    strip = [lambda h: {k: v for k, v in h.items() if k not in drop}]
    assert [strip[0](h) for h in a["history"]] == [strip[0](h) for h in b["history"]]
    rows = _csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_outputs_of_a_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    config = config_from(
        None,
        model="resnet20_cifar",
        data=str(tiny_data),
        out=str(out),
        epochs=2,
        batch_size=16,
        lr=0.05,
        quiet=True,
    )
    summary = fit(config)
    for key in (
        "top1",
        "top5",
        "params",
        "macs",
        "epochs",
        "train_images_per_s",
        "wall_s",
        "model",
    ):
        assert key in summary
    assert json.loads((out / "summary.json").read_text())["top1"] == summary["top1"]
    rows = _csv(out / "metrics.csv")
    assert len(rows) == 2 and float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)
    assert (out / "curves.png").stat().st_size > 1000
    ckpt = torch.load(out / "last.pt", weights_only=True)  # plain data only
    assert ckpt["classes"] == ["class_0", "class_1", "class_2"]
    assert ckpt["model_spec"]["kwargs"]["num_classes"] == 3
    assert (out / "best.pt").exists()
    # resuming a finished run changes nothing and still reports
    again = fit(config, resume=out / "last.pt")
    assert again["top1"] == summary["top1"]


def test_resume_with_other_model_or_data_is_refused(tiny_data, tmp_path):
    out = tmp_path / "run"
    fit(
        config_from(
            None,
            model="resnet20_cifar",
            data=str(tiny_data),
            out=str(out),
            epochs=1,
            batch_size=16,
            quiet=True,
        )
    )
    other = config_from(None, model="resnet32_cifar", data=str(tiny_data), out=str(out), epochs=1)
    with pytest.raises(GhostnetError, match="model='resnet20_cifar'"):
        fit(other, resume=out / "last.pt")
    elsewhere = make_image_folder(tmp_path / "other", classes=3, per_class=4)
    moved = config_from(None, model="resnet20_cifar", data=str(elsewhere), out=str(out), epochs=1)
    with pytest.raises(GhostnetError, match="data="):
        fit(moved, resume=out / "last.pt")


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tiny_data, tmp_path):
    """2 gloo processes x batch 8 vs 1 process x batch 16: the same samples per step and
    averaged gradients, so the losses agree to float rounding (stated tolerance: 1e-5
    relative). The model uses GroupNorm: with BatchNorm each process normalises over its own
    8 images (on CUDA --sync-bn makes them global), a real difference of the method."""
    pytest.importorskip("timm")
    common = [
        "--model",
        "timm:resnet18",
        "--model-kwarg",
        "norm_layer=groupnorm",
        "--data",
        str(tiny_data),
        "--epochs",
        "2",
        "--lr",
        "0.02",
        "--seed",
        "5",
        "--quiet",
    ]
    one = tmp_path / "one"
    subprocess.run(
        [PYTHON, "-m", "ghostnet", "train", *common, "--batch-size", "16", "--out", str(one)],
        check=True,
        env=_env(),
        capture_output=True,
    )
    two = tmp_path / "two"
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "ghostnet",
            "train",
            *common,
            "--batch-size",
            "8",
            "--out",
            str(two),
        ],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows_one = _csv(one / "metrics.csv")
    rows_two = _csv(two / "metrics.csv")
    assert len(rows_one) == len(rows_two) == 2
    for a, b in zip(rows_one, rows_two):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-5)
        assert float(b["eval_loss"]) == pytest.approx(float(a["eval_loss"]), rel=1e-5)
    assert float(rows_two[1]["train_loss"]) < float(rows_two[0]["train_loss"])  # it learns
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["eval_images"] == 12  # every eval sample counted exactly once


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    path = atomic_save({"a": torch.ones(2)}, tmp_path / "c.pt")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert list(tmp_path.iterdir()) == [path]


def test_recipes_and_overrides():
    config = config_from("paper-cifar", model="m", data="d", out="o", lr=0.05)
    assert config.lr == 0.05 and config.weight_decay == 1e-4 and config.milestones == [82, 123]
    assert config.recipe == "paper-cifar"
    assert set(RECIPES) >= {"paper-cifar", "cifar-fast"}
    with pytest.raises(GhostnetError, match="unknown recipe"):
        config_from("nope", model="m", data="d", out="o")


def _lrs(config: TrainConfig, steps_per_epoch: int = 10) -> list[float]:
    """The learning rate at every step of ``config``'s schedule."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    sched = build_scheduler(opt, config, steps_per_epoch)
    lrs = []
    for _ in range(config.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules():
    lrs = _lrs(TrainConfig("m", "d", "o", lr=0.1, sched="step", milestones=[2, 3], epochs=4))
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.001)
    lrs = _lrs(TrainConfig("m", "d", "o", lr=0.1, sched="cosine", warmup_epochs=1, epochs=4))
    assert lrs[0] < 0.001 and max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.002
    assert lrs.index(max(lrs)) == 10

"""The one training loop, for every task: exact resume after SIGKILL, 2 gloo processes
equal to 1 at the same global batch, a dead peer ends the job in bounded time, a refused
lock ends every rank, checksums catch a damaged checkpoint. Parametrised over tasks: a new
task adds its case to CASES."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ghostnet.checkpoint import read_checkpoint

from .imagegen import make_image_folder, write_coco, write_voc

PYTHON = sys.executable


@dataclass
class Case:
    """One task's tiny run: its data, its flags, and its steps per epoch."""

    make_data: Callable[[Path], Path]
    flags: list[str]
    steps_per_epoch: int
    ddp_flags: list[str]  # a model without batch statistics (2 processes == 1 exactly)


CASES = {
    "classification": Case(
        lambda root: make_image_folder(root, classes=3, per_class=16, size=32),
        ["--model", "ghostnet_050", "--epochs", "4", "--batch-size", "8", "--lr", "0.05"],
        6,  # ceil(48 / 8)
        ["--model", "timm:resnet18", "--model-kwarg", "norm_layer=groupnorm", "--lr", "0.02"],
    ),
    "detection": Case(
        lambda root: write_coco(root, images=6),
        [
            *("--task", "detection", "--detector", "fcos", "--model", "resnet20_cifar"),
            *("--input-size", "64", "--epochs", "2", "--batch-size", "2", "--lr", "0.005"),
            *("--fpn-channels", "32", "--head-convs", "1"),
        ],
        3,
        [
            *("--task", "detection", "--detector", "retinanet", "--input-size", "64"),
            *("--model", "timm:resnet18", "--model-kwarg", "norm_layer=groupnorm"),
            *("--fpn-channels", "32", "--lr", "0.002"),
        ],
    ),
    "segmentation": Case(
        lambda root: write_voc(root, count=6, size=(40, 40)),
        [
            *("--task", "segmentation", "--segmenter", "lraspp"),
            *("--model", "timm:mobilenetv3_small_050", "--input-size", "32"),
            *("--epochs", "2", "--batch-size", "2", "--lr", "0.01"),
        ],
        3,  # 6 images / 2
        [
            # LR-ASPP: no dropout in the head (FCN's and DeepLab's draw per process)
            *("--task", "segmentation", "--segmenter", "lraspp", "--input-size", "32"),
            *("--model", "timm:resnet18", "--model-kwarg", "norm_layer=groupnorm"),
            *("--output-stride", "16", "--lr", "0.01"),
        ],
    ),
}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **extra}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(data: Path, out: Path, *flags: str) -> list[str]:
    return [PYTHON, "-m", "ghostnet", "train", "--data", str(data), "--out", str(out), *flags]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _same_state(a: dict, b: dict) -> None:
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_sigkill_then_resume_is_bit_identical(task, tmp_path):
    """EMA, a checkpoint every step: the process SIGKILLs itself right after a step drawn
    from a seeded RNG (before that step's checkpoint), then resumes; the final state equals
    an uninterrupted run's bit for bit, and so do the metrics rows (timings aside)."""
    case = CASES[task]
    data = case.make_data(tmp_path / "data")
    flags = [*case.flags, "--checkpoint-every", "1", "--ema", "0.9", "--seed", "3", "--quiet"]
    reference = tmp_path / "reference"
    subprocess.run(_train(data, reference, *flags), check=True, env=_env(), capture_output=True)
    epochs = int(flags[flags.index("--epochs") + 1])
    kill_at = random.Random(11).randrange(2, epochs * case.steps_per_epoch - 1)
    run = tmp_path / "killed"
    proc = subprocess.run(
        _train(data, run, *flags),
        env=_env(GHOSTNET_KILL_AT_STEP=str(kill_at)),
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_checkpoint(run / "last.pt")["global_step"] == kill_at - 1  # its step was lost
    assert not (run / "summary.json").exists()
    resumed = subprocess.run(
        _train(data, run, *flags, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = read_checkpoint(reference / "last.pt"), read_checkpoint(run / "last.pt")
    assert a["task"] == b["task"] == task
    _same_state(a, b)
    timing = {"train_images_per_s", "epoch_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in b["history"]
    ]
    assert [int(r["epoch"]) for r in _csv(run / "metrics.csv")] == list(range(1, epochs + 1))


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_two_processes_match_one_process(task, tmp_path):
    """2 gloo processes x batch B vs 1 process x batch 2B: the same samples per step and
    averaged gradients, so the losses agree to float rounding (stated tolerance: 1e-5
    relative). The models use GroupNorm: with BatchNorm each process normalises over its
    own images (on CUDA --sync-bn makes them global), a real difference of the method."""
    pytest.importorskip("timm")
    case = CASES[task]
    data = case.make_data(tmp_path / "data")
    batch = 8 if task == "classification" else 1
    common = [*case.ddp_flags, "--epochs", "2", "--seed", "5", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        _train(data, one, *common, "--batch-size", str(2 * batch)),
        check=True,
        env=_env(),
        capture_output=True,
    )
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    train_args = _train(data, two, *common, "--batch-size", str(batch))[3:]
    result = subprocess.run(
        [*torchrun, "--master_port", str(_free_port()), "-m", "ghostnet", *train_args],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows_one, rows_two = _csv(one / "metrics.csv"), _csv(two / "metrics.csv")
    assert len(rows_one) == len(rows_two) == 2
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in a:
            if key.startswith("train_") and key != "train_images_per_s":
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), key
            if key.startswith("eval_"):
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), key
    assert float(rows_two[1]["train_loss"]) < float(rows_two[0]["train_loss"])  # it learns
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["task"] == task


def _ranks(data: Path, out: Path, flags: list[str], env: dict[str, str]) -> list[subprocess.Popen]:
    """Two ranks of a gloo job started by hand (torchrun would end the survivor itself)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        rank_env = {
            **env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                _train(data, out, *flags),
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


@pytest.mark.slow
def test_dead_peer_ends_the_job_in_bounded_time_then_resume_is_exact(tmp_path):
    """Rank 1 is SIGKILLed mid-epoch: rank 0 exits within --dist-timeout with one line (not
    a hang, no traceback); both ranks resumed finish with the weights of an uninterrupted
    2-process run."""
    data = make_image_folder(tmp_path / "data", classes=2, per_class=12, size=16)
    flags = [
        *("--model", "resnet20_cifar", "--epochs", "2", "--batch-size", "4"),
        *("--checkpoint-every", "1", "--dist-timeout", "20", "--seed", "2", "--quiet"),
    ]
    reference = tmp_path / "reference"
    for proc in _ranks(data, reference, flags, _env()):
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    run = tmp_path / "run"
    rank0, rank1 = _ranks(data, run, flags, _env(GHOSTNET_KILL_AT_STEP="4", GHOSTNET_KILL_RANK="1"))
    assert rank1.wait(timeout=300) == -signal.SIGKILL
    started = time.perf_counter()
    code = rank0.wait(timeout=120)
    waited = time.perf_counter() - started
    err = rank0.stderr.read()
    assert code == 2 and waited < 20 + 15, (code, waited, err[-2000:])
    assert "another process of the job stopped answering" in err and "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if " error: " in line]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err  # one line, the last
    for proc in _ranks(data, run, [*flags, "--resume"], _env()):
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    a, b = read_checkpoint(reference / "last.pt"), read_checkpoint(run / "last.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_a_refused_lock_ends_every_rank(tmp_path):
    """Rank 0 cannot lock --out (another run holds it): rank 1 exits too, with its own line,
    instead of waiting at the first collective."""
    from ghostnet import safe_io

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2, size=16)
    out = tmp_path / "run"
    lock = safe_io.RunFolderLock(out).acquire()
    try:
        flags = ["--model", "resnet20_cifar", "--epochs", "1", "--dist-timeout", "60", "--quiet"]
        procs = _ranks(data, out, flags, _env())
        codes = [p.wait(timeout=120) for p in procs]
        errs = [p.stderr.read() for p in procs]
    finally:
        lock.release()
    assert codes == [2, 2], errs
    assert "in use by another run" in errs[0]
    assert "rank 0 could not take the run folder" in errs[1]
    assert all("Traceback" not in e for e in errs)

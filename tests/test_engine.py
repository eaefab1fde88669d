"""Trainer (classification through the one loop): outputs, resume policy, recipes,
schedules, collectives, non-finite losses, run folders. Exact resume after SIGKILL and
2 processes vs 1 for every task: tests/test_train_loop.py."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch

from ghostnet import GhostnetError
from ghostnet.checkpoint import atomic_save, read_checkpoint
from ghostnet.train import RECIPES, TrainConfig, build_scheduler, config_from, fit

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


def _free_port() -> int:
    """A TCP port the OS says is free now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=16, size=32)


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


# ---------------------------------------------------------------- reliability (issue 10/14)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("small"), classes=2, per_class=8, size=16)


def _small_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        model="resnet20_cifar", data=str(data), out=str(out), epochs=1, batch_size=4, quiet=True
    )
    values.update(overrides)
    return config_from(None, **values)


def test_collectives_use_the_training_device(small_data, tmp_path, monkeypatch):
    """A run in a simulated 2-process world: every tensor handed to a collective is on the
    model's device (the NCCL bug: metric tensors made on the CPU). Collectives itself
    refuses a tensor on another device, so on a GPU the same mistake fails at once."""
    import torch.distributed as dist

    import ghostnet.train.loop as loop
    from ghostnet.train import Collectives, Dist, Meters

    seen: list[torch.device] = []

    def all_reduce(tensor, *args, **kwargs):
        seen.append(tensor.device)
        tensor.mul_(2)  # the other, identical rank

    monkeypatch.setattr(loop, "init_distributed", lambda kind, timeout: Dist(0, 2, 0))
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "broadcast", lambda t, src: seen.append(t.device))
    monkeypatch.setattr(
        dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), [obj] * 2)
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(loop, "wrap_for_training", lambda model, ddp, device, compile: model)
    fit(_small_config(small_data, tmp_path / "run", log_every=2))
    assert seen and all(d == torch.device("cpu") for d in seen)

    meta = Collectives(Dist(0, 2, 0), torch.device("meta"))
    with pytest.raises(RuntimeError, match="the run trains on meta"):
        meta.sum(torch.zeros(3))  # a CPU tensor handed to a GPU-style collective
    meters = Meters(torch.device("meta"), ("correct",))
    meters.update(torch.zeros((), device="meta"), 4, torch.zeros(1, device="meta"))
    seen.clear()
    meta.sum(meters.sums)
    assert seen == [torch.device("meta")]


def _nan_at(monkeypatch, bad_calls: set[int]) -> None:
    """Make TrainLoss return NaN on the given (1-based) calls."""
    import ghostnet.distill as distill

    real = distill.TrainLoss.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if count["n"] in bad_calls else loss

    monkeypatch.setattr(distill.TrainLoss, "forward", forward)


def test_nonfinite_loss_never_reaches_last_pt(small_data, tmp_path, monkeypatch):
    """NaN at step 3, sync points every 4 steps, checkpoints every 2: the run stops at step
    4 without saving; last.pt keeps step 2 (finite) and the message names it."""
    _nan_at(monkeypatch, {3})
    out = tmp_path / "run"
    config = _small_config(small_data, out, epochs=2, checkpoint_every=2, log_every=4)
    with pytest.raises(GhostnetError, match=r"NaN/inf .*last\.pt is the last finite state"):
        fit(config)
    kept = read_checkpoint(out / "last.pt")
    assert kept["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped: non-finite loss"


def test_nonfinite_loss_with_nothing_saved_leaves_no_folder(small_data, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {1})
    out = tmp_path / "run"
    with pytest.raises(GhostnetError, match="no checkpoint was written before it"):
        fit(_small_config(small_data, out, log_every=1))
    assert not out.exists()  # a rerun with a lower --lr needs no --overwrite


def test_nonfinite_loss_skip_mode(small_data, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {2})
    out = tmp_path / "run"
    summary = fit(_small_config(small_data, out, on_nonfinite="skip"))
    assert summary["status"] == "finished"
    weights = read_checkpoint(out / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_resume_replans_the_schedule(small_data, tmp_path):
    """More epochs and a new LR on resume: the LR from then on is the one a run started with
    the new values would have at that step (4 steps per epoch here)."""
    out = tmp_path / "run"
    fit(_small_config(small_data, out, epochs=2, lr=0.1, warmup_epochs=1))
    assert read_checkpoint(out / "last.pt")["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    fit(_small_config(small_data, out, epochs=4, lr=0.05, warmup_epochs=1), resume=out / "last.pt")
    history = read_checkpoint(out / "last.pt")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    fresh = _lrs(TrainConfig("m", "d", "o", epochs=4, lr=0.05, warmup_epochs=1), 4)
    assert history[2]["lr"] == pytest.approx(fresh[12], rel=1e-9)  # after 3 epochs x 4 steps
    assert history[2]["lr"] > 0.001
    with pytest.raises(GhostnetError, match="--opt 'adamw'"):
        fit(
            _small_config(small_data, out, epochs=4, lr=0.05, warmup_epochs=1, opt="adamw"),
            resume=out / "last.pt",
        )
    with pytest.raises(GhostnetError, match="already trained 4 epochs"):
        fit(
            _small_config(small_data, out, epochs=3, lr=0.05, warmup_epochs=1),
            resume=out / "last.pt",
        )


def test_run_folder_is_never_overwritten(small_data, tmp_path):
    out = tmp_path / "run"
    fit(_small_config(small_data, out))
    hashes = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(GhostnetError, match="already holds a run"):
        fit(_small_config(small_data, out))
    with pytest.raises(GhostnetError, match="already holds a run"):
        fit(_small_config(small_data, out, epochs=2))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == hashes
    fit(_small_config(small_data, out, seed=1), overwrite=True)
    assert read_checkpoint(out / "last.pt")["config"]["seed"] == 1


def test_failed_start_leaves_nothing_behind(small_data, tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(GhostnetError, match="--teacher"):
        fit(_small_config(small_data, out, teacher=str(tmp_path / "missing.pt")))
    assert not (tmp_path / "new").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(GhostnetError, match="is an existing file"):
        fit(_small_config(small_data, afile))
    assert afile.read_text() == "x"


def test_interrupt_writes_summary_and_curves(small_data, tmp_path, monkeypatch):
    from ghostnet.train.loop import StopRequested

    real_enter = StopRequested.__enter__

    def enter(self):
        real_enter(self)
        self.signal = signal.SIGINT  # as if Ctrl-C came during the first step
        return self

    monkeypatch.setattr(StopRequested, "__enter__", enter)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_small_config(small_data, out, epochs=2))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped by a signal" and summary["epochs_done"] == 0
    assert read_checkpoint(out / "last.pt")["global_step"] == 1


def test_progress_lines_and_augmentation(small_data, tmp_path, caplog):
    """Not on a terminal, a progress line every --log-every steps; RandAugment, random
    erasing, mixup and cutmix (soft targets) train to a finite loss."""
    import logging

    out = tmp_path / "run"
    config = _small_config(
        small_data,
        out,
        quiet=False,
        log_every=1,
        randaugment=9,
        random_erase=0.5,
        mixup=0.2,
        cutmix=1.0,
    )
    with caplog.at_level(logging.INFO, logger="ghostnet"):
        summary = fit(config)
    lines = [r.getMessage() for r in caplog.records]
    assert any("epoch 1/1 step 1/4" in line for line in lines)
    assert any(line.startswith("data preset cifar: input 16x16") for line in lines)
    assert summary["preset"]["input_size"] == 16
    assert math.isfinite(read_checkpoint(out / "last.pt")["history"][0]["train_loss"])


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    """Lazily decoded (80 px) and in-memory (16 px) sets alike: a corrupt file and a
    decompression bomb are skipped, named in skipped_images.txt, and no sample repeats."""
    from PIL import Image

    for size, name in ((80, "lazy"), (16, "memory")):
        data = make_image_folder(tmp_path / name, classes=2, per_class=4, size=size)
        (data / "train" / "class_0" / "0001.png").write_bytes(b"broken")
        Image.new("1", (20000, 10000)).save(data / "train" / "class_1" / "0002.png")
        out = tmp_path / f"run-{name}"
        summary = fit(_small_config(data, out, input_size=16, batch_size=8))
        listed = (out / "skipped_images.txt").read_text().split()
        assert sorted(Path(p).name for p in listed) == ["0001.png", "0002.png"], name
        assert summary["status"] == "finished"


def test_ema_copies_integer_buffers():
    """The EMA averages floats and copies integer buffers (averaging 11 in integers gave 10)."""
    from torch.optim.swa_utils import AveragedModel

    from ghostnet.train import ema_update

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.register_buffer("layout", torch.tensor([11, 3, 7]))
    ema = AveragedModel(model, multi_avg_fn=ema_update(0.9999), use_buffers=True)
    for _ in range(3):
        model(torch.randn(2, 3, 8, 8))
        model.layout += 1
        ema.update_parameters(model)
    assert ema.module.layout.tolist() == [14, 6, 10]
    assert ema.module[1].num_batches_tracked.item() == 3
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)  # averaged


def test_compile_trains_saves_plain_keys_and_resumes(small_data, tmp_path, monkeypatch):
    """--compile: the compiled module trains, checkpoints hold the plain model's keys (no
    ``_orig_mod.``), and a compiled run resumes. Inductor's C++ build takes minutes on 2
    cores, so the test compiles with the ``aot_eager`` backend (same tracing, autograd and
    graph breaks, no code generation); benchmarks/trainer_throughput.py --compile runs the
    real inductor path."""
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def compile_for_test(model, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_for_test)
    plain, fast = tmp_path / "plain", tmp_path / "compiled"
    fit(_small_config(small_data, plain, epochs=2))
    fit(_small_config(small_data, fast, epochs=2, compile=True))
    assert len(compiled) == 1
    a, b = read_checkpoint(plain / "last.pt"), read_checkpoint(fast / "last.pt")
    assert list(a["model"]) == list(b["model"])  # the plain model's keys, in its order
    # the same training up to float reassociation in the traced graph
    for name, value in a["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["model"][name], rtol=1e-3, atol=1e-4), name
    fit(_small_config(small_data, fast, epochs=3, compile=True), resume=fast / "last.pt")
    assert len(compiled) == 2
    assert [h["epoch"] for h in read_checkpoint(fast / "last.pt")["history"]] == [1, 2, 3]

"""Fault injection: full disk, read-only folder, permission errors on every library write.

Each case checks the one error line, that nothing partial is left under the final name,
and that the files from before are intact (hashes)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
import torch

from ghostnet import GhostnetError, safe_io
from ghostnet.checkpoint import read_checkpoint
from ghostnet.train import config_from, fit

from .imagegen import make_image_folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(folder: Path) -> dict[str, str]:
    """Every file of a run folder but its lock."""
    return {p.name: _sha(p) for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


def _hidden_temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp-*"))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("small"), classes=2, per_class=8, size=16)


def _config(data: Path, out: Path, **overrides):
    values = dict(
        model="resnet20_cifar", data=str(data), out=str(out), epochs=1, batch_size=4, quiet=True
    )
    values.update(overrides)
    return config_from(None, **values)


def _fail_fsync_after(monkeypatch, calls: int, code: int, name: str = "") -> dict[str, int]:
    """os.fsync of a file (whose name holds ``name``; checksum records not counted) raises
    OSError(code) from call number ``calls`` on (a full disk shows up at write or fsync
    time)."""
    real = os.fsync
    seen = {"n": 0}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        base = os.path.basename(target)
        if os.path.isdir(target) or name not in base or (name and "sha256" in base):
            return real(fd)
        seen["n"] += 1
        if seen["n"] >= calls:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(safe_io.os, "fsync", fsync)
    return seen


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, r"disk full, .* free in "),
        (errno.EDQUOT, r"disk quota exceeded, .* free in "),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_write_text_failure_keeps_old_file(tmp_path, monkeypatch, code, words):
    path = safe_io.write_text(tmp_path / "summary.json", "old\n")
    before = _sha(path)
    _fail_fsync_after(monkeypatch, 1, code)
    with pytest.raises(GhostnetError, match=f"cannot write {path}: {words}") as info:
        safe_io.write_text(path, "new\n")
    assert "\n" not in str(info.value)
    assert "nothing partial was left under that name" in str(info.value)
    assert _sha(path) == before
    assert _hidden_temps(tmp_path) == []


def test_unmapped_errors_pass_through(tmp_path, monkeypatch):
    _fail_fsync_after(monkeypatch, 1, errno.EIO)
    with pytest.raises(OSError) as info:
        safe_io.write_text(tmp_path / "x.txt", "x")
    assert info.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_checkpoint_names_the_last_good_one(small_data, tmp_path, monkeypatch):
    """Epoch 1 is saved (last.pt, best.pt, metrics.csv); the disk fills at epoch 2's
    checkpoint: one line naming the path, the free space and epoch 1's last.pt, which is
    untouched."""
    out = tmp_path / "run"
    fit(_config(small_data, out, epochs=1))
    before = {p.name: _sha(p) for p in out.iterdir() if p.is_file()}
    _fail_fsync_after(monkeypatch, 1, errno.ENOSPC, name="last")
    with pytest.raises(GhostnetError) as info:
        fit(_config(small_data, out, epochs=2), resume=out / "last.pt")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"cannot write {out / 'last.pt'}: disk full, ")
    assert f"last good checkpoint: {out / 'last.pt'} (from before this run)" in line
    for name in ("last.pt", "best.pt"):
        assert _sha(out / name) == before[name]
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    assert _hidden_temps(out) == []


def test_disk_full_at_a_later_checkpoint_names_its_epoch(small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # epoch 1 writes last.pt; the disk is full from the second last.pt on
    _fail_fsync_after(monkeypatch, 2, errno.ENOSPC, name="last")
    with pytest.raises(GhostnetError, match="disk full") as info:
        fit(_config(small_data, out, epochs=3))
    line = str(info.value)
    assert "last good checkpoint: epoch 1 (step 0) at " in line, line
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    assert _hidden_temps(out) == []


def test_read_only_output_folder(small_data, tmp_path, monkeypatch):
    """A read-only folder: chmod where it blocks (not as root), else a patched EROFS."""
    out = tmp_path / "run"
    fit(_config(small_data, out, epochs=1))
    before = _sha(out / "last.pt")
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):  # root ignores the mode bits
            _fail_fsync_after(monkeypatch, 1, errno.EROFS)
        with pytest.raises(
            GhostnetError,
            match=r"cannot write .*: (read-only file system|"
            r"permission denied)",
        ) as info:
            fit(_config(small_data, out, epochs=2), resume=out / "last.pt")
    finally:
        out.chmod(0o755)
    assert "\n" not in str(info.value)
    assert _sha(out / "last.pt") == before
    assert _hidden_temps(out) == []


def test_disk_full_during_export_says_disk_full(tmp_path, monkeypatch, capsys):
    """Not 'cannot be exported ... traceable': the exporter's OSError is let through."""
    pytest.importorskip("onnx")
    from ghostnet.cli import main

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    out = tmp_path / "m.onnx"
    status = main(["export", "--model", "resnet20_cifar", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith(f"ghostnet export: error: cannot write {out}: disk full, "), err
    assert "traceable" not in err[0]
    assert not out.exists() and _hidden_temps(tmp_path) == []


def test_disk_full_while_saving_the_checked_onnx(tmp_path, monkeypatch):
    """The final metadata rewrite goes through the write path: ENOSPC there is one line."""
    onnx = pytest.importorskip("onnx")
    from ghostnet.deploy import export_onnx
    from ghostnet.models import create_model

    real_save = onnx.save

    def save(proto, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", save)
    with pytest.raises(GhostnetError, match="disk full"):
        export_onnx(create_model("resnet20_cifar").eval(), tmp_path / "m.onnx", (3, 32, 32))
    monkeypatch.setattr(onnx, "save", real_save)
    assert _hidden_temps(tmp_path) == []


def test_second_run_on_a_locked_folder_is_refused(small_data, tmp_path):
    """A live owner (another open file description holding flock): the second training
    refuses in one line naming pid, host and start time, and writes nothing."""
    import json
    import socket

    out = tmp_path / "run"
    fit(_config(small_data, out, epochs=1))
    before = _hashes(out)
    with safe_io.RunFolderLock(out):
        owner = json.loads((out / ".lock").read_text())
        for kwargs in ({"resume": out / "last.pt"}, {"overwrite": True}):
            with pytest.raises(GhostnetError) as info:
                fit(_config(small_data, out, epochs=2), **kwargs)
            line = str(info.value)
            assert "\n" not in line
            assert line.startswith(
                f"{out} is in use by another run (pid {os.getpid()} on {socket.gethostname()} "
                f"since {owner['since']}: "
            ), line
            assert _hashes(out) == before
    assert (out / ".lock").read_text() == ""  # released: emptied, not removed


def test_stale_lock_is_taken_over_with_a_warning(small_data, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text('{"pid": 999999, "host": "gone", "since": "yesterday"}\n')
    fit(_config(small_data, out, epochs=1))
    assert "taking over" in caplog.text and "pid 999999 on gone (since yesterday)" in caplog.text
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    assert (out / ".lock").read_text() == ""


def test_lock_is_dropped_when_the_owner_dies(tmp_path):
    """SIGKILL of the owner: the kernel drops the flock; the next taker warns, succeeds."""
    import subprocess
    import sys

    code = (
        "import os, sys, time; from ghostnet.safe_io import RunFolderLock; "
        f"RunFolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"held"
    with pytest.raises(GhostnetError, match=rf"in use by another run \(pid {proc.pid} "):
        safe_io.RunFolderLock(tmp_path).acquire()
    proc.kill()
    proc.wait()
    lock = safe_io.RunFolderLock(tmp_path).acquire()
    lock.release()


@pytest.mark.parametrize(
    "damage", ["truncated", "bit-flipped header", "zeroed", "bit-flipped data"]
)
def test_resume_of_a_damaged_last_pt_falls_back_to_last_prev(small_data, tmp_path, caplog, damage):
    """Two epochs: last.pt (epoch 2) and last.prev.pt (epoch 1). last.pt damaged: --resume
    warns naming it and why, continues from last.prev.pt (epoch 1); the rest is untouched."""
    out = tmp_path / "run"
    fit(_config(small_data, out, epochs=2))
    assert read_checkpoint(out / "last.prev.pt")["epoch"] == 1
    last = out / "last.pt"
    data = bytearray(last.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bit-flipped header":
        data[0] ^= 0x01  # the zip signature
    elif damage == "bit-flipped data":
        data[len(data) // 2] ^= 0x04  # inside tensor storage: still unpickles
    else:
        data = bytearray(len(data))
    last.write_bytes(bytes(data))
    prev_sha, best_sha = _sha(out / "last.prev.pt"), _sha(out / "best.pt")
    summary = fit(_config(small_data, out, epochs=3), resume=last)
    assert f"resume: skipped {last}: " in caplog.text
    if damage == "bit-flipped data":
        assert "its SHA-256 differs from last.pt.sha256" in caplog.text
    assert f"continuing from {out / 'last.prev.pt'} (epoch 1, step 0)" in caplog.text
    assert summary["epochs_done"] == 3
    assert read_checkpoint(last)["epoch"] == 3
    assert _sha(out / "best.pt") == best_sha or read_checkpoint(out / "best.pt")["epoch"] > 1
    assert prev_sha  # last.prev.pt now holds epoch 2 of the resumed run
    assert read_checkpoint(out / "last.prev.pt")["epoch"] == 2


def test_resume_with_nothing_readable_lists_what_was_tried(small_data, tmp_path):
    out = tmp_path / "run"
    fit(_config(small_data, out, epochs=2))
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        (out / name).write_bytes(b"broken")
    with pytest.raises(GhostnetError) as info:
        fit(_config(small_data, out, epochs=3), resume=out / "last.pt")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("no readable checkpoint to resume from; tried ")
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        assert str(out / name) in line

"""The run folder: checks before any work, the lock, checkpoint files with their checksums,
and the fallback chain a resume reads (last.pt -> last.prev.pt -> best.pt).

Every write goes through ``safe_io`` (temp file + fsync + rename). Beside each checkpoint
``NAME.pt`` lies ``NAME.pt.sha256`` (the file's SHA-256); a resume verifies it, so a
checkpoint damaged on disk (a flipped bit that still unpickles) is skipped like an
unreadable one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_save, read_checkpoint, remove_stale_temp_files
from ..errors import GhostnetError
from ..files import check_output_folder
from ..safe_io import RunFolderLock, write_text
from .distributed import Collectives

log = logging.getLogger("ghostnet")

# files that make a folder a run folder (train refuses to write over them)
RUN_FILES = ("last.pt", "best.pt", "summary.json", "metrics.csv")


def check_out_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that is a file, unwritable, or already holds a run (unless resuming
    or ``overwrite``); nothing is written here."""
    check_output_folder(out)
    if out.is_dir() and not resume and not overwrite:
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise GhostnetError(
                f"--out {out} already holds a run ({', '.join(found)}); continue it with "
                "--resume, choose a new --out, or pass --overwrite to replace it"
            )


def take_run_folder(out: Path, collectives: Collectives) -> RunFolderLock | None:
    """Rank 0 creates --out and locks it (DIR/.lock) before writing anything in it; every
    rank learns whether that worked, so a refusal ends the whole job, not only rank 0."""
    lock, error = None, None
    if collectives.ddp.main:
        try:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GhostnetError(f"--out {out}: cannot create the folder ({exc})") from exc
            lock = RunFolderLock(out).acquire()
            remove_stale_temp_files(out)
        except GhostnetError as exc:
            error = exc
    (failed,) = collectives.agree(error is not None)
    if error is not None:
        raise error
    if failed:
        raise GhostnetError(
            f"rank {collectives.ddp.rank}: rank 0 could not take the run folder {out} (its "
            "line says why); nothing was trained"
        )
    return lock


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint_file(payload: dict[str, Any], path: Path, survived: str) -> None:
    """``path`` atomically, then its checksum beside it."""
    atomic_save(payload, path, survived=survived or None)
    write_text(checksum_path(path), f"{sha256_of(path)}  {path.name}\n", survived=survived or None)


def verify_checksum(path: Path) -> None:
    """Raise when ``path``'s recorded SHA-256 differs from the file's (no record: no check,
    as for checkpoints written before the records existed)."""
    record = checksum_path(path)
    if not record.is_file():
        return
    expected = record.read_text().split()[:1]
    if expected and expected[0] != sha256_of(path):
        raise GhostnetError(
            f"{path}: its SHA-256 differs from {record.name} (the file was damaged after it "
            "was written)"
        )


def keep_previous(last: Path) -> None:
    """last.pt -> also last.prev.pt (a hard link, atomic; a copy where links are refused),
    so a damaged last.pt never leaves best.pt as the only copy. Its checksum goes along."""
    if not last.exists():
        return
    prev = last.with_name("last.prev.pt")
    for source, target in ((last, prev), (checksum_path(last), checksum_path(prev))):
        if not source.exists():
            checksum_path(prev).unlink(missing_ok=True)
            continue
        tmp = target.with_name(f".{target.name}.tmp-link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        # rename(2) of a hard link onto a name of the same file does nothing (POSIX): after
        # a kill between the link and the next last.pt both names are one file, and the
        # temporary link would stay behind
        tmp.unlink(missing_ok=True)


def read_resume_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """``path``, or when it is unreadable or fails its checksum the newest good fallback
    beside a last.pt (last.prev.pt, then best.pt), with a warning naming what was skipped."""
    candidates = [path]
    if path.name == "last.pt":
        candidates += [path.with_name("last.prev.pt"), path.with_name("best.pt")]
    tried: list[str] = []
    for candidate in candidates:
        if candidate != path and not candidate.exists():
            continue
        try:
            verify_checksum(candidate)
            checkpoint = read_checkpoint(candidate)
        except (GhostnetError, OSError) as exc:
            tried.append(f"{candidate}: {str(exc)[:160]}")
            continue
        if tried:
            log.warning(
                "resume: skipped %s; continuing from %s (epoch %d, step %d)",
                "; ".join(tried),
                candidate,
                checkpoint.get("epoch", 0),
                checkpoint.get("step_in_epoch", 0),
            )
        return checkpoint, candidate
    if len(tried) == 1:
        raise GhostnetError(tried[0].split(": ", 1)[1])
    raise GhostnetError("no readable checkpoint to resume from; tried " + "; ".join(tried))

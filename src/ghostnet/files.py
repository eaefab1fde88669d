"""Checks on output paths, made before any work so that a bad path fails first."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import GhostnetError


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder path to write into: not an existing file, and its nearest existing parent
    writable. Nothing is created here."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise GhostnetError(f"{flag} {out} is an existing file; give a folder path")
    existing = out if out.exists() else next((p for p in out.parents if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise GhostnetError(f"{flag} {out}: cannot write in {existing}; choose another folder")
    return out


def check_output_file(path: str | os.PathLike, flag: str = "--out", example: str = "out") -> Path:
    """A file path to write: not an existing folder, its folder creatable and writable.
    Creates the missing parent folders (the only thing it writes)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise GhostnetError(
            f"{flag} {path} is an existing folder; give a file name, e.g. {path / example}"
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise GhostnetError(f"{flag} {path}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GhostnetError(
            f"{flag} {path}: cannot create folder {parent} ({exc.strerror})"
        ) from None
    if not os.access(parent, os.W_OK):
        raise GhostnetError(f"{flag} {path}: folder {parent} is not writable")
    return path

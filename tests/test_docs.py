"""The documentation site builds with zero warnings (broken links, missing API names fail)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    cli = (site / "cli" / "index.html").read_text()
    assert "ghostnet train" in cli and "--init-weights" in cli  # generated from the parsers
    api = (site / "api" / "index.html").read_text()
    assert "create_model" in api and "ghostify" in api
    shutil.rmtree(site)

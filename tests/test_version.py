"""The version is written once and reported by ``ghostnet --version``."""

import re
from pathlib import Path

import pytest

import ghostnet
from ghostnet.cli import main


def test_version_flag_prints_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ghostnet {ghostnet.__version__}"


def test_version_single_source_and_in_changelog():
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)
    assert f"## {ghostnet.__version__}" in (root / "CHANGELOG.md").read_text()

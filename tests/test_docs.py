"""The documentation site builds with zero warnings (broken links, missing API names fail)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built once with --strict (a warning fails the build)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    folder = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield folder
    shutil.rmtree(folder)


def test_mkdocs_build_strict(site):
    cli = (site / "cli" / "index.html").read_text()
    assert "ghostnet train" in cli and "--init-weights" in cli  # generated from the parsers
    api = (site / "api" / "index.html").read_text()
    assert "create_model" in api and "ghostify" in api


@pytest.mark.slow  # Chromium: ~20 s for four pages on a loaded 2-core machine
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no /usr/bin/chromium")
def test_site_renders_in_a_headless_browser(site, capsys):
    """scripts/check_site.py on the built site: index, a guide, the API page and a results
    page render (theme applied, images decoded, no raw Markdown in the visible text)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_site
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    status = check_site.main(["--site", str(site)])
    assert status == 0, capsys.readouterr().out

"""Open the built documentation site in headless Chromium and check that pages render.

Builds the site (``mkdocs build``) unless ``--site`` is given, serves it over HTTP on a
free local port, and loads each page inside a same-origin harness page that, once the page
has loaded in the browser, reports: the theme's stylesheets applied, the number of tables,
every image and whether the browser decoded it (``naturalWidth > 0``), and the page's
visible text outside code blocks, which must hold no raw Markdown (table rules
``| --- |``, ``## `` headings, ``[text](link)``, code fences). ``--screenshot DIR`` also
saves a PNG of each page.

    python scripts/check_site.py [--site DIR] [--screenshot DIR] [PAGE ...]

Exit status 0 when every page renders, 1 otherwise; without /usr/bin/chromium (Debian's
``chromium`` package) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# the index, one guide, one API page and one results page (it has a figure)
PAGES = ["", "guide/usage/", "api/", "results/analysis/"]

RAW_MARKDOWN = {
    "table rule": re.compile(r"\|\s*:?-{3,}"),
    "heading": re.compile(r"(?<![\w#&;])#{1,6} [A-Za-z]"),  # "## Title" left as text
    "link": re.compile(r"\]\([^)\s]+\)"),
    "code fence": re.compile(r"```"),
}

# Runs in the browser: load the page in an iframe (same origin, so its DOM is readable),
# then write what it found into the harness page, which --dump-dom prints.
HARNESS = """<!doctype html><html><body><pre id="result">pending</pre><script>
const frame = document.createElement("iframe");
frame.style.width = "1280px"; frame.style.height = "1000px";
frame.onload = () => setTimeout(() => {
  const doc = frame.contentDocument;
  const header = doc.querySelector(".md-header");  // Material's CSS makes it sticky
  const body = doc.body.cloneNode(true);
  body.querySelectorAll("pre, code, script, style, noscript").forEach(e => e.remove());
  const images = [...doc.images].map(i => ({src: i.getAttribute("src"),
    loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth}));
  document.getElementById("result").textContent = JSON.stringify({
    title: doc.title,
    styled: header !== null && getComputedStyle(header).position === "sticky",
    stylesheets: doc.styleSheets.length,
    tables: doc.querySelectorAll("article table").length,
    headings: doc.querySelectorAll("article h1, article h2, article h3").length,
    images: images,
    text: body.textContent,
  });
}, 500);
frame.src = PAGE;
document.body.appendChild(frame);
</script></body></html>"""


def build_site(folder: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT / "src"))
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(folder)],
        cwd=ROOT,
        env=env,
        check=True,
    )


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # one line per request is noise
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def chromium(*args: str) -> str:
    # --no-sandbox: root in a container has no user namespace for the sandbox
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-500:]}")
    return done.stdout


def check_page(site: Path, base: str, page: str, screenshots: Path | None) -> list[str]:
    """Problems found on one page (empty: it renders)."""
    harness = site / f"__check_{abs(hash(page))}.html"
    harness.write_text(HARNESS.replace("PAGE", json.dumps(base + page)))
    try:
        dom = chromium("--virtual-time-budget=15000", "--dump-dom", base + harness.name)
    finally:
        harness.unlink()
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    if found is None or found.group(1) == "pending":
        return ["the page did not finish loading"]
    result = json.loads(html.unescape(found.group(1)))
    problems = []
    if not result["styled"]:
        problems.append(f"theme not applied ({result['stylesheets']} stylesheets)")
    if result["headings"] == 0:
        problems.append("no rendered headings")
    for name, pattern in RAW_MARKDOWN.items():
        hit = pattern.search(result["text"])
        if hit:
            start = max(hit.start() - 40, 0)
            context = " ".join(result["text"][start : hit.end() + 40].split())
            problems.append(f"raw Markdown ({name}): ...{context}...")
    for image in result["images"]:
        if not image["loaded"]:
            problems.append(f"image not loaded: {image['src']}")
    loaded = sum(i["loaded"] for i in result["images"])
    print(
        f"/{page:<20} {result['title'][:40]!r:<42} headings {result['headings']:>3}  "
        f"tables {result['tables']:>2}  images {loaded}/{len(result['images'])} loaded  "
        f"text {len(result['text']):>6} chars  {'OK' if not problems else 'PROBLEMS'}"
    )
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
        name = (page.strip("/").replace("/", "_") or "index") + ".png"
        shot = screenshots / name
        chromium(
            "--window-size=1280,1400", "--hide-scrollbars", f"--screenshot={shot}", base + page
        )
        print(f"  screenshot: {shot}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", default=PAGES, help="paths under the site root")
    parser.add_argument("--site", type=Path, help="an already built site (default: build one)")
    parser.add_argument("--screenshot", type=Path, metavar="DIR", help="save a PNG per page")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"skipped: {CHROMIUM} not found (apt-get install chromium)")
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="ghostnet-site-"))
    try:
        site = args.site or scratch / "site"
        if args.site is None:
            build_site(site)
        server, base = serve(site)
        try:
            failures = {page: check_page(site, base, page, args.screenshot) for page in args.pages}
        finally:
            server.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bad = {page: problems for page, problems in failures.items() if problems}
    for page, problems in bad.items():
        for problem in problems:
            print(f"/{page}: {problem}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

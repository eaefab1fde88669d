"""MkDocs hook: the CLI reference page is generated from ghostnet.cli's argparse parsers."""

from __future__ import annotations

import argparse

MARKER = "<!-- cli-reference -->"


def _render() -> str:
    from ghostnet.cli import build_parser

    parser = build_parser()
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"## ghostnet {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, _render())
    return markdown

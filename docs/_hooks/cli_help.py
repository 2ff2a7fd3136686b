"""mkdocs hook: replace ``<!-- wsviz-cli-help -->`` in a page by the ``--help`` text of every
``wsviz`` subcommand, taken from :func:`wsviz.cli.build_parser` when the site is built (so the
CLI reference cannot drift from the code)."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- wsviz-cli-help -->"


def cli_reference() -> str:
    """Markdown: one section per subcommand with its help text in a code block."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to $COLUMNS: stable output
    from wsviz.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["## `wsviz`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, cmd in sorted(sub.choices.items()):
        parts += [f"## `wsviz {name}`", "", "```text", cmd.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown

"""The ``wsviz`` command.

Subcommands live in :mod:`wsviz.commands`, one module each, discovered automatically:
a module exposes ``register(subparsers)``, which adds its parser and sets ``func``
(``run(args) -> int``). A :class:`~wsviz.errors.WsvizError` is printed as one line
(``wsviz: error: ...``) with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from wsviz.errors import WsvizError


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with every subcommand module of :mod:`wsviz.commands` registered."""
    from wsviz import commands

    parser = argparse.ArgumentParser(
        prog="wsviz",
        description="Weight-space visual analysis for merging and pruning neural networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"wsviz.commands.{mod.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsviz`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except WsvizError as e:
        msg = str(e)
        print(f"wsviz: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

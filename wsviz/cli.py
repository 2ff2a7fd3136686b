"""The ``wsviz`` command.

Subcommands live in :mod:`wsviz.commands`, one module each, discovered automatically:
a module exposes ``register(subparsers)``, which adds its parser and sets ``func``
(``run(args) -> int``). A :class:`~wsviz.errors.WsvizError` is printed as one line
(``wsviz: error: ...``) with exit status 2 and no traceback; so is a bad command line
(argparse's usage block is replaced by a pointer to ``--help``), a ``--device`` torch does
not know, and an ``OSError`` that escapes a command (named with its file).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from wsviz.errors import WsvizError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (exit status 2), like wsviz errors."""

    def error(self, message: str):
        msg = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {msg} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with every subcommand module of :mod:`wsviz.commands` registered."""
    from wsviz import commands

    parser = OneLineParser(
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
        check_device(getattr(args, "device", None))
        return int(args.func(args) or 0)
    except WsvizError as e:
        msg = " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())  # one line
        print(f"wsviz: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a file problem no module turned into a WsvizError
        where = f"{e.filename}: " if e.filename else ""
        print(f"wsviz: error: {where}{e.strerror or e}; check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsviz: interrupted", file=sys.stderr)
        return 130


def check_device(device) -> None:
    """WsvizError unless ``device`` (a ``--device`` value) is None, ``auto`` or a device torch
    knows and has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if device is None or device == "auto":
        return
    from wsviz.compute.device import resolve_device

    resolve_device(device)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

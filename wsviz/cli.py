"""The ``wsviz`` command.

Subcommands live in :mod:`wsviz.commands`, one module each, discovered automatically:
a module exposes ``register(subparsers)``, which adds its parser and sets ``func``
(``run(args) -> int``). A :class:`~wsviz.errors.WsvizError` is printed as one line
(``wsviz: error: ...``) with exit status 2 and no traceback; so is a bad command line
(argparse's usage block is replaced by a pointer to ``--help``), a ``--device`` torch does
not know, and an ``OSError`` that escapes a command (named with its file). Everything a
command prints goes through :class:`~wsviz.textsafe.SafeStream` (control characters in
names are shown escaped, never sent to the terminal), and error lines are capped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys

from wsviz.errors import WsvizError
from wsviz.textsafe import SafeStream, cap, escape_controls

#: the longest error line printed (longer ones are cut, saying how much was left out)
MAX_ERROR_CHARS = 2000


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (exit status 2), like wsviz errors."""

    def error(self, message: str):
        msg = cap(escape_controls(" ".join(message.split())), MAX_ERROR_CHARS)
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
    with safe_streams():
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return _run(args)


@contextlib.contextmanager
def safe_streams():
    """``sys.stdout`` / ``sys.stderr`` wrapped in :class:`~wsviz.textsafe.SafeStream` for the
    duration (stdout keeps newlines and tabs, stderr also carriage returns for progress)."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(out, "\n\t"), SafeStream(err, "\n\t\r")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def error_line(message: str) -> str:
    """``wsviz: error: MESSAGE`` on one line: lines joined by `` | ``, control characters
    escaped, at most :data:`MAX_ERROR_CHARS` characters."""
    msg = " | ".join(ln.strip() for ln in str(message).splitlines() if ln.strip())
    return f"wsviz: error: {cap(escape_controls(msg), MAX_ERROR_CHARS)}"


def _run(args) -> int:
    try:
        check_device(getattr(args, "device", None))
        return int(args.func(args) or 0)
    except WsvizError as e:
        print(error_line(str(e)), file=sys.stderr)
        return 2
    except OSError as e:  # a file problem no module turned into a WsvizError
        where = f"{e.filename}: " if e.filename else ""
        print(error_line(f"{where}{e.strerror or e}; check the path and its permissions"),
              file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(error_line(f"out of memory running `wsviz {args.command}`; use a smaller model "
                         "set or a machine with more memory"),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsviz: interrupted", file=sys.stderr)
        return 130


def _out_of_memory(e: BaseException) -> bool:
    """A ``MemoryError``, torch's ``OutOfMemoryError`` or its CPU allocator's failure."""
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(e))


def check_device(device) -> None:
    """WsvizError unless ``device`` (a ``--device`` value) is None, ``auto`` or a device torch
    knows and has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if device is None or device == "auto":
        return
    from wsviz.compute.device import resolve_device

    resolve_device(device)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``argparse`` value types shared by commands (import-light: no torch until called)."""

from __future__ import annotations

import argparse


def size_arg(text: str) -> int:
    """``--shard-size``: ``"2GB"``, ``"500MB"``, ``"1GiB"``, bytes -> a positive byte count."""
    from wsviz.errors import OutputError
    from wsviz.io.outputs import parse_size

    try:
        return parse_size(text)
    except OutputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def port_arg(text: str) -> int:
    """``--port``: an integer 0..65535 (0 = any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number: use 0..65535 (0 = any "
                                         "free port)")
    return port

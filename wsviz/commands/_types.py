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

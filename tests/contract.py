"""The CLI's error contract, checked by the safety and fuzz tests.

A user error exits with status 2 and prints exactly one line on stderr (``wsviz: error: ...``
or argparse's ``wsviz CMD: error: ...``), no traceback; nothing appears under the output
name; the inputs are byte-for-byte untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

from wsviz.cli import main


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``wsviz ARGV`` in-process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_user_error(result: tuple[int, str, str], *needles: str) -> str:
    """Exit 2, one stderr line without a traceback, containing every needle; returns it."""
    rc, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, f"not one line:\n{err[-3000:]}"
    assert "error:" in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(*paths) -> dict[str, str]:
    """``{path: sha256 or 'dir' or 'link->target'}`` of every entry under ``paths``."""
    out: dict[str, str] = {}
    for root in paths:
        root = Path(root)
        if not os.path.lexists(root):
            out[str(root)] = "absent"
            continue
        entries = [root] + sorted(root.rglob("*")) if root.is_dir() else [root]
        for p in entries:
            if p.is_symlink():
                out[str(p)] = f"link->{os.readlink(p)}"
            elif p.is_dir():
                out[str(p)] = "dir"
            else:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def copy_model(src: Path, dst: Path) -> Path:
    """A private copy of a fixture model directory (destructive tests never touch fixtures)."""
    shutil.copytree(src, dst)
    return dst


def leftovers(directory: Path) -> list[str]:
    """Temporary entries wsviz left in ``directory`` (``.NAME.wsviz-tmp-…`` / ``-old-…``)."""
    return sorted(p.name for p in Path(directory).iterdir()
                  if ".wsviz-tmp-" in p.name or ".wsviz-old-" in p.name)

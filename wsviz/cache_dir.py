"""The one rule for where wsviz keeps its caches (analysis tables, file digests, the demo
zoo, the trim self-check verdict)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "WSVIZ_CACHE_DIR"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir`` when given, else ``$WSVIZ_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/wsviz``, else ``~/.cache/wsviz``. Never created here."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "wsviz"

"""Model paths for exported recipes that work from any directory.

A path typed relative to where the dashboard or CLI was started (``base``, ``./ft-py``)
means nothing to ``mergekit-yaml`` run elsewhere, and mergekit takes a name that is not an
existing directory for a Hugging Face Hub repository (it then tries the network, e.g. for
its model card). Exports therefore name every checkpoint by its absolute path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["absolute_paths"]


def absolute_paths(paths: Mapping[str, str]) -> dict[str, str]:
    """``{label: absolute path}``: each path expanded (``~``) and made absolute against the
    current directory (symlinks kept, ``..`` resolved); labels keep their order."""
    import os

    return {k: os.path.abspath(Path(str(v)).expanduser()) for k, v in paths.items()}

"""Parity peers (mergekit, weightwatcher, peft): the reference implementations the parity
tests compare wsviz with.

:func:`require_peer` replaces ``pytest.importorskip`` for them: on a developer's machine
without the peer the test is skipped, but under ``CI=true`` (where ``pip install -e
'.[dev]'`` installs every peer) a missing peer fails, so a broken install cannot turn the
parity suite into green skips. An ImportError raised *inside* an installed peer (one of its
own dependencies missing or broken) always fails: that is a broken install, not an absent
optional peer.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

PEERS = ("mergekit", "weightwatcher", "peft")


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_peer(module: str) -> ModuleType:
    """Import ``module`` (a peer or one of its submodules, e.g. ``mergekit.merge_methods``)
    and return it. When the peer's top-level package is not installed: skip the calling test
    or test module, or fail under ``CI=true``. Any other ImportError fails."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name != top:
            pytest.fail(f"parity peer {top} is installed but broken: importing {module} "
                        f"raised {type(e).__name__}: {e}", pytrace=False)
        if in_ci():
            pytest.fail(f"parity peer {top} is not installed under CI=true; install the dev "
                        f"extra (pip install -e '.[dev]')", pytrace=False)
        pytest.skip(f"parity peer {top} is not installed (pip install {top})",
                    allow_module_level=True)

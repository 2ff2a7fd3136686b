"""The demo zoo for tests: built once per machine into the normal cache (reused afterwards),
so the whole suite pays for at most one build (~30 s on 2 cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def zoo():
    from wsviz.zoo import ensure_zoo

    return ensure_zoo(progress=False)

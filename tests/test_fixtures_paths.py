"""The real test checkpoints are located by tests/ (and bench/), never by the product API."""

from __future__ import annotations

import wsviz.io
from tests.fixtures_paths import minilm_path, sre_minilm_path


def test_locators_live_in_tests_only():
    assert not hasattr(wsviz.io, "minilm_path") and not hasattr(wsviz.io, "sre_minilm_path")
    assert (minilm_path() / "model.safetensors").is_file()
    assert (sre_minilm_path() / "model.safetensors").is_file()

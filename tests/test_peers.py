"""A missing parity peer is a skip on a developer machine and an error under CI=true; a
broken peer is always an error."""

from __future__ import annotations

import sys

import pytest

from tests.peers import in_ci, require_peer


def test_installed_peer_is_returned():
    mod = require_peer("mergekit.merge_methods")
    assert mod.__name__ == "mergekit.merge_methods"


def test_missing_peer_skips_outside_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="wsviz_absent_peer is not installed"):
        require_peer("wsviz_absent_peer.sub")


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_peer_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="not installed under CI=true"):
        require_peer("wsviz_absent_peer")


def test_broken_peer_fails_even_outside_ci(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    pkg = tmp_path / "wsviz_broken_peer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import wsviz_missing_dependency_of_the_peer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(pytest.fail.Exception, match="installed but broken"):
            require_peer("wsviz_broken_peer")
    finally:
        sys.modules.pop("wsviz_broken_peer", None)

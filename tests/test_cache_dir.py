"""One cache-directory rule for every cache: the analysis tables, the file-digest memo, the
demo zoo and the trim self-check verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsviz.cache_dir import cache_root


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("WSVIZ_CACHE_DIR", "XDG_CACHE_HOME", "WSVIZ_ZOO_DIR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _users(tmp_path: Path) -> dict[str, Path]:
    """Where each cache user puts its files right now."""
    from wsviz.analysis.engine import cache_root as analysis_root
    from wsviz.compute._introsort import _stamp_file
    from wsviz.io.filehash import _identity, _memo_path
    from wsviz.zoo import default_zoo_dir

    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    return {"analysis": analysis_root(), "filehash": _memo_path(_identity(str(f), f.stat())),
            "introsort": _stamp_file(), "zoo": default_zoo_dir()}


def test_precedence(clean_env, tmp_path):
    assert cache_root() == Path.home() / ".cache" / "wsviz"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "wsviz"
    clean_env.setenv("WSVIZ_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert cache_root(tmp_path / "given") == tmp_path / "given"


@pytest.mark.parametrize("var, root", [("XDG_CACHE_HOME", "xdg/wsviz"),
                                       ("WSVIZ_CACHE_DIR", "mine")])
def test_every_cache_follows_the_rule(clean_env, tmp_path, var, root):
    clean_env.setenv(var, str(tmp_path / root.split("/")[0]))
    for user, path in _users(tmp_path).items():
        assert (tmp_path / root) in path.parents or path == tmp_path / root, (user, path)


def test_zoo_dir_env_still_wins(clean_env, tmp_path):
    from wsviz.zoo import default_zoo_dir

    clean_env.setenv("WSVIZ_CACHE_DIR", str(tmp_path / "mine"))
    clean_env.setenv("WSVIZ_ZOO_DIR", str(tmp_path / "zoo"))
    assert default_zoo_dir() == tmp_path / "zoo"

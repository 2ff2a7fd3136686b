"""The dashboard writes only under its export root, and never over (or into) a served model."""

from __future__ import annotations

import argparse

import pytest

import wsviz.ui  # noqa: F401 - loads the plotting backend
from tests.contract import copy_model, snapshot
from tests.ui.fake_workspace import FakeWorkspace
from wsviz.errors import WsvizError
from wsviz.session import open_workspace
from wsviz.ui.app import build_components
from wsviz.ui.launch import workspace_from_args


def test_names_typed_in_the_browser_stay_inside_the_root(tmp_path):
    c = build_components(FakeWorkspace())
    e, s = c.export, c.session
    root = tmp_path / "exports"
    s.workspace.export_root = root
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir(parents=True)
    (root / "escape").symlink_to(outside)
    for name in ("../x", str(outside / "y"), "/etc/wsviz-x", "escape/z", "sub/../../x", ".",
                 "~/wsviz-x"):
        s.last_error = ""
        e.write(name, force=True)
        assert "outside the export folder" in (s.last_error or ""), name
    assert list(outside.iterdir()) == [] and not (tmp_path / "x").exists()
    e.write("sub/merged")
    assert e.written == str(root / "sub" / "merged")


@pytest.fixture
def served(llama_set, tmp_path):
    """A workspace over private copies: ``tmp/zoo/base``, ``tmp/zoo/ft0``, ``tmp/zoo/ft1``."""
    zoo = tmp_path / "zoo"
    base = copy_model(llama_set.base, zoo / "base")
    fts = [copy_model(p, zoo / p.name) for p in llama_set.fts[:2]]
    ws = open_workspace(base, fts)
    c = build_components(ws, analyse=False)
    c.merge.method = "task_arithmetic"
    return ws, c, zoo


def test_export_never_overwrites_the_served_models(served, tmp_path):
    ws, c, zoo = served
    e, s = c.export, c.session
    before = snapshot(zoo)
    ws.export_root = tmp_path  # the root holds the served "zoo" itself
    for name in ("zoo", "zoo/base", "zoo/ft0", "zoo/base/merged", str(zoo)):
        s.last_error = ""
        e.write(name, force=True)  # "overwrite" ticked
        assert "input" in (s.last_error or ""), (name, s.last_error)
    assert snapshot(zoo) == before
    with pytest.raises(WsvizError, match="contains the input"):
        ws.write_merged(c.merge.recipe, "zoo", force=True)
    assert snapshot(zoo) == before


def test_default_root_and_launch_checks(llama_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = argparse.Namespace(demo=False, paths=[str(llama_set.base), str(llama_set.fts[0])],
                            eval=None, device=None, workspace=None, export_root=None)
    ws = workspace_from_args(ns)
    assert ws.export_root == (tmp_path / "wsviz-exports").resolve()
    ns.export_root = str(llama_set.base / "exports")
    with pytest.raises(WsvizError, match="inside the served model"):
        workspace_from_args(ns)
    ns.export_root = str(tmp_path / "elsewhere")
    assert workspace_from_args(ns).export_root == (tmp_path / "elsewhere").resolve()

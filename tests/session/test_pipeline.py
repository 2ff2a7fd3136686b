"""The merge -> prune -> write pipeline is the session's: ``wsviz merge RECIPE --prune
PRUNE.yml`` and the dashboard's "prune the current merge" export
(:meth:`ApiWorkspace.write_pruned` with the current merge) write the same directory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.contract import assert_user_error, run_cli
from wsviz.session import open_workspace
from wsviz.session.views import MERGE_TARGET


def _same_dirs(a, b) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb)
    for n in wa:
        assert wa[n].dtype == wb[n].dtype and torch.equal(wa[n], wb[n]), n
    assert (a / "wsviz_prune.yml").read_text() == (b / "wsviz_prune.yml").read_text()
    ra = json.loads((a / "wsviz_recipe.json").read_text())
    rb = json.loads((b / "wsviz_recipe.json").read_text())
    assert ra == rb
    assert json.loads((a / "config.json").read_text()) == json.loads(
        (b / "config.json").read_text())
    assert sum(int((t == 0).sum()) for t in wb.values()) > 0  # something was pruned


@pytest.mark.parametrize("fixture,method,params,prune,pparams", [
    ("llama_set", "ties", {"lambda": 1.0, "density": 0.5}, "magnitude",
     {"sparsity": 0.5, "scope": "row"}),
    ("llama_set_bf16", "task_arithmetic", {"lambda": 0.7}, "nm", {"n": 2, "m": 4}),
])
def test_cli_merge_prune_equals_the_session_export(request, tmp_path, fixture, method, params,
                                                   prune, pparams):
    ls = request.getfixturevalue(fixture)
    ws = open_workspace(ls.base, ls.fts)
    ws.export_root = tmp_path / "exports"
    merge = ws.make_recipe(method, params, {lab: {"weight": 1.0} for lab in ws.labels})
    ws.write_pruned(MERGE_TARGET, prune, pparams, "ui", force=False, merge=merge)
    rjson, pyml = tmp_path / "merge.json", tmp_path / "prune.yml"
    rjson.write_text(ws.recipe_json(merge))
    pyml.write_text(ws.prune_recipe_text(prune, pparams))
    rc, out, err = run_cli(["merge", rjson, "-o", tmp_path / "cli", "--prune", pyml,
                            "--no-progress"])
    assert rc == 0, err
    assert "pruned" in out
    _same_dirs(ws.export_root / "ui", tmp_path / "cli")


def test_cli_merge_prune_wanda_on_the_merge(llama_set, tmp_path):
    """Wanda calibrates on the merged model, in the CLI as in the session."""
    ids = tmp_path / "calib.pt"
    torch.save(torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3)), ids)
    ws = open_workspace(llama_set.base, llama_set.fts, calib=str(ids))
    ws.export_root = tmp_path / "exports"
    merge = ws.make_recipe("task_arithmetic", {"lambda": 0.5},
                           {lab: {"weight": 1.0} for lab in ws.labels})
    ws.write_pruned(MERGE_TARGET, "wanda", {"sparsity": 0.4}, "ui", force=False, merge=merge)
    rjson, pyml = tmp_path / "merge.json", tmp_path / "prune.yml"
    rjson.write_text(ws.recipe_json(merge))
    pyml.write_text("method: wanda\nsparsity: 0.4\n")
    rc, _, err = run_cli(["merge", rjson, "-o", tmp_path / "cli", "--prune", pyml,
                          "--calib", ids, "--no-progress"])
    assert rc == 0, err
    a = load_file(str(ws.export_root / "ui" / "model.safetensors"))
    b = load_file(str(tmp_path / "cli" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_cli_merge_prune_refusals(llama_set, tmp_path):
    ws = open_workspace(llama_set.base, llama_set.fts)
    rjson, pyml = tmp_path / "merge.json", tmp_path / "prune.yml"
    rjson.write_text(ws.recipe_json(ws.make_recipe(
        "ties", {"density": 0.5}, {lab: {"weight": 1.0} for lab in ws.labels})))
    pyml.write_text("method: wanda\nsparsity: 0.4\n")
    assert_user_error(run_cli(["merge", rjson, "-o", tmp_path / "o", "--prune", pyml]),
                      "--calib")
    assert_user_error(run_cli(["merge", rjson, "-o", tmp_path / "o", "--calib", pyml]),
                      "--prune")
    pyml.write_text("method: magnitude\nsparsity: 0.5\n")
    assert_user_error(run_cli(["merge", rjson, "-o", llama_set.fts[0], "--prune", pyml,
                               "--force"]), "input")
    assert not (tmp_path / "o").exists()

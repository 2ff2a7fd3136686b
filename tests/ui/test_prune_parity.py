"""Pruning is defined once (wsviz.recipes.prune): ``wsviz prune`` and the dashboard backend
give bit-identical tensors (fp32 and bf16 checkpoints, every method, Wanda, a merged model),
and the dashboard's export writes the same files under its export root only."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.contract import assert_user_error, run_cli
from wsviz.errors import WsvizError
from wsviz.recipes.prune import PruneRecipe
from wsviz.session import open_workspace
from wsviz.session.views import MERGE_TARGET

RECIPES = [
    {"method": "magnitude", "sparsity": 0.5},
    {"method": "magnitude", "sparsity": 0.4, "scope": "global"},
    {"method": "magnitude", "schedule": [0.2, 0.8], "exclude": ["*.o_proj.*"]},
    {"method": "magnitude", "sparsity": 0.3, "scope": "row",
     "schedule": [{"filter": "mlp", "value": 0.6}]},
    {"method": "random", "sparsity": 0.3, "seed": 5, "include": ["*embed*", "*.mlp.*"]},
    {"method": "structured", "sparsity": 0.25, "dim": 1},
    {"method": "nm", "n": 2, "m": 4},
]


def _weights(d) -> dict:
    return load_file(str(d / "model.safetensors"))


def _cli_prune(model, recipe: dict, tmp_path, name="cli", extra=()):
    yml = tmp_path / f"{name}.yml"
    yml.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    rc, stdout, err = run_cli(["prune", model, "--recipe", yml, "-o", out, "--no-progress",
                               *extra])
    assert rc == 0, err
    return _weights(out)


def _assert_same(ui: dict, cli: dict, names) -> int:
    zeros = 0
    for n in names:
        assert ui[n].dtype == cli[n].dtype, n
        assert torch.equal(ui[n].cpu(), cli[n]), n
        zeros += int((cli[n] == 0).sum())
    assert zeros > 0  # something was pruned
    return zeros


@pytest.mark.parametrize("fixture", ["llama_set", "llama_set_bf16"])
@pytest.mark.parametrize("recipe", RECIPES, ids=[r["method"] + str(i)
                                                 for i, r in enumerate(RECIPES)])
def test_cli_and_ui_prune_bit_identical(request, fixture, recipe, tmp_path):
    ls = request.getfixturevalue(fixture)
    ws = open_workspace(ls.base, ls.fts)
    params = {k: v for k, v in recipe.items() if k != "method"}
    for target, path in (("ft1", ls.fts[1]), ("base", ls.base)):
        cli = _cli_prune(path, recipe, tmp_path, f"cli-{target}")
        ui = ws.prune_weights(target, recipe["method"], params)
        _assert_same(ui, cli, ws.ms.names)
        # the tuner's keep-mask is the written tensor's non-zero pattern
        name = "model.layers.2.mlp.gate_proj.weight"
        mask = ws.prune_mask(name, target, recipe["method"], params)
        assert (mask == (cli[name] != 0).numpy()).all()
    if fixture == "llama_set_bf16":
        assert cli["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16


def test_wanda_cli_and_ui_identical_and_per_row(llama_set, tmp_path):
    from wsviz.compute import masks
    from wsviz.recipes.calibration import calibration_norms

    ids = tmp_path / "calib.pt"
    torch.save(torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)), ids)
    recipe = {"method": "wanda", "sparsity": 0.5}
    cli = _cli_prune(llama_set.fts[0], recipe, tmp_path, extra=["--calib", ids])
    ws = open_workspace(llama_set.base, llama_set.fts, calib=str(ids))
    assert "wanda" in ws.prune_methods()
    ui = ws.prune_weights("ft0", "wanda", {"sparsity": 0.5})
    _assert_same(ui, cli, ws.ms.names)
    # the mask is Wanda's |W|·||X|| per output row with the model's own activations
    name = "model.layers.2.mlp.down_proj.weight"
    norms = calibration_norms(llama_set.fts[0], str(ids))
    w = ws.ms.source("ft0", name).get(name)
    want = masks.wanda_mask(w, norms["model.layers.2.mlp.down_proj"], 0.5)
    assert torch.equal(cli[name] != 0, want)
    assert ((cli[name] == 0).sum(1) == w.shape[1] // 2).all()
    # differs from plain magnitude (the activations matter)
    assert not torch.equal(want, masks.magnitude_mask(w, 0.5, scope="row"))
    # the exported recipe names the calibration file: `wsviz prune --recipe` reproduces it
    ws.export_root = tmp_path / "exports"
    ws.write_pruned("ft0", "wanda", {"sparsity": 0.5}, "w", force=False)
    exported = ws.export_root / "w"
    assert PruneRecipe.load(exported / "wsviz_prune.yml").calib == str(ids)
    rc, _, err = run_cli(["prune", llama_set.fts[0], "--recipe", exported / "wsviz_prune.yml",
                          "-o", tmp_path / "again", "--no-progress"])
    assert rc == 0, err
    again = _weights(tmp_path / "again")
    assert all(torch.equal(again[n], cli[n]) for n in cli)


def test_wanda_on_the_current_merge_equals_cli_on_the_merged_dir(llama_set, tmp_path):
    ids = tmp_path / "calib.pt"
    torch.save(torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1)), ids)
    ws = open_workspace(llama_set.base, llama_set.fts, calib=str(ids))
    merge = ws.make_recipe("task_arithmetic", {"lambda": 0.7},
                           {lab: {"weight": 1.0} for lab in ws.labels})
    rjson = tmp_path / "merge.json"
    rjson.write_text(ws.recipe_json(merge))
    assert run_cli(["merge", rjson, "-o", tmp_path / "merged", "--no-progress"])[0] == 0
    cli = _cli_prune(tmp_path / "merged", {"method": "wanda", "sparsity": 0.4}, tmp_path,
                     extra=["--calib", ids])
    ui = ws.prune_weights(MERGE_TARGET, "wanda", {"sparsity": 0.4}, merge=merge)
    _assert_same(ui, cli, ws.ms.names)
    base = ws.prune_weights("base", "wanda", {"sparsity": 0.4})
    name = "model.layers.3.mlp.up_proj.weight"
    assert not torch.equal(base[name] != 0, ui[name] != 0)  # the merge's own activations


@pytest.mark.parametrize("fixture", ["llama_set", "llama_set_bf16"])
def test_prune_current_merge_equals_merge_then_prune_cli(request, fixture, tmp_path):
    ls = request.getfixturevalue(fixture)
    ws = open_workspace(ls.base, ls.fts)
    ws.export_root = tmp_path / "exports"
    merge = ws.make_recipe("ties", {"lambda": 1.0, "density": 0.5},
                           {lab: {"weight": 1.0} for lab in ws.labels})
    rjson = tmp_path / "merge.json"
    rjson.write_text(ws.recipe_json(merge))
    rc, _, err = run_cli(["merge", rjson, "-o", tmp_path / "merged", "--no-progress"])
    assert rc == 0, err
    recipe = {"method": "magnitude", "sparsity": 0.5, "scope": "row"}
    cli = _cli_prune(tmp_path / "merged", recipe, tmp_path)
    ui = ws.prune_weights(MERGE_TARGET, "magnitude", {"sparsity": 0.5, "scope": "row"},
                          merge=merge)
    _assert_same(ui, cli, ws.ms.names)
    # export: the same tensors, the prune recipe and the merge recipe beside them
    path = ws.write_pruned(MERGE_TARGET, "magnitude", {"sparsity": 0.5, "scope": "row"},
                           "pruned-merge", force=False, merge=merge)
    out = ws.export_root / "pruned-merge"
    assert path == str(out)
    got = _weights(out)
    assert set(got) == set(cli) and all(torch.equal(got[n], cli[n]) for n in cli)
    assert PruneRecipe.load(out / "wsviz_prune.yml").to_dict() == recipe
    assert json.loads((out / "wsviz_recipe.json").read_text())["method"] == "ties"
    assert json.loads((out / "config.json").read_text())["architectures"]
    with pytest.raises(WsvizError, match="no current merge"):
        ws.prune_weights(MERGE_TARGET, "magnitude", {"sparsity": 0.5})


def test_ui_export_of_a_model_equals_cli_and_stays_in_the_export_root(llama_set, tmp_path):
    ws = open_workspace(llama_set.base, llama_set.fts)
    ws.export_root = tmp_path
    params = {"sparsity": 0.3, "seed": 2}
    calls = []
    ws.write_pruned("ft2", "random", params, "p", force=False,
                    progress=lambda f, m: calls.append(f))
    assert calls[-1] == 1.0
    (tmp_path / "c").mkdir()
    cli = _cli_prune(llama_set.fts[2], {"method": "random", **params}, tmp_path / "c")
    got = _weights(tmp_path / "p")
    assert set(got) == set(cli) and all(torch.equal(got[n], cli[n]) for n in cli)
    text = ws.prune_recipe_text("random", params)
    assert PruneRecipe.from_text(text).to_dict() == {"method": "random", **params}
    assert (tmp_path / "p" / "wsviz_prune.yml").read_text() == text
    with pytest.raises(WsvizError, match="exists"):
        ws.write_pruned("ft2", "random", params, "p", force=False)
    ws.write_pruned("ft2", "magnitude", {"sparsity": 0.9}, "p", force=True)
    assert (_weights(tmp_path / "p")["model.layers.0.mlp.up_proj.weight"] == 0).float().mean() \
        == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(WsvizError, match="outside the export folder"):
        ws.write_pruned("ft2", "magnitude", {"sparsity": 0.5}, "../escape", force=False)
    # never over an input, even with force: export root = the folder holding the models
    ws.export_root = llama_set.base.parent
    before = (llama_set.fts[0] / "model.safetensors").read_bytes()
    for name in ("ft0", "ft0/sub"):
        with pytest.raises(WsvizError, match="input"):
            ws.write_pruned("ft2", "magnitude", {"sparsity": 0.5}, name, force=True)
    assert (llama_set.fts[0] / "model.safetensors").read_bytes() == before
    with pytest.raises(WsvizError, match="sparsity=2"):
        ws.write_pruned("ft2", "magnitude", {"sparsity": 2}, "q", force=False)


def test_cli_recipe_flags_and_save_recipe(llama_set, tmp_path):
    base = llama_set.base
    saved = tmp_path / "r.yml"
    rc, out, err = run_cli(["prune", base, "--method", "2:4", "--exclude", "*.o_proj.*",
                            "--save-recipe", saved])
    assert rc == 0 and "wrote" in out, err
    assert PruneRecipe.load(saved).to_dict() == {"method": "nm", "n": 2, "m": 4,
                                                 "exclude": ["*.o_proj.*"]}
    via_flags = tmp_path / "a"
    assert run_cli(["prune", base, "--method", "2:4", "--exclude", "*.o_proj.*", "-o",
                    via_flags, "--no-progress"])[0] == 0
    w = _cli_prune(base, yaml.safe_load(saved.read_text()), tmp_path, "b")
    a = _weights(via_flags)
    assert all(torch.equal(a[n], w[n]) for n in a)
    o = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(a[o], _weights(base)[o])  # excluded: unchanged
    assert yaml.safe_load((via_flags / "wsviz_prune.yml").read_text())["method"] == "nm"
    assert_user_error(run_cli(["prune", base, "--recipe", saved, "--sparsity", "0.5", "-o",
                               tmp_path / "x"]), "--recipe sets the recipe", "--sparsity")
    assert_user_error(run_cli(["prune", base, "--method", "magnitude", "--sparsity", "0.5",
                               "--save-recipe", saved]), "exists")
    assert_user_error(run_cli(["prune", base, "--method", "magnitude", "--sparsity", "0.5",
                               "--save-recipe", base / "config.json", "--force"]), "input")
    assert_user_error(run_cli(["prune", base, "--method", "magnitude", "--sparsity", "0.5"]),
                      "-o OUTDIR")
    assert_user_error(run_cli(["prune", base, "--method", "random", "--sparsity", "0.5",
                               "--dim", "1", "-o", tmp_path / "y"]), "dim")
    bad = tmp_path / "bad.yml"
    bad.write_text("method: magnitude\nsparsity: 0.5\nincldue: ['*']\n")
    assert_user_error(run_cli(["prune", base, "--recipe", bad, "-o", tmp_path / "z"]),
                      "bad.yml", "unknown key 'incldue'")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_serve_calib_enables_wanda(llama_set, tmp_path):
    from wsviz.ui.launch import parse_app_args, workspace_from_args

    ids = tmp_path / "ids.pt"
    torch.save(torch.randint(0, 128, (1, 8)), ids)
    ns = parse_app_args([str(llama_set.base), *map(str, llama_set.fts), "--calib", str(ids),
                         "--export-root", str(tmp_path / "x")])
    ws = workspace_from_args(ns)
    assert "wanda" in ws.prune_methods()
    name = "model.layers.0.self_attn.q_proj.weight"
    m = ws.prune_mask(name, "base", "wanda", {"sparsity": 0.25})
    assert (m.sum(1) == m.shape[1] * 3 // 4).all()
    with pytest.raises(WsvizError, match="drop --calib"):
        workspace_from_args(parse_app_args(["--demo", "--calib", str(ids)]))
    with pytest.raises(WsvizError, match="no such file"):
        workspace_from_args(parse_app_args([str(llama_set.base), str(llama_set.fts[0]),
                                            "--calib", str(tmp_path / "none.pt")]))

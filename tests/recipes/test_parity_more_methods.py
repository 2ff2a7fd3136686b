"""Parity with mergekit 0.1.5 for nuslerp, multislerp, karcher, sce, ram, ramplus_tl,
arcee_fusion, nearswap, passthrough and mergekit's ``slices:`` form (frankenmerges), on the
tiny Llama family saved in float32 and in bfloat16: wsviz's merged checkpoint equals
mergekit's output for the YAML wsviz exports (mergekit runs every config in-process, imported once: tests/recipes/mergekit_runner.py).
fp32: within 1e-6; bf16 (both compute in bf16): bit for bit, dtype included.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.mergekit_runner import run_mergekit
from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir

pytestmark = pytest.mark.slow

#: recipe dtypes: fp32 explicit; bf16 without ``dtype`` (inputs' dtype) for ``models:``
#: recipes and explicit ``bfloat16`` for the slices
DTYPES = {"fp32": ("float32", "float32"), "bf16": (None, "bfloat16")}


@pytest.fixture(scope="module")
def sets(llama_set, tmp_path_factory):
    """``{"fp32": (base, [ft0, ft1, ft2]), "bf16": (...)}`` checkpoint paths (bf16: the same
    models cast and saved in bfloat16)."""
    root = tmp_path_factory.mktemp("bf16_set")
    paths = [root / n for n in ("base", "ft0", "ft1", "ft2")]
    for m, p in zip([llama_set.base_model, *llama_set.ft_models], paths):
        copy.deepcopy(m).to(torch.bfloat16).save_pretrained(p)
    return {"fp32": (str(llama_set.base), [str(p) for p in llama_set.fts]),
            "bf16": (str(paths[0]), [str(p) for p in paths[1:]])}


def _recipes(base: str, fts: list[str], dtype: str | None, slices_dtype: str
             ) -> dict[str, Recipe]:
    def w(*ws, **extra):
        return [{"model": f, "params": {"weight": x, **extra}} for f, x in zip(fts, ws)]

    kw = {"dtype": dtype}
    kws = {"dtype": slices_dtype}
    src = [{"model": f, "layer_range": [0, 4]} for f in fts]
    return {
        "nuslerp": Recipe("nuslerp", models=w([0.2, 0.8], 0.6), **kw),
        "nuslerp_base_rows": Recipe("nuslerp", base=base, models=w(0.3, 0.7), params={
            "nuslerp_flatten": False, "nuslerp_row_wise": True}, **kw),
        "multislerp": Recipe("multislerp", models=w(1.0, 0.5, [0.2, 0.9]), **kw),
        "multislerp_base": Recipe("multislerp", base=base, models=w(0.5, 0.3, 0.2),
                                  params={"normalize_weights": False}, **kw),
        "karcher": Recipe("karcher", models=[*fts, base], params={"max_iter": 5}, **kw),
        "sce": Recipe("sce", base=base, models=fts, params={"select_topk": [0.3, 0.8]}, **kw),
        "ram": Recipe("ram", base=base, models=fts, **kw),
        "ramplus_tl": Recipe("ramplus_tl", base=base, models=fts,
                             params={"r": 0.3, "alpha": 0.5}, **kw),
        "arcee_fusion": Recipe("arcee_fusion", base=base, models=fts[:1], seed=5, **kw),
        "nearswap": Recipe("nearswap", base=base, models=fts[1:2],
                           params={"t": [{"filter": "mlp", "value": 0.02}, {"value": 0.005}]},
                           **kw),
        "passthrough": Recipe("passthrough", models=[{"model": fts[2], "params": {
            "scale": [{"filter": "o_proj", "value": 0.5}]}}], **kw),
        # frankenmerge: 3 layers of ft0 then 3 of ft1 -> 6 layers; per-source parameters
        # are resolved with the *input* tensor names (layers.1 of ft1 is output layer 3)
        "slices_passthrough": Recipe("passthrough", slices=[
            {"sources": [{"model": fts[0], "layer_range": [0, 3]}]},
            {"sources": [{"model": fts[1], "layer_range": [1, 4], "params": {"scale": [
                {"filter": "layers.1.", "value": 0.25}, {"filter": "down_proj", "value": 0.5}]}}],
             "params": {"scale": 0.9}},
        ], **kws),
        # mergekit's classic SLERP config: slices with the base among the sources
        "slices_slerp": Recipe("slerp", base=base, slices=[{"sources": [
            {"model": fts[0], "layer_range": [0, 4]}, {"model": base, "layer_range": [0, 4]}]}],
            params={"t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                          {"value": 0.4}]}, **kws),
        # per-slice bases and parameters, a gradient within each 2-layer slice
        "slices_ties": Recipe("ties", base=base, params={"density": 0.5}, slices=[
            {"sources": [{"model": base, "layer_range": [0, 2]},
                         {"model": fts[0], "layer_range": [0, 2], "params": {"weight": 1.0}},
                         {"model": fts[1], "layer_range": [0, 2],
                          "params": {"weight": [0.2, 1.0]}}]},
            {"sources": [{"model": fts[2], "layer_range": [2, 4]},
                         {"model": fts[1], "layer_range": [1, 3], "params": {"weight": 0.7}},
                         {"model": base, "layer_range": [2, 4], "params": {"weight": 0.5}}],
             "base": fts[2], "params": {"density": [0.3, 0.9]}},
        ], **kws),
        "slices_karcher": Recipe("karcher", slices=[{"sources": src}], **kw),
    }


NAMES = list(_recipes("b", ["a", "c", "d"], "float32", "float32"))


@pytest.fixture(scope="module")
def mergekit_outputs(sets, tmp_path_factory):
    root = tmp_path_factory.mktemp("mk_more")
    recipes, jobs = {}, []
    for dt, (base, fts) in sets.items():
        for name, r in _recipes(base, fts, *DTYPES[dt]).items():
            key = f"{name}-{dt}"
            recipes[key] = r
            y = root / f"{key}.yml"
            y.write_text(r.to_mergekit_yaml())
            jobs.append({"yaml": str(y), "out": str(root / f"out_{key}"), "seed": r.seed})
    run_mergekit(jobs)
    return root, recipes


def _load(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def _assert_same(got: dict, ref: dict, dt: str, name: str):
    assert set(ref) <= set(got), sorted(set(ref) - set(got))[:5]
    for k in ref:
        assert got[k].dtype == ref[k].dtype, (name, k, got[k].dtype, ref[k].dtype)
        if dt == "bf16":
            assert torch.equal(got[k], ref[k]), (name, k, (got[k].float() - ref[k].float())
                                                 .abs().max().item())
        else:
            diff = (got[k].double() - ref[k].double()).abs().max().item()
            assert diff <= 1e-6, f"{name}: {k}: max abs diff {diff}"


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", NAMES)
def test_disk_merge_equals_mergekit(mergekit_outputs, tmp_path, name, dt):
    root, recipes = mergekit_outputs
    r = recipes[f"{name}-{dt}"]
    ref_dir = root / f"out_{name}-{dt}"
    out = merge_to_dir(r, tmp_path / "o", progress=False)
    _assert_same(_load(out), _load(ref_dir), dt, name)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == json.loads((ref_dir / "config.json").read_text())[
        "num_hidden_layers"]


def test_frankenmerge_loads_with_its_new_depth(mergekit_outputs, tmp_path):
    """The passthrough frankenmerge is a working 6-layer Llama whose layers are the
    sources' layers (ft0's 0-2, then ft1's 1-3 scaled as configured)."""
    from transformers import AutoModelForCausalLM

    root, recipes = mergekit_outputs
    r = recipes["slices_passthrough-fp32"]
    out = merge_to_dir(r, tmp_path / "fm", progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 128) and torch.isfinite(logits).all()
    got = _load(out)
    ft0 = _load(Path(r.slices[0].sources[0].model))
    ft1 = _load(Path(r.slices[1].sources[0].model))
    q = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(got[q.format(2)], ft0[q.format(2)])
    assert torch.equal(got[q.format(3)], ft1[q.format(1)] * 0.25)  # input name filter
    assert torch.equal(got[q.format(4)], ft1[q.format(2)] * 0.9)  # slice parameter
    d = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(got[d.format(5)], ft1[d.format(3)] * 0.5)
    assert torch.equal(got["model.embed_tokens.weight"], ft0["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], ft1["lm_head.weight"] * 0.9)
    back = Recipe.from_mergekit_yaml((out / "mergekit_config.yml").read_text())
    assert back == r and Recipe.from_json((out / "wsviz_recipe.json").read_text()) == r


@pytest.mark.parametrize("name", ["nuslerp", "multislerp_base", "karcher", "sce",
                                  "ramplus_tl", "arcee_fusion", "nearswap", "passthrough"])
def test_inmemory_merge_equals_mergekit(mergekit_outputs, sets, name):
    from wsviz.io import ModelSet

    root, recipes = mergekit_outputs
    r = recipes[f"{name}-fp32"]
    base, fts = sets["fp32"]
    merger = InMemoryMerger(ModelSet.open(base, fts, labels=fts))
    d = r.to_dict()
    d["base"] = "base" if r.base else None
    d["models"] = [{**m, "model": "base" if m["model"] == base else m["model"]}
                   for m in d["models"]]
    got = merger.merge(Recipe.from_dict(d))
    ref = _load(root / f"out_{name}-fp32")
    worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-6, f"{name}: max abs diff {worst}"

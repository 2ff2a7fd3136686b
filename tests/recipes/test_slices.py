"""mergekit ``slices:`` recipes: YAML / JSON round trips, strict validation with clear
errors, the disk merge from ``wsviz merge``, and what stays refused (``modules:``, in-memory
merges of slices)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wsviz.cli import main
from wsviz.errors import RecipeError
from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir

FRANKEN = """\
slices:
  - sources:
      - model: /m/a
        layer_range: [0, 3]
  - sources:
      - model: /m/b
        layer_range: [1, 4]
        parameters:
          scale:
            - filter: o_proj
              value: 0.0
            - value: 1.0
merge_method: passthrough
dtype: bfloat16
"""

SLERP = """\
slices:
  - sources:
      - model: /m/a
        layer_range: [0, 32]
      - model: /m/b
        layer_range: [0, 32]
merge_method: slerp
base_model: /m/a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""


@pytest.mark.parametrize("text", [FRANKEN, SLERP], ids=["frankenmerge", "slerp"])
def test_mergekit_slices_round_trip(text):
    from mergekit.config import MergeConfiguration

    r = Recipe.from_mergekit_yaml(text)
    assert r.slices is not None and not r.models
    out = r.to_mergekit_yaml()
    assert yaml.safe_load(out)["slices"] == yaml.safe_load(text)["slices"]
    MergeConfiguration.model_validate(yaml.safe_load(out))  # mergekit reads it
    assert Recipe.from_mergekit_yaml(out) == r
    assert Recipe.from_json(r.to_json()) == r


def test_with_paths_maps_slice_models():
    r = Recipe.from_mergekit_yaml(SLERP).with_paths({"/m/a": "/x/a", "/m/b": "/x/b"})
    assert r.base == "/x/a"
    assert [s.model for s in r.slices[0].sources] == ["/x/a", "/x/b"]


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(modules={"text": {}}), "modules"),
    (lambda d: d.update(models=[{"model": "/m/a"}]), "exactly one of 'models:' or 'slices:'"),
    (lambda d: d["slices"][0]["sources"][1].update(layer_range=[0, 30]),
     "same number of layers"),
    (lambda d: d["slices"][0]["sources"][1].update(layer_range=[5, 2]), "layer_range"),
    (lambda d: d.update(base_model="/m/c"), "base '/m/c' is not among its sources"),
    (lambda d: d.pop("base_model"), "needs a base model"),
    (lambda d: d["slices"][0].update(residual_weight=0.5), "residual_weight"),
    (lambda d: d["slices"][0].update(parameters={"tt": 0.3}), "unknown parameter 'tt'"),
    (lambda d: d["slices"][0]["sources"][1].update(parameters={"t": 0.3}),
     "global parameter"),
    (lambda d: d["slices"][0]["sources"].append({"model": "/m/c", "layer_range": [0, 32]}),
     "at most 1 source"),
    (lambda d: d["slices"][0]["sources"][1].update(model="/m/a"), "listed twice"),
    (lambda d: d["slices"][0]["sources"][1].update(lr=[0, 3]), "unknown key"),
    (lambda d: d["slices"][0]["sources"][0].update(parameters={"weight": 1.0}),
     "unknown parameter 'weight'"),
    (lambda d: (d.update(merge_method="nuslerp", parameters={}), d["slices"][0]["sources"].append(
        {"model": "/m/c", "layer_range": [0, 32], "parameters": {"weight": 1}}),
        d["slices"][0]["sources"][0].update(parameters={"weight": 1.0}),
        d["slices"][0]["sources"][1].update(parameters={"weight": 1.0})), "is the base"),
    (lambda d: (d.update(merge_method="linear", parameters={"weight": 1.0}),
                d["slices"][0].update(base_model="/m/b")), "has no effect for 'linear'"),
])
def test_bad_slices_are_refused_with_the_reason(edit, match):
    d = yaml.safe_load(SLERP)
    edit(d)
    with pytest.raises(RecipeError, match=match):
        Recipe.from_mergekit_yaml(yaml.safe_dump(d))


def test_slices_merge_to_disk_from_the_cli(llama_set, tmp_path, capsys):
    """``wsviz merge`` on a frankenmerge YAML: 6 layers from two 4-layer models; the
    in-memory merger and a range past a model's layers are refused clearly."""
    a, b = (str(p) for p in llama_set.fts[:2])
    y = tmp_path / "fm.yml"
    y.write_text(FRANKEN.replace("/m/a", a).replace("/m/b", b).replace("bfloat16", "float32"))
    assert main(["merge", str(y), "-o", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "o"
    got = load_file(str(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6
    assert sum(k.endswith("q_proj.weight") for k in got) == 6
    src = load_file(str(llama_set.fts[1] / "model.safetensors"))
    o = "model.layers.{}.self_attn.o_proj.weight"
    assert torch.equal(got[o.format(3)], torch.zeros_like(src[o.format(1)]))  # scale 0
    u = "model.layers.{}.mlp.up_proj.weight"
    assert torch.equal(got[u.format(5)], src[u.format(3)])
    assert main(["merge", str(y), "--to-json"]) == 0
    assert json.loads(capsys.readouterr().out)["slices"][1]["sources"][0]["layer_range"] == [1, 4]

    r = Recipe.load(y)
    from wsviz.io import ModelSet

    merger = InMemoryMerger(ModelSet.open(str(llama_set.base), [a, b]))
    with pytest.raises(RecipeError, match="merge it to disk"):
        merger.merge(r)
    y.write_text(y.read_text().replace("[1, 4]", "[2, 5]"))
    assert main(["merge", str(y), "-o", str(tmp_path / "o2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "exceeds its 4 layers" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()


def test_slices_recipe_api(llama_set, tmp_path):
    """A slices Recipe built in Python (wsviz's own dict form) merges like its YAML."""
    a, b = (str(p) for p in llama_set.fts[:2])
    r = Recipe("linear", params={"weight": 1.0}, slices=[
        {"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [2, 4],
                                                            "params": {"weight": 3.0}}]}])
    assert r.to_dict()["slices"][0]["sources"][1]["params"] == {"weight": 3.0}
    out = merge_to_dir(r, tmp_path / "lin", progress=False)
    got = load_file(str(out / "model.safetensors"))
    sa = load_file(str(llama_set.fts[0] / "model.safetensors"))
    sb = load_file(str(llama_set.fts[1] / "model.safetensors"))
    k = "model.layers.{}.mlp.gate_proj.weight"
    want = (sa[k.format(1)] + 3 * sb[k.format(3)]) / 4
    assert torch.allclose(got[k.format(1)], want, atol=1e-6)
    assert set(got) == {n for n in sa if ".layers.2." not in n and ".layers.3." not in n}


def test_models_with_two_layer_stacks_are_refused(tmp_path):
    """An encoder-decoder has two block stacks: slicing "layer j" would mix them."""
    from safetensors.torch import save_file

    sd = {f"{s}.layers.{i}.fc.weight": torch.ones(2, 2) for s in ("encoder", "decoder")
          for i in range(2)}
    save_file(sd, str(tmp_path / "ed.safetensors"))
    r = Recipe("passthrough", slices=[{"sources": [
        {"model": str(tmp_path / "ed.safetensors"), "layer_range": [0, 1]}]}])
    with pytest.raises(RecipeError, match="one stack of layers"):
        merge_to_dir(r, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()

"""``wsviz merge``, the disk merge and the in-memory merger on small real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from wsviz.cli import main
from wsviz.errors import AlignmentError, RecipeError
from wsviz.io import ModelSet
from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir


def _ties(ls, **kw):
    return Recipe("ties", base=str(ls.base), models=[
        {"model": str(p), "params": {"weight": 1.0, "density": 0.4}} for p in ls.fts], **kw)


def test_cli_merge_yaml_and_json(llama_set, tmp_path, capsys):
    r = _ties(llama_set)
    y = tmp_path / "r.yml"
    y.write_text(r.to_mergekit_yaml())
    j = tmp_path / "r.json"
    j.write_text(r.to_json())
    assert main(["merge", str(y), "-o", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["merge", str(j), "-o", str(tmp_path / "b"), "--no-progress"]) == 0
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "a"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert Recipe.from_json((out / "wsviz_recipe.json").read_text()) == r
    assert Recipe.from_mergekit_yaml((out / "mergekit_config.yml").read_text()) == r
    # existing output refused without --force, replaced with it
    assert main(["merge", str(y), "-o", str(out), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["merge", str(y), "-o", str(out), "--no-progress", "--force"]) == 0
    # recipe export
    assert main(["merge", str(j), "--to-yaml"]) == 0
    assert "merge_method: ties" in capsys.readouterr().out


def test_cli_merge_bad_recipe(tmp_path, capsys):
    y = tmp_path / "r.yml"
    y.write_text("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
                 "{weight: 1, dennsity: 0.3}\n")
    assert main(["merge", str(y), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dennsity" in err and "density" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_disk_merge_shards_and_misaligned(llama_set, tmp_path):
    r = _ties(llama_set)
    out = merge_to_dir(r, tmp_path / "o", progress=False, max_shard_bytes=20_000)
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) > 1
    from tests.checkpoints import make_llama

    other = make_llama(1, hidden_size=48, intermediate_size=64)
    other.save_pretrained(tmp_path / "other")
    bad = Recipe("ties", base=str(llama_set.base), models=[
        {"model": str(tmp_path / "other"), "params": {"weight": 1.0}}])
    with pytest.raises(AlignmentError):
        merge_to_dir(bad, tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()


@pytest.fixture(scope="module")
def merger(llama_set):
    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts],
                       labels=["a", "b", "c"])
    return InMemoryMerger(ms)


def test_inmemory_matches_disk_and_subsets(merger, llama_set, tmp_path):
    disk = Recipe("dare_ties", base=str(llama_set.base), seed=9, models=[
        {"model": str(llama_set.fts[i]), "params": {"weight": 1.0, "density": 0.5}}
        for i in (2, 0)])
    out = load_file(str(merge_to_dir(disk, tmp_path / "o", progress=False)
                        / "model.safetensors"))
    mem = Recipe("dare_ties", base="base", seed=9, models=[
        {"model": lab, "params": {"weight": 1.0, "density": 0.5}} for lab in ("c", "a")])
    got = merger.merge(mem)
    assert set(got) == set(merger.names)
    assert max((got[k] - out[k]).abs().max().item() for k in got) <= 1e-6
    # same recipe twice: identical (seeded), and the rank cache fills on magnitude methods
    ties = Recipe("ties", base="base", models=[
        {"model": lab, "params": {"weight": 1.0, "density": 0.3}} for lab in "abc"])
    t1 = merger.merge(ties)
    assert "ranks" in merger._cache[merger.names[0]]
    t2 = merger.merge(ties)
    assert all(torch.equal(t1[k], t2[k]) for k in t1)


def test_inmemory_unknown_label(merger):
    with pytest.raises(RecipeError, match="not in the model set"):
        merger.merge(Recipe("task_arithmetic", base="base",
                            models=[{"model": "zzz", "params": {"weight": 1.0}}]))


def test_inmemory_linear_with_base_label(merger):
    r = Recipe("linear", models=[{"model": "base", "params": {"weight": 1.0}},
                                 {"model": "a", "params": {"weight": 1.0}}])
    got = merger.merge(r, names=merger.names[:2])
    n = merger.names[0]
    ref = merger.base(n) + 0.5 * merger.deltas(n)[0]
    assert (got[n] - ref).abs().max() <= 1e-6


def test_inmemory_recipe_exports_with_paths(merger, llama_set, tmp_path):
    r = Recipe("ties", base="base", models=[
        {"model": lab, "params": {"weight": 1.0, "density": 0.3}} for lab in "ab"])
    paths = merger.paths()
    text = r.to_mergekit_yaml(paths=paths)
    assert str(llama_set.base) in text and str(llama_set.fts[1]) in text
    out = load_file(str(merge_to_dir(r.with_paths(paths), tmp_path / "o", progress=False)
                        / "model.safetensors"))
    got = merger.merge(r)
    assert max((got[k] - out[k]).abs().max().item() for k in got) <= 1e-6

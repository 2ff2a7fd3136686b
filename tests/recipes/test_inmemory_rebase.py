"""A recipe whose base is one of the fine-tuned models: the in-memory merger honours it with
mergekit's semantics (that model's tensors are the base, task vectors are taken against it),
bit-identical to mergekit on the exported YAML; a base outside the set is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wsviz.errors import RecipeError
from wsviz.io import ModelSet
from wsviz.recipes import InMemoryMerger, Recipe

RUNNER = Path(__file__).with_name("mergekit_runner.py")
LABELS = ["ft0", "ft1", "ft2"]


def _recipes(ls) -> dict[str, Recipe]:
    """Path recipes (what the YAML names) with base = ft0."""
    f = [str(p) for p in ls.fts]
    ms = [{"model": f[1], "params": {"weight": 1.0, "density": 0.5}},
          {"model": f[2], "params": {"weight": 0.6, "density": 0.4}}]
    return {
        "task_arithmetic": Recipe("task_arithmetic", base=f[0], params={"lambda": 0.9},
                                  models=[{"model": m["model"], "params": {
                                      "weight": m["params"]["weight"]}} for m in ms]),
        "ties": Recipe("ties", base=f[0], models=ms, params={"lambda": 1.0}),
        "slerp": Recipe("slerp", base=f[0], models=[f[1]], params={"t": [0.2, 0.8]}),
    }


def _as_labels(r: Recipe, ls) -> Recipe:
    names = {str(p): lab for p, lab in zip(ls.fts, LABELS)}
    d = r.to_dict()
    d["base"] = names[d["base"]]
    d["models"] = [{**m, "model": names[m["model"]]} if isinstance(m, dict) else names[m]
                   for m in d["models"]]
    return Recipe.from_dict(d)


@pytest.fixture(scope="module")
def mergekit_refs(llama_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("rebase")
    jobs = []
    for name, r in _recipes(llama_set).items():
        y = root / f"{name}.yml"
        y.write_text(r.to_mergekit_yaml())
        assert f"base_model: {llama_set.fts[0]}" in y.read_text()
        jobs.append({"yaml": str(y), "out": str(root / name), "seed": None})
    (root / "jobs.json").write_text(json.dumps(jobs))
    p = subprocess.run([sys.executable, str(RUNNER), str(root / "jobs.json")],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return {n: load_file(str(root / n / "model.safetensors")) for n in _recipes(llama_set)}


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "slerp"])
def test_a_model_as_base_merges_as_mergekit(llama_set, mergekit_refs, name):
    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts], labels=LABELS)
    merger = InMemoryMerger(ms)
    path_recipe = _recipes(llama_set)[name]
    ref = mergekit_refs[name]
    lab = _as_labels(path_recipe, llama_set)
    by_path = Recipe.from_dict({**lab.to_dict(), "base": str(llama_set.fts[0])})
    for r in (lab, by_path):  # the base named by label or by checkpoint path
        got = merger.merge(r)
        for k in ref:
            assert got[k].dtype == ref[k].dtype, k
            assert torch.equal(got[k], ref[k]), (name, k, (got[k] - ref[k]).abs().max())
    # and it is not the merge against the set's base (what used to be returned)
    plain = merger.merge(Recipe.from_dict({**_as_labels(path_recipe, llama_set).to_dict(),
                                           "base": "base"}))
    assert any(not torch.equal(plain[k], ref[k]) for k in ref)


def test_a_base_outside_the_set_is_refused(llama_set, tmp_path):
    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts], labels=LABELS)
    merger = InMemoryMerger(ms)
    for b in ("nope", str(tmp_path / "elsewhere")):
        with pytest.raises(RecipeError, match="is not in the model set"):
            merger.merge(Recipe("task_arithmetic", base=b, models=["ft1", "ft2"],
                                params={"lambda": 1.0, "weight": 1.0}))
    merger.merge(Recipe("task_arithmetic", base=str(llama_set.base), models=["ft1"],
                        params={"lambda": 1.0, "weight": 1.0}))  # the set's base by its path: fine

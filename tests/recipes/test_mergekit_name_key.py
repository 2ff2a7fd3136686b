"""mergekit's documented multi-stage configs give each stage a ``name:``; mergekit-yaml
ignores it, and so does wsviz (the recipe is the same as without it)."""

from __future__ import annotations

import yaml

from tests.contract import run_cli
from wsviz.recipes import Recipe


def test_the_name_key_is_accepted_and_ignored(llama_set, tmp_path):
    cfg = {"merge_method": "task_arithmetic", "base_model": str(llama_set.base),
           "parameters": {"normalize": False},
           "models": [{"model": str(p), "parameters": {"weight": 0.5}}
                      for p in llama_set.fts[:2]],
           "dtype": "float32"}
    plain = Recipe.from_mergekit_yaml(yaml.safe_dump(cfg))
    named = Recipe.from_mergekit_yaml(yaml.safe_dump({"name": "stage-one", **cfg}))
    assert named == plain
    f = tmp_path / "stage.yml"
    f.write_text(yaml.safe_dump({"name": "stage-one", **cfg}))
    rc, _, err = run_cli(["merge", f, "-o", tmp_path / "out", "--no-progress"])
    assert rc == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file()

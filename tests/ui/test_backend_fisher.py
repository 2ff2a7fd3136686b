"""The dashboard's Fisher path: a workspace whose evaluator computes Fishers on its own data
offers the fisher method, and merges / exports it (demo zoo, two tasks)."""

from __future__ import annotations

import json

import pytest

from wsviz.session import ApiWorkspace


@pytest.fixture(scope="module")
def two_task(zoo):
    tasks = ["parity", "rot90"]
    return ApiWorkspace(zoo.modelset(tasks), zoo.evaluator(tasks=tasks, split="train"),
                        title="two zoo tasks")


def test_fisher_method_is_offered_and_merges(two_task, zoo):
    ws = two_task
    assert "fisher" in ws.merge_methods()
    r = ws.make_recipe("fisher", {}, {lab: {"weight": 1.0} for lab in ws.labels})
    metrics = ws.evaluate_recipe(r)
    assert set(metrics) == {"parity", "rot90"} and all(0 < v <= 1 for v in metrics.values())
    mg = ws.merger()
    assert mg.fisher_labels == {"parity", "rot90"}  # computed once, on the training images
    f = ws.evaluator.fisher(zoo.weights("parity"), "parity")
    n = zoo.encoder_names()[0]
    assert float((mg.fisher("parity")[n] - f[n]).abs().max()) <= 1e-6 * float(f[n].max())
    # a workspace whose evaluator cannot compute Fishers does not offer the method
    plain = ApiWorkspace(ws.ms, None)
    assert "fisher" not in plain.merge_methods()
    js = json.loads(ws.recipe_json(r))
    assert js["method"] == "fisher"

"""The prune tuner: the 'current merge' target follows the merge tuner's recipe through the
session, schedules and exclude globs reach the workspace, the recipe and pruned weights
export under the export root. On the fake workspace (closed-form numbers) and the real demo
zoo (live metrics, Wanda on the merged model)."""

from __future__ import annotations

import json

import pytest
import torch

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from tests.ui.fake_workspace import TASKS, FakeWorkspace
from wsviz.session.views import MERGE_TARGET
from wsviz.ui.app import build_components


def test_prune_current_merge_follows_the_merge_tuner(tmp_path):
    c = build_components(FakeWorkspace())
    s, m, p = c.session, c.merge, c.prune
    s.workspace.export_root = tmp_path
    assert MERGE_TARGET in p.param.target.objects
    assert s.merge_recipe == m.recipe and s.merge_recipe is not None
    p.target = MERGE_TARGET  # fake: s = sparsity + 0.1 * lambda, metric 0.9 - 0.5 s
    assert p.metrics == dict.fromkeys(TASKS, pytest.approx(0.6))
    m.set("lambda", 0.5)  # the merge changes -> the pruned merge is re-evaluated
    assert p.metrics == dict.fromkeys(TASKS, pytest.approx(0.625))
    assert "on `current merge`" in p._summary.object
    assert p.recipe_text.startswith("method: magnitude") and p._yaml.value == p.recipe_text
    assert p._dl.callback().read() == p.recipe_text
    p.write("pm")
    assert p.written == str(tmp_path / "pm")
    assert json.loads((tmp_path / "pm" / "target.txt").read_text())["params"]["lambda"] == 0.5
    assert (tmp_path / "pm" / "wsviz_prune.yml").read_text() == p.recipe_text
    p.written = None
    p.write("pm")
    assert "exists" in s.last_error and p.written is None
    p.write("pm", force=True)
    assert p.written == str(tmp_path / "pm")
    p.write("../elsewhere")
    assert "outside the export folder" in s.last_error
    p.write("")
    assert "output folder" in s.last_error
    # schedule and exclude globs reach the workspace's parameters
    p.set("schedule", "mlp: 0.7")
    p.set("exclude", "*.0.*, enc.1.bias")
    p.set("include", "enc.*")
    params = p._params(p.state)
    assert params["schedule"] == [{"filter": "mlp", "value": 0.7}]
    assert params["exclude"] == ["*.0.*", "enc.1.bias"] and params["sparsity"] == 0.5
    assert params["include"] == ["enc.*"]
    p.set("schedule", "half")
    assert "not understood" in s.last_error


def test_prune_current_merge_needs_a_valid_merge():
    c = build_components(FakeWorkspace())
    c.session.merge_recipe = None
    c.prune.target = MERGE_TARGET
    assert "no valid merge recipe" in c.session.last_error
    c.prune.write("x")
    assert "no valid merge recipe" in c.session.last_error


@pytest.fixture
def demo(demo_ws):
    """The session's shared demo-zoo workspace (tests/ui/conftest.py)."""
    return demo_ws


def test_demo_prune_current_merge_metrics_and_wanda(demo):
    from wsviz.compute import masks
    from wsviz.zoo import ensure_zoo
    from wsviz.zoo.calibration import zoo_input_norms as _zoo_input_norms

    merge = demo.make_recipe("task_arithmetic", {"lambda": 0.3},
                             {lab: {"weight": 1.0} for lab in demo.labels})
    # sparsity 0 prunes nothing: the merge's own metrics
    dense = demo.evaluate_prune(MERGE_TARGET, "magnitude", {"sparsity": 0.0}, merge=merge)
    assert dense == pytest.approx(demo.evaluate_recipe(merge))
    pruned = demo.evaluate_prune(MERGE_TARGET, "magnitude", {"sparsity": 0.9}, merge=merge)
    assert sum(pruned.values()) < sum(dense.values())
    # Wanda on the merge: norms from the merged model's own activations
    name = "model.layers.1.mlp.down_proj.weight"
    got = demo.prune_mask(name, MERGE_TARGET, "wanda", {"sparsity": 0.5}, merge=merge)
    merged = demo.merger().merge(merge)
    norms = _zoo_input_norms(ensure_zoo(progress=False), MERGE_TARGET, merged)
    want = masks.wanda_mask(merged[name], norms[name], 0.5)
    assert (got == want.numpy()).all()
    base_norms = _zoo_input_norms(ensure_zoo(progress=False), "base")
    assert not torch.equal(norms[name], base_norms[name])
    # the tuner on the real workspace
    c = build_components(demo, analyse=False)
    c.prune.target = MERGE_TARGET
    assert set(c.prune.metrics) == set(demo.tasks) and not c.session.errors

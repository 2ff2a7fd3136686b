"""UI components driven without a browser, on the tiny fake workspace (closed-form numbers)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from tests.ui.fake_workspace import LAYERS, TASKS, FakeWorkspace
from wsviz.errors import RecipeError
from wsviz.ui.app import build_components, build_page
from wsviz.ui.merge_tuner import parse_schedule
from wsviz.ui.overview import heatmap_frame
from wsviz.ui.runner import Runner
from wsviz.ui.widgets import summary_stats


@pytest.fixture
def comps():
    return build_components(FakeWorkspace())


def test_heatmap_frame_aggregates_and_scales():
    table = FakeWorkspace().analysis_table()
    mean = heatmap_frame(table, "mean over models", layers=LAYERS)
    row = mean[(mean.layer == "enc.1.weight") & (mean.metric == "delta_fro")]
    assert row["value"].item() == pytest.approx(np.mean([2, 3, 4]))  # i=2, j=0..2
    mx = heatmap_frame(table, "max over models", layers=LAYERS)
    assert mx[(mx.layer == "enc.1.weight") & (mx.metric == "delta_fro")]["value"].item() == 4
    per = heatmap_frame(table, "b", layers=LAYERS)
    assert per[(per.layer == "enc.0.bias") & (per.metric == "delta_fro")]["value"].item() == 2
    # model-independent metric kept for a single model; scores span [0, 1] per metric
    sc = per[per.metric == "sign_conflict"]
    assert sc["score"].min() == 0 and sc["score"].max() == pytest.approx(1)
    assert list(dict.fromkeys(per["layer"])) == LAYERS


def test_session_loads_table_and_tap_selects_layer_everywhere(comps):
    s = comps.session
    assert s.table is not None and s.layer == "enc.0.weight"
    assert comps.detail.detail.layer == "enc.0.weight"
    comps.overview._on_tap(x="alpha", y="enc.1.weight")
    assert s.layer == "enc.1.weight"
    assert comps.detail.detail.layer == "enc.1.weight"
    assert "enc.1.weight" in comps.overview._selected.object
    # a 1-D layer shows notes, not a crash
    comps.overview._on_tap(x="alpha", y="enc.1.bias")
    assert comps.detail.detail.spectra is None and not s.errors
    comps.overview.model = "a"
    assert set(comps.overview.frame()["metric"]) == {"delta_fro", "alpha", "sign_conflict"}


def test_merge_tuner_live_metrics_history_and_restore(comps):
    m = comps.merge
    assert m.metrics == {"t1": 0.7, "t2": 0.8, "t3": 0.9}  # lambda = 1
    m.set("lambda", 0.5)
    assert m.metrics == {"t1": 0.6, "t2": 0.7, "t3": 0.8}
    assert m.recipe["params"]["lambda"] == 0.5
    m.set("weight", 0.25, model="b")
    assert m.recipe["model_params"]["b"]["weight"] == 0.25
    h = m.history_frame()
    assert len(h) == 3 and h["pareto"].tolist() == [True, False, False]
    m.restore(m.history[0]["state"])
    assert m._widgets["lambda"].value == 1.0
    assert m._model_widgets["b"]["weight"].value == 1.0
    assert m.metrics == {"t1": 0.7, "t2": 0.8, "t3": 0.9}
    assert len(m.history) == 3  # restoring does not duplicate
    m._on_history_tap([1])
    assert m._widgets["lambda"].value == 0.5
    assert "eval #" in m._summary.object


def test_schedules_reach_the_recipe(comps):
    m = comps.merge
    m.set("lambda", "0.2, 0.8")
    assert m.recipe["params"]["lambda"] == [0.2, 0.8]
    m.set("lambda", "enc.0: 0.5")
    assert m.recipe["params"]["lambda"] == [{"filter": "enc.0", "value": 0.5}, {"value": 1.0}]


def test_bad_parameter_and_evaluator_error_notify_and_session_continues(comps):
    s, m = comps.session, comps.merge
    n = m.n_evals
    m.set("lambda", "zero point five")  # bad schedule
    assert "not understood" in s.last_error and m.n_evals == n
    m.set("lambda", "")  # clear the schedule (re-evaluates the unchanged recipe)
    n = m.n_evals
    m.set("lambda", -0.5)  # rejected by make_recipe
    assert "lambda=-0.5" in s.last_error and m.n_evals == n
    s.workspace.fail_eval = True
    m.set("lambda", 0.25)
    assert "boom" in s.last_error and m.n_evals == n
    s.workspace.fail_eval = False
    m.set("lambda", 0.75)
    assert m.metrics == {"t1": 0.65, "t2": 0.75, "t3": 0.85} and m.n_evals == n + 1
    assert any("boom" in e for e in s.errors)
    with pytest.raises(RecipeError):
        m.set("no_such_param", 1.0)


def test_export_yaml_json_and_unexpressible_reason(comps):
    e, m = comps.export, comps.merge
    assert e.yaml_text.startswith("merge_method: task_arithmetic") and e.yaml_reason is None
    assert '"method": "task_arithmetic"' in e.json_text
    assert e._yaml_file().read() == e.yaml_text
    m.method = "tsv"
    assert e.yaml_text is None and "not a mergekit method" in e.yaml_reason
    assert e._dl_yaml.disabled
    assert "Not expressible" in e._status.object


def test_export_write_overwrite_protection_and_unwritable(comps, tmp_path):
    e, s = comps.export, comps.session
    s.workspace.export_root = tmp_path
    out = tmp_path / "merged"
    e.write("merged")  # a name inside the export root
    assert e.written == str(out) and (out / "recipe.json").is_file()
    e.written = None
    e.write(str(out))  # exists, no force (an absolute path inside the root is fine)
    assert "exists" in s.last_error and e.written is None
    e.write(str(out), force=True)
    assert e.written == str(out)
    e.write("/proc/wsviz-no-such/dir")
    assert "outside the export folder" in s.last_error
    s.workspace.export_root = "/proc/wsviz-no-such"
    e.write("dir")
    assert "cannot write" in s.last_error
    e.write("")
    assert "output folder" in s.last_error


def test_sweep_and_prune(comps):
    m, p = comps.merge, comps.prune
    m.run_sweep("lambda", [0.0, 0.5, 1.0])
    df = m.sweep_result
    assert df.shape == (9, 3)
    assert df[(df.value == 0.0) & (df.task == "t1")]["metric"].item() == 0.5
    p.set("sparsity", 0.8)  # the default target, the current merge (lambda 1): s = 0.8 + 0.1
    assert p.metrics == dict.fromkeys(TASKS, pytest.approx(0.45))
    assert p._mask.object is not None


def test_two_sessions_do_not_share_state():
    ws = FakeWorkspace()
    a, b = build_components(ws), build_components(ws)
    a.merge.set("lambda", 0.5)
    a.overview._on_tap(y="enc.1.weight")
    assert b.merge._widgets["lambda"].value == 1.0 and b.merge.metrics["t1"] == 0.7
    assert b.session.layer == "enc.0.weight" and len(b.merge.history) == 1


def test_task_map_points(comps):
    comps.task_map.start()
    pts = comps.task_map.points
    assert list(pts["model"]) == ["a", "b", "c"] and {"pca1", "umap2"} <= set(pts)
    comps.task_map.group = "1"
    assert list(comps.task_map.points["model"]) == ["a", "b", "c"]


def test_build_page_is_a_template():
    page = build_page(FakeWorkspace(), background=False)
    assert page.title.startswith("wsviz")


def test_parse_schedule_and_summary_stats():
    assert parse_schedule("") is None
    assert parse_schedule("0.1, 0.3") == [0.1, 0.3]
    assert parse_schedule("attn: 0.5; mlp: 0.2") == [{"filter": "attn", "value": 0.5},
                                                       {"filter": "mlp", "value": 0.2}]
    with pytest.raises(RecipeError):
        parse_schedule("a, b")
    st = summary_stats({"x": 0.5, "y": 1.0}, {"x": 1.0, "y": 1.0})
    assert st == {"avg": 0.75, "worst": 0.5, "normalized": 0.75}


def test_runner_background_coalesces_to_latest():
    errors, results = [], []
    r = Runner(background=True, on_error=errors.append)
    gate = threading.Event()

    def slow(v):
        def work():
            gate.wait(5)
            return v
        return work

    r.submit("k", slow(1), results.append)
    for v in (2, 3, 4):
        r.submit("k", slow(v), results.append)
    gate.set()
    deadline = time.monotonic() + 5
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert results == [1, 4] and not errors
    r.submit("k", lambda: 1 / 0, results.append)
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(errors[0], ZeroDivisionError)


def test_analysis_table_columns_feed_heatmap(comps):
    t = comps.session.table
    assert isinstance(t, pd.DataFrame)
    assert {"layer", "block", "kind", "group", "model", "metric", "value", "note"} <= set(t)


def _plot_opts(el) -> dict:
    import holoviews as hv

    return hv.Store.lookup_options("bokeh", el, "plot").kwargs


def test_lower_is_better_metric_drives_summary_history_and_sweep():
    """A perplexity-like metric: worst = the maximum, the Pareto front is the lower-left,
    axes say 'lower is better', no percent signs, and every fine-tune is a reference."""
    from tests.ui.fake_workspace import PerplexityFakeWorkspace

    c = build_components(PerplexityFakeWorkspace())
    m, p = c.merge, c.prune
    assert m.metrics == {"t1": 12.5, "t2": 13.5, "t3": 14.5}  # lambda = 1
    text = m._summary.object
    assert "perplexity ↓" in text and "worst **14.5**" in text and "%" not in text
    m.set("lambda", 0.5)
    m.set("lambda", 0.0)
    h = m.history_frame()
    assert h["worst"].tolist() == [14.5, 12.0, 14.5]
    assert h["pareto"].tolist() == [False, True, False]  # lambda = 0.5: lowest avg and worst
    el = m._history_el(h)
    opts = _plot_opts(el)
    assert opts["xlabel"] == "mean perplexity (lower is better)"
    assert opts["ylabel"] == "worst-task perplexity (lower is better)"
    assert "bottom left" in opts["title"]
    # unbounded metric: the axes span the values (11 .. 14.5), padded, not [0, 1]
    assert 10 < opts["xlim"][0] < 11 and 14.5 < opts["xlim"][1] < 15
    assert opts["ylim"] == opts["xlim"]
    # the live bars: y axis named with its direction, one reference dot per fine-tune
    overlay = c.merge._live.pane.object[()]
    assert _plot_opts(overlay)["ylabel"] == "perplexity (lower is better)"
    lo, hi = _plot_opts(overlay)["ylim"]  # zoomed on merged (10..12) and references (..30)
    assert 5 < lo < 10 and 30 < hi < 36
    ft_layer = overlay.values()[-1]
    assert sorted(set(ft_layer.data["reference"])) == ["ft:a", "ft:b", "ft:c"]
    assert len(ft_layer.data) == 9
    m.run_sweep("lambda", [0.0, 0.5, 1.0])
    curves = {cv.label: cv for cv in c.merge._sweep_plot.object.values()}
    assert curves["worst"].data["metric"].tolist() == [14.5, 12.0, 14.5]  # max over tasks
    assert _plot_opts(c.merge._sweep_plot.object)["ylabel"] == "perplexity (lower is better)"
    p.set("sparsity", 0.25)
    assert "perplexity ↓: avg **15**" in p._summary.object
    assert not c.session.errors


def test_higher_is_better_history_keeps_accuracy_axes(comps):
    h = comps.merge.history_frame()
    opts = _plot_opts(comps.merge._history_el(h))
    assert opts["xlabel"] == "mean accuracy (higher is better)"
    assert opts["xlim"][1] == 1.0 and "top right" in opts["title"]
    assert "accuracy ↑: avg **80.0 %** · worst **70.0 %**" in comps.merge._summary.object

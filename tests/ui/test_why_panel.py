"""The "why this merge" panel: follows the tuner's recipe, on the fake (closed form) and on
the demo zoo (real anatomy through the workspace)."""

from __future__ import annotations

import pandas as pd
import pytest

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from tests.ui.fake_workspace import LAYERS, FakeWorkspace
from wsviz.ui.app import build_components
from wsviz.ui.why_panel import layer_plots, summary_markdown


def test_why_panel_follows_every_parameter_change_fake():
    c = build_components(FakeWorkspace(), analyse=False)
    m, why = c.merge, c.merge.why
    n0 = why.n_updates
    assert n0 >= 1 and why.table is not None
    m.set("lambda", 0.5)
    assert why.n_updates == n0 + 1
    norms = why.table.drop_duplicates("layer")["merged_norm"].tolist()
    assert norms == [0.5 * (i + 1) for i in range(len(LAYERS))]
    m.method = "ties"
    m.entry("density").type_value(0.4)
    assert why.table["kept"].eq(0.4).all()
    assert "kept **40.0%**" in why._summary.object and "ties" in why._summary.object
    assert f"update #{why.n_updates}" in why._summary.object
    m.set("include", False, model="c")
    assert set(why.table["model"]) == {"a", "b"}
    why.group = "block"  # per-block view: blocks 0 and 1
    frame, x, _ = why._pipe.data
    assert x == "block" and sorted(set(frame["block"])) == [0, 1]
    assert len(why._table.value) == len(why.table)


def test_layer_plots_one_series_per_model():
    c = build_components(FakeWorkspace(), analyse=False)
    table = c.merge.why.table
    lay = layer_plots(table)
    assert len(lay) == 4
    lines, dots = lay[0]  # a line per model, and the markers
    assert len(lines.split()) == table["model"].nunique()
    assert set(dots.data["model"]) == set(table["model"])
    assert "merged ‖Δ‖" in summary_markdown(table, "task_arithmetic")


@pytest.fixture(scope="module")
def demo_ws():
    from wsviz.session import demo_workspace

    return demo_workspace()


def test_why_panel_on_demo_zoo_tracks_density(demo_ws):
    c = build_components(demo_ws, analyse=False)
    m, why = c.merge, c.merge.why
    m.method = "ties"
    m.entry("density").type_value(0.2)
    low = why.table.groupby("model")["kept"].mean()
    n = why.n_updates
    m.entry("density").type_value(0.6)
    assert why.n_updates == n + 1
    high = why.table.groupby("model")["kept"].mean()
    assert (high > low).all()
    assert (why.table["elected_away"] > 0).any() and why.table["cos"].notna().all()
    m.method = "task_arithmetic"
    assert (why.table["elected_away"] == 0).all()
    assert not c.session.errors


def test_workspace_anatomy_from_merger_cache_equals_streamed(demo_ws):
    """The dashboard reads the merger's cache (and its rank tables); the numbers equal the
    table streamed from the checkpoints."""
    from wsviz.analysis.anatomy import recipe_anatomy

    labels = demo_ws.labels
    r = demo_ws.make_recipe("ties", {"density": 0.3},
                            {lab: {"weight": 0.5 + 0.1 * i} for i, lab in enumerate(labels)})
    demo_ws.evaluate_recipe(r)  # fills the rank tables as a live merge does
    cached = demo_ws.merge_anatomy(r)
    streamed = recipe_anatomy(demo_ws.ms, r, names=demo_ws.merger().names)  # what the evaluator uses
    cols = ["kept", "elected_away", "cos", "merged_norm"]
    pd.testing.assert_frame_equal(cached[["layer", "model", *cols]],
                                  streamed[["layer", "model", *cols]], rtol=1e-9)


def test_layer_plots_render_before_the_first_anatomy():
    """The Merge tab may be shown before any anatomy exists: empty plots, no error."""
    import holoviews as hv

    from wsviz.ui.why_panel import PANELS, layer_plots

    hv.extension("bokeh")
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in ("order", *(c for c, _, _ in
                                                                  PANELS))})
    for p in layer_plots(empty.assign(model="", layer="")):
        assert hv.render(p) is not None

"""The overview without a browser: depth x module grid on an 80-block Llama-shaped fake, the
flat fallback on the fake without blocks, the selection outline (no faded cells), and the
first-session redraw after the page is rendered (empty cache: the table arrives later)."""

from __future__ import annotations

import holoviews as hv
import pytest
from bokeh.document import Document

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from tests.ui.block_workspace import BlockFakeWorkspace
from tests.ui.fake_workspace import FakeWorkspace
from wsviz.ui import app as app_module
from wsviz.ui.app import build_components
from wsviz.ui.overview import grid_geometry


def _grid_parts(ov):
    """(plot options, cells) of the grid as drawn now (evaluates its DynamicMap)."""
    ov._grid.object[()]
    rects = ov._cells
    return hv.Store.lookup_options("bokeh", rects, "plot").kwargs, rects


def test_depth_grid_80_blocks_tap_outline_profiles():
    c = build_components(BlockFakeWorkspace(80))
    ov, s = c.overview, c.session
    assert ov.layout.has_blocks and ov.metric == "delta_rel"
    plot_opts, rects = _grid_parts(ov)
    assert len(rects) == 80 * 9
    assert sorted(set(rects.dframe()["block"])) == list(range(80))
    opts = hv.Store.lookup_options("bokeh", rects, "style").kwargs
    assert opts["nonselection_alpha"] == 1.0 and opts["selection_alpha"] == 1.0
    row, height, step = grid_geometry(80)
    assert plot_opts["height"] == height and row * step >= 14
    assert [t[0] for t in plot_opts["yticks"]] == list(range(0, 80, step))
    assert [t[1] for t in plot_opts["xticks"]] == ["q", "k", "v", "o", "gate", "up", "down",
                                                   "input_layernorm",
                                                   "post_attention_layernorm"]
    # a tap at the centre of (down, block 41) selects that tensor and moves the outline
    ov._on_grid_tap(x=6.2, y=40.8)
    assert s.layer == "model.layers.41.mlp.down_proj.weight"
    assert c.detail.detail.layer == s.layer
    assert ov._outline.data == {"x0": [5.5], "y0": [40.5], "x1": [6.5], "y1": [41.5]}
    assert "block 41, down" in ov._selected.object
    # per-model profile follows the selected module: ft b at block 3 = 306.1
    by_model = ov._by_model.object
    assert "module down" in hv.Store.lookup_options("bokeh", by_model, "plot").kwargs["title"]
    curve_b = [cv for cv in by_model if cv.label == "b"][0]
    assert curve_b.dframe().set_index("block").loc[3, "value"] == pytest.approx(306.1)
    assert len(ov._by_module.object) == 9  # one curve per module
    # a tap outside any cell changes nothing
    ov._on_grid_tap(x=12.0, y=3.0)
    assert s.layer == "model.layers.41.mlp.down_proj.weight"
    # the flat heatmap keeps the tensors outside the blocks
    assert set(ov.frame()["layer"]) == {"model.embed_tokens.weight", "model.norm.weight",
                                        "lm_head.weight"}
    ov._on_tap(x="delta_rel", y="lm_head.weight")
    assert s.layer == "lm_head.weight" and ov._outline.data["x0"] == []
    assert not s.errors


def test_grid_metric_and_model_switch():
    c = build_components(BlockFakeWorkspace(12))
    ov = c.overview
    ov.model = "c"
    v = ov.grid_frame().set_index(["block", "module"])["value"]
    assert v.loc[(7, "up")] == pytest.approx(705.2)
    ov.metric = "alpha"
    _, rects = _grid_parts(ov)
    assert rects.dframe()["value"].max() == pytest.approx(13.0)


def test_flat_fallback_without_blocks():
    c = build_components(FakeWorkspace())
    ov = c.overview
    assert not ov.layout.has_blocks and ov._grid.object is None
    dm = ov._plot.object  # built once (its Tap stream survives later tables)
    assert isinstance(dm, hv.DynamicMap)
    hm = dm[()]
    assert isinstance(hm, hv.HeatMap) and len(hm) == ov.frame().shape[0]
    assert hv.Store.lookup_options("bokeh", hm, "style").kwargs["nonselection_alpha"] == 1.0
    assert ov.preferred_width == 560


@pytest.mark.parametrize("workspace", [BlockFakeWorkspace, FakeWorkspace])
def test_table_arriving_after_the_page_is_rendered(monkeypatch, workspace):
    """First session, empty cache: the page is rendered (with the Fast design's stylesheets)
    before the analysis ends. Redrawing then must not fail (it did: setting ``min_height`` on
    the rendered HoloViews pane raised 'List parameter Bokeh.stylesheets ...')."""
    made = {}

    def no_analysis(ws, background=False, analyse=True):
        made["c"] = build_components(ws, background=background, analyse=False)
        return made["c"]

    monkeypatch.setattr(app_module, "build_components", no_analysis)
    page = app_module.build_page(workspace(), background=False)
    page.server_doc(Document())
    c = made["c"]
    assert c.session.table is None
    c.session.load_analysis()
    assert c.session.table is not None
    assert c.session.errors == [] and c.session.status != "analysis failed"
    ov = c.overview
    assert (ov._grid.object if ov.layout.has_blocks else ov._plot.object) is not None

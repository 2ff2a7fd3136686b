"""Readable plots on a multi-block bf16 Llama family (issue 19 items 6-7), checked on the
Bokeh figures the dashboard builds: the wheel scrolls the page (wheel zoom offered, not
active), hover numbers keep 4 significant digits, colour bars name the metric, legends sit
outside the data, the why panel's block view has its own x range and caption, and a refused
parameter value's message goes away after a later valid edit."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import param
import pytest
import torch
from bokeh.document import Document
from bokeh.models import ColorBar, HoverTool, Legend, Plot, WheelZoomTool

import wsviz.ui  # noqa: F401 - loads the bokeh plotting backend
from tests.checkpoints import build_llama_set
from tests.ui.block_workspace import BlockFakeWorkspace
from tests.ui.fake_workspace import FakeWorkspace
from wsviz.eval.metrics import KNOWN
from wsviz.ui.app import build_components
from wsviz.ui.layer_detail import (
    agreement_plot,
    delta_hist_plot,
    esd_plot,
    matrix_plot,
    spectra_plot,
)
from wsviz.ui.plot_style import SIG_JS, sig
from wsviz.ui.task_map import label_range
from wsviz.ui.why_panel import CAPTIONS, layer_plot, x_range
from wsviz.ui.widgets import metrics_plot

FTS = ("ft-prose", "ft-code", "ft-math")
N_BLOCKS = 6
LAYER = "model.layers.2.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A 6-block bf16 Llama base with three fine-tunes named like real ones."""
    root = tmp_path_factory.mktemp("bf16_family")
    build_llama_set(root, n_ft=3, dtype=torch.bfloat16, num_hidden_layers=N_BLOCKS)
    for i, name in enumerate(FTS):
        (root / f"ft{i}").rename(root / name)
    return root


@pytest.fixture(scope="module")
def ws(family):
    return wsviz.ui.open_workspace(family / "base", [family / n for n in FTS])


@pytest.fixture(scope="module")
def detail(ws):
    return ws.detail(LAYER)


def figures(obj) -> list[Plot]:
    """The Bokeh figures of a HoloViews object or a Panel pane (DynamicMaps evaluated)."""
    import panel as pn

    pane = obj if isinstance(obj, pn.pane.HoloViews) else pn.pane.HoloViews(obj)
    root = pane.get_root(Document())
    return list(root.select({"type": Plot}))


def figure(obj) -> Plot:
    (fig,) = figures(obj)
    return fig


def legends(fig: Plot, side: str) -> list[Legend]:
    return [r for r in getattr(fig, side) if isinstance(r, Legend)]


def detail_plots(d) -> dict:
    return {"spectra": spectra_plot(d), "esd": esd_plot(d), "hist": delta_hist_plot(d),
            "matrix": matrix_plot(d.matrix[next(iter(d.matrix))], "m", shape=d.shape),
            "conflict": matrix_plot(d.sign_conflict, "Sign-conflict map", cmap="magma",
                                    symmetric=False, shape=d.shape, mode="pooled",
                                    key="conflict"),
            "agreement": agreement_plot(d.agreement)}


def test_wheel_zoom_offered_but_not_active_on_every_plot(detail):
    spec = KNOWN["perplexity"]
    refs = {"pretrained": {"story": 40.0}, **{f"ft:{n}": {"story": 30.0 + i}
                                              for i, n in enumerate(FTS)}}
    anatomy = pd.DataFrame({"order": [0, 1], "layer": ["a", "b"], "model": ["x", "x"],
                            "kept": [0.2, 0.3], "elected_away": [0.1, 0.0], "cos": [0.5, 0.4],
                            "merged_norm": [1.0, 2.0]})
    plots = {**detail_plots(detail),
             "metrics": metrics_plot({"story": 35.0}, refs, "t", spec=spec),
             "why": layer_plot(anatomy, "kept")}
    for name, p in plots.items():
        fig = figure(p)
        assert fig.toolbar.active_scroll is None, name  # the wheel scrolls the page
        assert any(isinstance(t, WheelZoomTool) for t in fig.toolbar.tools), name


def test_dashboard_figures_leave_the_wheel_to_the_page():
    """Every figure of the dashboard's views (fake workspace with Llama-shaped blocks)."""
    c = build_components(BlockFakeWorkspace(30))
    panes = [c.overview._grid, c.overview._plot, c.overview._by_module, c.overview._by_model,
             c.merge._history_pane, c.merge._live.pane, *c.merge.why._panes]
    n = 0
    for pane in panes:
        for fig in figures(pane):
            assert fig.toolbar.active_scroll is None, fig.title.text
            n += 1
    assert n >= len(panes) - 1


def test_sig_digits_tell_neighbouring_cells_apart():
    vals = [0.0016, 0.0019, 0.0021, 0.0023, 0.001634]
    shown = [sig(v) for v in vals]
    assert shown == ["0.0016", "0.0019", "0.0021", "0.0023", "0.001634"]
    assert sig(123456.7) == "1.235e+05" and sig(2.5e-6) == "2.500e-06" and sig(0) == "0"


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to run the hover JS")
def test_hover_js_formats_like_sig():
    vals = [0.0016, 0.0023, 0.001634, 12.3456, 2.5e-6, 123456.7, 0.0]
    js = (f"const f = (value) => {{ {SIG_JS} }};\n"
          f"console.log(JSON.stringify({vals}.map(f)));")
    out = subprocess.run(["node", "-e", js], capture_output=True, text=True, check=True)
    got = eval(out.stdout)  # noqa: S307 - a JSON list of strings from our own script
    # JS writes exponents without the leading zero (1.235e+5)
    assert got == [sig(v).replace("e+0", "e+").replace("e-0", "e-") for v in vals]


def test_grid_hover_precise_and_colour_bar_named_after_metric():
    c = build_components(BlockFakeWorkspace(30))
    ov = c.overview
    fig = figure(ov._grid)
    bars = [r for r in fig.right if isinstance(r, ColorBar)]
    assert [b.title for b in bars] == ["delta_rel"]
    (hover,) = [t for t in fig.toolbar.tools if isinstance(t, HoverTool)]
    tips = dict(hover.tooltips)
    assert tips["value"] == "@value{custom}"
    assert hover.formatters["@value"].code == SIG_JS
    ov.metric = "alpha"  # another metric: the same figure, its colour bar renamed
    assert [b.title for b in bars] == ["alpha"]


def test_legends_outside_the_data(detail):
    for name in ("spectra", "esd", "hist"):
        fig = figure(detail_plots(detail)[name])
        assert legends(fig, "below") and not legends(fig, "center"), name
    c = build_components(FakeWorkspace(), analyse=False)
    m = c.merge
    m.set("lambda", 0.5)
    m.set("lambda", 0.7)
    fig = figures(m._history_pane)[0]
    assert legends(fig, "below") and not legends(fig, "center")


def test_esd_title_short_and_spectra_ticks_sparse(detail):
    fig = figure(esd_plot(detail))
    assert len(fig.title.text) <= 45 and "λ_min" not in fig.title.text
    fig = figure(spectra_plot(detail))
    assert fig.xaxis[0].ticker.desired_num_ticks == 5


def test_agreement_numbers_readable(detail):
    fig = figure(agreement_plot(detail.agreement))
    n = len(detail.agreement)
    # a fixed size per cell, big enough for "0.51" (not squeezed beside the conflict map)
    assert fig.sizing_mode in (None, "fixed")
    assert fig.width >= 60 * n + 100 and fig.height >= 60 * n


def test_metrics_plot_no_empty_legend_entry_and_floor_of_perplexity():
    spec = KNOWN["perplexity"]
    refs = {"pretrained": {"story": 2.0}, "individual": {},
            **{f"ft:{n}": {"story": 60.0 + i} for i, n in enumerate(FTS)}}
    fig = figure(metrics_plot({"story": 8.0}, refs, "t", spec=spec))
    labels = [getattr(it.label, "value", None) or getattr(it.label, "field", None)
              for lg in legends(fig, "right") for it in lg.items]
    # no "individual" entry without a marker; the fine-tunes' entries are by reference
    assert "individual" not in labels and "pretrained" in labels and len(labels) >= 3
    assert fig.y_range.start >= spec.lo  # perplexity >= 1: no axis down to -20


def test_task_map_labels_inside_the_plot():
    xs = np.array([-3.0, 0.0, 5.0])
    lo, hi = label_range(xs, ["ft-prose", "ft-code", "ft-math"])
    span = 8.0
    room = 0.025 * len("ft-prose") * span  # half a label, centred on its point
    assert lo <= xs.min() - room and hi >= xs.max() + room


def test_why_block_view_has_its_range_and_caption(ws):
    c = build_components(ws, analyse=False)
    why = c.merge.why
    assert why.table is not None and why._caption.object == CAPTIONS["tensor"]
    fig = figures(why._panes[0])[0]
    n_tensors = why.table["order"].max()
    assert fig.x_range.end >= n_tensors
    why.group = "block"
    blocks = why._pipe.data[0]["block"]
    assert blocks.min() == -1 and blocks.max() == N_BLOCKS  # before / after the blocks
    assert why._caption.object == CAPTIONS["block"] and "Per block" in CAPTIONS["block"]
    # the x range covers the block points, not the tensor view's range
    assert fig.x_range.start <= -1 and fig.x_range.end >= N_BLOCKS
    assert fig.x_range.end - fig.x_range.start < (N_BLOCKS + 2) * 1.5
    assert fig.xaxis[0].axis_label == "block"
    assert x_range([-1, 30]) == pytest.approx((-1.93, 30.93))


def test_refused_value_message_cleared_by_a_later_valid_edit(ws):
    c = build_components(ws, analyse=False)
    m = c.merge
    m.method = "ties"
    d = m.entry("density")
    old = d.value
    d.type_value(1.5)
    assert d.error and d._msg.visible
    d.type_value(old)  # the same valid value as before: still a valid edit
    assert d.error == "" and not d._msg.visible
    d.type_value(1.5)
    assert d._msg.visible
    m.entry("lambda").type_value(0.9)  # a valid edit of another parameter
    assert d.error == "" and not d._msg.visible
    d.type_value(-2)
    assert d._msg.visible
    with param.edit_constant(d.slider):  # a slider release, as the browser sends it
        d.slider.value_throttled = 0.3
    assert not d._msg.visible and d.value == 0.3


def test_live_bars_follow_each_evaluation_and_keep_the_wheel_off():
    """LiveBars updates in place: the y range follows every evaluation (it used to keep the
    first frame's range), never below perplexity's floor, and no update re-activates the
    wheel zoom."""
    from wsviz.ui.widgets import LiveBars

    refs: dict = {}
    bars = LiveBars(lambda: refs, label="pruned", spec_getter=lambda: KNOWN["perplexity"])
    bars.update({"story": 130.0}, "first")
    fig = figure(bars.pane)
    assert 100 < fig.y_range.start < 130 < fig.y_range.end < 160
    refs.update({"pretrained": {"story": 3.0}, "ft:ft-prose": {"story": 150.0}})
    bars.update({"story": 10.0}, "second")
    assert 1.0 <= fig.y_range.start <= 3.0 and fig.y_range.end >= 150.0
    assert fig.toolbar.active_scroll is None


def test_reference_dots_side_by_side_off_the_dashes():
    from wsviz.ui.plot_style import dodge_offsets

    off = dodge_offsets(["story"] * 3 + ["code"])
    assert len(set(off[:3])) == 3 and 0.0 not in off  # apart, and off the centre dashes
    assert off[3] != 0.0 and all(abs(o) <= 0.3 for o in off)
    spec = KNOWN["perplexity"]
    refs = {f"ft:{n}": {"story": 30.0} for n in FTS}
    fig = figure(metrics_plot({"story": 35.0}, refs, "t", spec=spec))
    (dots,) = [r for r in fig.renderers if "off" in r.data_source.data]
    assert dots.glyph.x.transform is not None  # drawn at task + offset

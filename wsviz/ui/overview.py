"""Overview of the analysis table; tap a cell to select a tensor.

- Models with transformer blocks: a depth x module grid (block index down, module kind across,
  coloured by one metric) with depth profiles beside it (the metric vs block, one curve per
  module, and one per model for the selected module), and below it the layers x metrics
  heatmap of the tensors outside the blocks (embeddings, final norm, ``lm_head``).
- Models without blocks (e.g. the demo zoo): the layers x metrics heatmap of every tensor.

The selection is drawn as an outline over the grid; no cell is faded. Table reshaping lives in
:mod:`wsviz.analysis.blocks`; this module only draws.
"""

from __future__ import annotations

import holoviews as hv
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.analysis.blocks import (
    AGGREGATES,
    BlockLayout,
    block_layout,
    depth_frame,
    model_profiles,
    module_profiles,
    reduce_models,
)
from wsviz.ui.plot_style import READABLE, READABLE_NO_PAN
from wsviz.ui.session import Session
from wsviz.ui.text import SafeMarkdown, html, md, md_code

# Metrics shown first when present (the rest follow in table order).
PREFERRED = (
    "delta_fro", "delta_rel", "delta_mean_abs", "effective_rank", "stable_rank", "alpha",
    "sign_conflict", "intruders", "cosine_mean",
)
#: a tapped glyph keeps its look and the others are not faded (the outline marks the selection)
NO_FADE = dict(nonselection_alpha=1.0, selection_alpha=1.0)
GRID_WIDTH = 400
PROFILE_WIDTH = 440


def heatmap_frame(table: pd.DataFrame, model: str, metrics: list[str] | None = None,
                  layers: list[str] | None = None) -> pd.DataFrame:
    """Reduce the tidy table to one value per (layer, metric) for ``model`` (a label or an
    aggregate in :data:`AGGREGATES`, see :func:`wsviz.analysis.blocks.reduce_models`).
    Adds ``score``: the value min-max scaled per metric to [0, 1] so metrics of different
    units share one colour map.

    Returns columns ``layer, metric, value, score``; rows with no finite value are dropped.
    """
    out = reduce_models(table, model, metrics)
    if layers is not None:
        order = {name: i for i, name in enumerate(layers)}
        out = out[out["layer"].isin(order)]
        out = out.assign(_o=out["layer"].map(order)).sort_values("_o").drop(columns="_o")
    lo = out.groupby("metric")["value"].transform("min")
    hi = out.groupby("metric")["value"].transform("max")
    span = (hi - lo).where((hi - lo) > 0, 1.0)
    out["score"] = ((out["value"] - lo) / span).astype(float)
    return out.reset_index(drop=True)


def ordered_metrics(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["metric"].astype(str)))
    first = [m for m in PREFERRED if m in present]
    return first + [m for m in present if m not in first]


def grid_geometry(n_blocks: int) -> tuple[int, int, int]:
    """``(row_px, plot_height_px, tick_step)`` for a grid of ``n_blocks`` rows: rows of 24 px
    shrinking to 9 px so that ~80 blocks fit about one screen, and a block-index tick every
    ``tick_step`` rows (1, 2, 5, 10, … so tick labels are >= 14 px apart)."""
    row = max(9, min(24, 960 // max(1, n_blocks)))
    height = n_blocks * row + 150  # title, x labels (rotated), toolbar
    step = 1
    for s in (1, 2, 5, 10, 20, 50):
        step = s
        if s * row >= 14:
            break
    return row, height, step


def selection_box(layout: BlockLayout, layer: str | None) -> dict:
    """Outline rectangle data (``x0 y0 x1 y1`` lists) around ``layer``'s cell (empty if flat)."""
    cell = layout.cell_of(layer) if layer else None
    if cell is None:
        return {"x0": [], "y0": [], "x1": [], "y1": []}
    c, b = cell
    return {"x0": [c - 0.5], "y0": [b - 0.5], "x1": [c + 0.5], "y1": [b + 0.5]}


class Overview(Viewer):
    """Depth x module grid (models with blocks) and layers x metrics heatmap, per model or
    aggregated. Tapping a cell sets ``session.layer``, which every other view follows."""

    model = param.Selector(default=AGGREGATES[0], objects=list(AGGREGATES),
                           doc="Model whose metrics are shown, or an aggregate over models.")
    metric = param.Selector(default=None, objects=[], allow_None=True,
                            doc="Metric colouring the depth x module grid and its profiles.")
    metrics = param.ListSelector(default=[], objects=[],
                                 doc="Metrics (columns) of the layers x metrics heatmap.")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        ws = session.workspace
        self.layout = block_layout(ws.layers())
        self.param.model.objects = list(AGGREGATES) + list(ws.labels)
        self._tap = None
        self._grid_tap = None
        self._metric_chosen = False
        self._updating = False
        self._cells: hv.Rectangles | None = None  # the grid's cells (one per block cell)
        self._outline = hv.streams.Pipe(data=selection_box(self.layout, session.layer))
        # Heights live in the HoloViews objects (responsive width, fixed height): layout
        # parameters of a HoloViews pane are never changed after the page is rendered (Panel
        # then copies the figure's ImportedStyleSheets into a str-only list: TypeError).
        self._plot = pn.pane.HoloViews(None, sizing_mode="stretch_width",
                                       name="overview-heatmap", css_classes=["wsviz-heatmap"])
        self._grid = pn.pane.HoloViews(None, width=GRID_WIDTH, css_classes=["wsviz-depth-grid"])
        self._by_module = pn.pane.HoloViews(None, width=PROFILE_WIDTH)
        self._by_model = pn.pane.HoloViews(None, width=PROFILE_WIDTH)
        self._progress = pn.indicators.Progress(value=0, max=100, width=300, active=True)
        self._status = SafeMarkdown("", css_classes=["wsviz-overview-status"])
        self._model_w = pn.widgets.Select.from_param(self.param.model, name="Model", width=200)
        self._metric1_w = pn.widgets.Select.from_param(self.param.metric, name="Grid metric",
                                                       width=200)
        self._metric_w = pn.widgets.MultiChoice.from_param(self.param.metrics, name="Metrics",
                                                           sizing_mode="stretch_width")
        self._selected = SafeMarkdown("", css_classes=["wsviz-selected-layer"])
        self._flat_title = SafeMarkdown(
            md("**Tensors outside the blocks** ({})", len(self.layout.flat))
            if self.layout.has_blocks else "", visible=bool(self.layout.flat))
        if self.layout.has_blocks:
            self._build_grid()
        if not self.layout.has_blocks or self.layout.flat:
            self._build_heatmap()
        session.param.watch(self._on_table, "table")
        session.param.watch(self._on_progress, ["analysis_progress", "status"])
        session.param.watch(self._on_layer, "layer")
        self.param.watch(self._redraw, ["model", "metrics"])
        self.param.watch(self._redraw_grid, ["model", "metric"])
        self._on_layer()
        if session.table is not None:
            self._on_table()
        else:
            self._on_progress()

    @property
    def preferred_width(self) -> int:
        """Width (px) the page gives this view: grid + profiles side by side, or the
        heatmap alone."""
        return GRID_WIDTH + PROFILE_WIDTH + 40 if self.layout.has_blocks else 560

    def _on_progress(self, *_):
        if self.session.table is None:
            self._progress.value = int(100 * self.session.analysis_progress)
            self._progress.visible = True
            self._status.object = self.session.status or "waiting for the analysis…"
        else:
            self._progress.visible = False
            self._status.object = ""

    def _on_layer(self, *_):
        layer = self.session.layer
        cell = self.layout.cell_of(layer) if layer else None
        where = (f" — block {cell[1]}, {self.layout.modules[cell[0]]}" if cell else "")
        self._selected.object = md("**Selected layer:** {}{}", md_code(layer), where)
        self._outline.send(selection_box(self.layout, layer))
        if self.layout.has_blocks and self.session.table is not None and self.metric:
            self._by_model.object = self._model_profile_plot()

    def _on_table(self, *_):
        table = self.session.table
        if table is None:
            return
        ms = ordered_metrics(table)
        # first table: the grid shows the relative change (compares modules of different
        # sizes), else the first metric; later tables keep a choice that still exists
        want = self.metric if self._metric_chosen and self.metric in ms else (
            "delta_rel" if "delta_rel" in ms else (ms[0] if ms else None))
        self._metric_chosen = True
        # one batch of document changes (no half-drawn page), each plot drawn once (the
        # widgets re-pick a value when their options change: those redraws are skipped)
        with pn.io.hold():
            self._updating = True
            try:
                self.param.metrics.objects = ms
                self.param.metric.objects = ms
                self.metric = want
                self.metrics = ms[:12]
            finally:
                self._updating = False
            self._on_progress()
            self._redraw_grid()
            self._redraw()

    # -- layers x metrics heatmap ----------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """The (layer, metric, value, score) frame the heatmap draws: every tensor without
        blocks, the tensors outside the blocks otherwise."""
        layers = self.layout.flat if self.layout.has_blocks else self.session.workspace.layers()
        return heatmap_frame(self.session.table, self.model, self.metrics, layers)

    def _build_heatmap(self) -> None:
        """Create the heatmap's figure once, before the page is rendered (as the grid's): a
        DynamicMap fed by :attr:`_heat_pipe`; later tables, models and metrics only send
        new data, so its Tap stream keeps working on a first session whose table arrives
        after the page was drawn. Its height follows the number of layers it shows."""
        layers = self.layout.flat if self.layout.has_blocks else self.session.workspace.layers()
        height = int(min(1400, max(300, 22 * len(layers) + 170)))
        title = ("Layers x metrics (scaled per metric)" if not self.layout.has_blocks
                 else "Layers x metrics, outside the blocks")
        empty = pd.DataFrame({"metric": pd.Series(dtype=str), "layer": pd.Series(dtype=str),
                              "score": pd.Series(dtype=float), "value": pd.Series(dtype=float)})
        self._heat_pipe = hv.streams.Pipe(data=empty)

        def heatmap(data):
            vdims = [hv.Dimension("score", label="scaled score"), "value"]
            return hv.HeatMap(data, kdims=["metric", "layer"], vdims=vdims).opts(
                cmap="viridis", colorbar=True, tools=["hover", "tap"], xrotation=45,
                invert_yaxis=True, responsive=True, height=height, clim=(0, 1), title=title,
                toolbar="above", default_tools=["save", "reset"], framewise=True, **NO_FADE,
                selection_line_color="red", selection_line_width=3, **READABLE_NO_PAN)

        hm = hv.DynamicMap(heatmap, streams=[self._heat_pipe])
        self._tap = hv.streams.Tap(source=hm, x=None, y=None)
        self._tap.add_subscriber(self._on_tap)
        self._plot.object = hm

    def _redraw(self, *_):
        if self._updating or self.session.table is None or (self.layout.has_blocks and not self.layout.flat):
            return
        df = self.frame()
        if not df.empty:  # an empty selection (no metric chosen) keeps the last picture
            self._heat_pipe.send(df)

    def _on_tap(self, x=None, y=None):
        if y is not None:
            self.session.select_layer(str(y))

    # -- depth x module grid ---------------------------------------------------------------
    def grid_frame(self) -> pd.DataFrame:
        """The grid drawn: ``block, col, module, layer, value`` (see
        :func:`wsviz.analysis.blocks.depth_frame`)."""
        return depth_frame(self.session.table, self.layout, self.metric, self.model)

    def _build_grid(self) -> None:
        """Create the grid's figure once, before the page is rendered: a DynamicMap fed by
        :attr:`_cells_pipe` (cells) and :attr:`_outline` (selection). Later tables, metrics
        and models only send new data, so the figure, its Tap stream and its server
        callbacks stay those of the first render (a figure first drawn after the page was
        rendered — the first session with an empty cache — never received its taps)."""
        blocks = self.layout.blocks
        _, height, step = grid_geometry(len(blocks))
        n_cols = len(self.layout.modules)
        xticks = [(i, m) for i, m in enumerate(self.layout.modules)]
        yticks = [(b, str(b)) for b in blocks if (b - blocks[0]) % step == 0]
        long_labels = max(len(m) for m in self.layout.modules) > 5
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in
                              ("x0", "y0", "x1", "y1", "value", "block")}).assign(
            layer=pd.Series(dtype=str), module=pd.Series(dtype=str))
        self._cells_pipe = hv.streams.Pipe(data=empty[["x0", "y0", "x1", "y1", "value",
                                                      "layer", "module", "block"]])

        def cells_element(data: pd.DataFrame) -> hv.Rectangles:
            finite = data["value"].to_numpy(dtype=float)
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            # the colour bar is titled with the metric (the hook keeps it so on updates);
            # hover values with 4 significant digits (plot_style.READABLE)
            value = hv.Dimension("value", label=self.metric or "value")
            rects = hv.Rectangles(data, kdims=["x0", "y0", "x1", "y1"],
                                  vdims=[value, "layer", "module", "block"]).opts(
                color="value", cmap="viridis", clim=(lo, hi if hi > lo else lo + 1e-12),
                colorbar=True, line_color=None, tools=["hover", "tap"], **NO_FADE,
                hover_tooltips=[("tensor", "@layer"), ("block", "@block"),
                                ("module", "@module"), ("value", "@value")],
                width=GRID_WIDTH, height=height, xticks=xticks, yticks=yticks,
                xrotation=60 if long_labels else 0, invert_yaxis=True,
                xlim=(-0.5, n_cols - 0.5), ylim=(blocks[0] - 0.5, blocks[-1] + 0.5),
                xlabel="module", ylabel="block",
                title=f"Depth × module ({len(blocks)} blocks)", toolbar="above",
                default_tools=["save", "reset"], fontsize={"title": 10}, shared_axes=False,
                framewise=True, **READABLE_NO_PAN)
            self._cells = rects
            return rects

        cells = hv.DynamicMap(cells_element, streams=[self._cells_pipe])
        outline = hv.DynamicMap(
            lambda data: hv.Rectangles(data, kdims=["x0", "y0", "x1", "y1"]).opts(
                fill_alpha=0.0, line_color="red", line_width=3),
            streams=[self._outline])
        self._grid_tap = hv.streams.Tap(source=cells, x=None, y=None)
        self._grid_tap.add_subscriber(self._on_grid_tap)
        self._grid.object = (cells * outline).opts(**READABLE_NO_PAN)

    def _redraw_grid(self, *_):
        if (self._updating or self.session.table is None or not self.layout.has_blocks
                or not self.metric):
            return
        df = self.grid_frame()
        cells = df.assign(x0=df["col"] - 0.5, x1=df["col"] + 0.5,
                          y0=df["block"] - 0.5, y1=df["block"] + 0.5)
        self._cells_pipe.send(cells[["x0", "y0", "x1", "y1", "value", "layer", "module",
                                     "block"]])
        if df.empty:
            self._by_module.object = hv.Div(
                html("<i>No values of {} in the blocks.</i>", self.metric)).opts(height=60)
            self._by_model.object = None
            return
        self._by_module.object = self._module_profile_plot(df)
        self._by_model.object = self._model_profile_plot()

    def _on_grid_tap(self, x=None, y=None):
        if x is None or y is None:
            return
        layer = self.layout.layer_at(int(round(x)), int(round(y)))
        if layer is not None:
            self.session.select_layer(layer)

    def _profile_opts(self, title: str) -> dict:
        return dict(width=PROFILE_WIDTH, height=340, xlabel="block", ylabel=self.metric,
                    title=title, legend_position="bottom", legend_cols=3,
                    fontsize={"title": 10, "legend": 8}, toolbar="above",
                    shared_axes=False, show_grid=True, tools=["hover"], **READABLE)

    def _module_profile_plot(self, df: pd.DataFrame):
        prof = module_profiles(df)
        curves = [hv.Curve(g, "block", "value", label=str(m))
                  for m, g in prof.groupby("module", sort=False)]
        return hv.Overlay(curves).opts(**self._profile_opts(
            f"{self.metric} per module ({self.model})"))

    def _model_profile_plot(self):
        cell = self.layout.cell_of(self.session.layer) if self.session.layer else None
        module = self.layout.modules[cell[0]] if cell else None
        prof = model_profiles(self.session.table, self.layout, self.metric, module)
        if prof.empty:
            return hv.Div(html("<i>No per-model values of {}.</i>", self.metric)).opts(height=60)
        curves = [hv.Curve(g, "block", "value", label=str(m))
                  for m, g in prof.groupby("model", sort=False)]
        what = f"module {module}" if module else "mean over modules"
        return hv.Overlay(curves).opts(**self._profile_opts(
            f"{self.metric} per model ({what})"))

    def __panel__(self):
        controls = pn.Row(self._model_w, self._metric1_w) if self.layout.has_blocks \
            else pn.Row(self._model_w, self._metric_w)
        parts = [controls, self._selected, pn.Row(self._progress, self._status)]
        if self.layout.has_blocks:
            parts.append(pn.Row(self._grid, pn.Column(self._by_module, self._by_model)))
            if self.layout.flat:
                parts += [self._flat_title, self._metric_w, self._plot]
        else:
            parts.append(self._plot)
        return pn.Column(*parts, sizing_mode="stretch_width")

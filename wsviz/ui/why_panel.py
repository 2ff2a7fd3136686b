""""Why this merge": a live view of what the current recipe does to each layer.

Shows the merge tuner's ``recipe``: the tuner calls :meth:`WhyPanel.update` after every
parameter change (once the live metrics are on screen, so it never delays them), which fetches
:meth:`Workspace.merge_anatomy` off the event loop (spinner + progress bar, coalesced to the
latest recipe) and shows, per tensor sorted by depth (or per block), the share of each
model's |delta| mass the trim keeps, the share the sign election discards, the cosine of the
merged delta with each task vector and the merged delta's norm — plus whole-model totals and
a table. No evaluator is needed.
"""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.io.state import set_curdoc
from panel.viewable import Viewer

from wsviz.errors import WsvizError
from wsviz.ui.plot_style import READABLE
from wsviz.ui.session import Session
from wsviz.ui.text import Md, SafeMarkdown, md, md_code, md_join
from wsviz.ui.widgets import FT_PALETTE

#: (column, plot title, y label) of the per-layer plots
PANELS = (
    ("kept", "Kept by the trim (share of each model's |Δ| mass)", "kept"),
    ("elected_away", "Discarded by the sign election (share of |Δ| mass)", "elected away"),
    ("cos", "Cosine of the merged delta with each task vector", "cos"),
    ("merged_norm", "Norm of the merged delta ‖merged − base‖", "‖Δ‖"),
)
#: quiet time (ms) after the last parameter change before the anatomy is computed, in a
#: served page: a drag-drag-drag sequence computes it once, and never competes with the
#: live metrics of the next change
SETTLE_MS = 800
TABLE_COLUMNS = ["layer", "model", "kept", "elected_away", "cos", "task_norm", "merged_norm"]
#: the caption above the plots, per grouping
CAPTIONS = {
    "tensor": "Per tensor (sorted by depth): the share of each model's |delta| mass the trim "
              "keeps, the share the sign election throws away, how well the merged delta "
              "lines up with each task vector, and its size. No evaluator needed.",
    "block": "Per block (-1: tensors before the first block, the last number: tensors after "
             "the last block), mass-weighted over the block's tensors: the share of each "
             "model's |delta| mass the trim keeps, the share the sign election throws away, "
             "how well the merged delta lines up with each task vector, and its size. No "
             "evaluator needed.",
}


def summary_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Whole-model totals per model (see :func:`wsviz.analysis.anatomy.anatomy_summary`)."""
    from wsviz.analysis.anatomy import anatomy_summary

    return anatomy_summary(table)


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _num(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def summary_markdown(table: pd.DataFrame, method: str) -> Md:
    """One paragraph: per model kept / elected-away mass and cosine, merged norm."""
    s = summary_frame(table)
    if s.empty:
        return Md("*no tensors*")
    parts = [md("{}: kept **{}**, elected away **{}**, cos **{}**", md_code(r.model),
                _pct(r.kept), _pct(r.elected_away), _num(r.cos)) for r in s.itertuples()]
    return md("**{}** over {} tensors — merged ‖Δ‖ **{}**  \n{}", method,
              table["layer"].nunique(), _num(float(s["merged_norm"].iloc[0])),
              md_join(" · ", parts))


def model_colors(labels) -> dict[str, str]:
    """A fixed colour per model label (and black for the merged series)."""
    out = {str(m): FT_PALETTE[i % len(FT_PALETTE)] for i, m in enumerate(labels)}
    out["merged"] = "black"
    return out


def x_range(values) -> tuple[float, float]:
    """x-axis limits around ``values`` (tensor orders or block numbers): 3 % of the span,
    at least half a step, on each side; ``(-0.5, 0.5)`` with no values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (-0.5, 0.5)
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.5, 0.03 * (hi - lo))
    return (lo - pad, hi + pad)


def layer_plot(frame: pd.DataFrame, col: str, x: str = "order",
               xlabel: str = "tensor (by depth)", colors: dict | None = None):
    """One of the :data:`PANELS` plots: ``col`` over ``x``, a line and markers per model
    (one ``merged`` series for the merged norm), coloured by model, hover giving the layer
    (or block) and the value — readable from a handful of tensors to hundreds. Always a
    Path * Scatter pair, so a DynamicMap updates it in place. ``frame`` has ``x``,
    ``model``, ``layer`` (or ``block``) and the metric columns."""
    title, ylabel = next((t, y) for c, t, y in PANELS if c == col)
    key = "layer" if "layer" in frame else "block"
    d = frame.drop_duplicates(x).assign(model="merged") if col == "merged_norm" else frame
    extra = [key]  # kept beside "pos" so hover (and the page) name the tensor or block
    # one x dimension ("pos", labelled per view) whatever ``x`` is: HoloViews keys a plot's
    # ranges by dimension, so a new dimension name would keep the previous view's x range
    pos = hv.Dimension("pos", label=xlabel)
    d = d.assign(pos=d[x])[["pos", col, "model", *extra]]
    colors = colors or model_colors(dict.fromkeys(d["model"]))
    paths = [{"pos": g["pos"].to_numpy(), col: g[col].to_numpy(), "model": str(m)}
             for m, g in d.groupby("model", sort=False)]
    if not paths:  # nothing computed yet (e.g. the tab shown before the first anatomy)
        paths = [{"pos": np.zeros(1), col: np.full(1, np.nan), "model": ""}]
    lines = hv.Path(paths, [pos, col], vdims=["model"]).opts(
        color="model", cmap=colors, line_width=1.5, show_legend=False, framewise=True)
    dots = hv.Scatter(d.astype({"model": str}), pos, [col, "model", *extra]).opts(
        color="model", cmap=colors, size=5, tools=["hover"], show_legend=col == "kept",
        legend_position="right", framewise=True)
    ylim = (-0.03, 1.03) if col in ("kept", "elected_away") else (None, None)  # shares
    # x limits around the points of this view (a dimension range, re-read on every frame:
    # framewise must be set on the elements, the overlay's own setting is not enough)
    return (lines * dots).opts(title=title, ylabel=ylabel, xlabel=xlabel, responsive=True,
                               height=200, framewise=True, ylim=ylim,
                               **READABLE).redim.range(pos=x_range(d["pos"]))


def layer_plots(frame: pd.DataFrame, x: str = "order", xlabel: str = "tensor (by depth)",
                colors: dict | None = None) -> list:
    """The four :func:`layer_plot` plots of ``frame``."""
    return [layer_plot(frame, col, x, xlabel, colors) for col, _, _ in PANELS]


class WhyPanel(Viewer):
    """"Why this merge" for ``tuner.recipe`` (see the module docstring)."""

    table = param.DataFrame(default=None, allow_None=True,
                            doc="The anatomy table of the last recipe shown.")
    n_updates = param.Integer(default=0, doc="Anatomies shown in this session.")
    group = param.Selector(default="tensor", objects=["tensor", "block"],
                           doc="Plot per tensor (sorted by depth) or per block.")

    def __init__(self, session: Session, tuner, **params):
        super().__init__(**params)
        self.session = session
        self.tuner = tuner
        self._caption = SafeMarkdown(CAPTIONS[self.group], styles={"color": "#555"},
                                     css_classes=["wsviz-why-caption"],
                                     sizing_mode="stretch_width")
        self._summary = SafeMarkdown(Md("*waiting for a valid recipe…*"),
                                     css_classes=["wsviz-why-summary"],
                                     sizing_mode="stretch_width")
        self._busy = pn.indicators.LoadingSpinner(value=False, size=20)
        self._progress = pn.indicators.Progress(value=0, max=100, width=200, visible=False)
        self._group_w = pn.widgets.RadioButtonGroup.from_param(self.param.group,
                                                               button_type="light")
        self._colors = model_colors(session.workspace.labels)
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in ("order", *(c for c, _, _ in
                                                                      PANELS))})
        self._pipe = hv.streams.Pipe(data=(empty.assign(model="", layer=""), "order",
                                           "tensor (by depth)"))
        self._panes = [pn.pane.HoloViews(hv.DynamicMap(
            lambda data, col=col: layer_plot(data[0], col, data[1], data[2], self._colors),
            streams=[self._pipe]), sizing_mode="stretch_width") for col, _, _ in PANELS]
        self._plots = pn.Column(*self._panes, sizing_mode="stretch_width")
        self._table = pn.widgets.Tabulator(pd.DataFrame(columns=TABLE_COLUMNS),
                                           pagination="remote", page_size=12,
                                           sizing_mode="stretch_width", disabled=True,
                                           show_index=False)
        self._timer = None
        self._doc = None
        self.param.watch(lambda e: self._draw(), "group")
        self.update()

    def schedule(self) -> None:
        """:meth:`update` once the tuner has been quiet for :data:`SETTLE_MS` (served
        page); at once in a notebook or test (no event loop to wait on)."""
        doc = pn.state.curdoc
        if not self.session.runner.background or doc is None or doc.session_context is None:
            self.update()
            return
        self.cancel()
        self._doc = doc
        self._timer = doc.add_timeout_callback(self._fire, SETTLE_MS)

    def cancel(self) -> None:
        """Drop a scheduled update (a newer parameter change is on its way)."""
        if self._timer is not None and self._doc is not None:
            try:
                self._doc.remove_timeout_callback(self._timer)
            except ValueError:  # already ran
                pass
        self._timer = None

    def _fire(self) -> None:
        self._timer = None
        with set_curdoc(self._doc):
            self.update()

    def update(self, *_) -> None:
        """Compute the anatomy of the tuner's current recipe (off the event loop)."""
        recipe = self.tuner.recipe
        if recipe is None:
            return
        runner = self.session.runner
        ws = self.session.workspace
        method = getattr(recipe, "method", None) or recipe.get("method", "")

        def progress(frac, msg):
            runner.call_soon(lambda: setattr(self._progress, "value", int(100 * frac)))

        def work():
            try:
                return method, ws.merge_anatomy(recipe, progress=progress)
            except WsvizError as exc:  # e.g. a whole-model method: said in the panel, no toast
                return method, exc

        def done(result):
            self._busy.value = False
            self._progress.visible = False
            if isinstance(result[1], WsvizError):
                self._summary.object = md("*No anatomy for this recipe: {}*", result[1])
                return
            self._show(*result)

        def error(exc):
            self._busy.value = False
            self._progress.visible = False
            self._summary.object = md("*No anatomy for this recipe: {}*", exc)

        self._busy.value = True
        self._progress.value = 0
        self._progress.visible = True
        runner.submit("why", work, done, error)

    def _show(self, method: str, table: pd.DataFrame) -> None:
        with pn.io.hold():
            self.n_updates += 1
            self.table = table
            self._method = method
            self._draw()

    def _draw(self) -> None:
        self._caption.object = CAPTIONS[self.group]
        table = self.table
        if table is None:
            return
        self._summary.object = md("*update #{}* · {}", self.n_updates,
                                  summary_markdown(table, self._method))
        if self.group == "block":  # the plots update in place (no figure rebuilt)
            from wsviz.analysis.anatomy import anatomy_by_block

            self._pipe.send((anatomy_by_block(table), "block", "block"))
        else:
            self._pipe.send((table, "order", "tensor (by depth)"))
        self._table.value = table[TABLE_COLUMNS].round(4)

    def __panel__(self):
        return pn.Column(
            pn.Row(SafeMarkdown(Md("### Why this merge"), margin=(0, 10)), self._busy,
                   self._progress, self._group_w),
            self._caption, self._summary, self._plots, self._table,
            sizing_mode="stretch_width",
        )

"""Overview: a layers x metrics heatmap of the analysis table; tap a cell to select a layer."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.ui.session import Session

AGGREGATES = ("mean over models", "max over models")

# Metrics shown first when present (the rest follow in table order).
PREFERRED = (
    "delta_fro", "delta_rel", "delta_mean_abs", "effective_rank", "stable_rank", "alpha",
    "sign_conflict", "intruders", "cosine_mean",
)


def heatmap_frame(table: pd.DataFrame, model: str, metrics: list[str] | None = None,
                  layers: list[str] | None = None) -> pd.DataFrame:
    """Reduce the tidy table to one value per (layer, metric) for ``model`` (a label or an
    aggregate in :data:`AGGREGATES`). Adds ``score``: the value min-max scaled per metric
    to [0, 1] so metrics of different units share one colour map.

    Returns columns ``layer, metric, value, score``; rows with no finite value are dropped.
    """
    df = table[["layer", "model", "metric", "value"]].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df = df[np.isfinite(df["value"].to_numpy(dtype=float))]
    if metrics:
        df = df[df["metric"].isin(metrics)]
    if model in AGGREGATES:
        how = "mean" if model == AGGREGATES[0] else "max"
        out = df.groupby(["layer", "metric"], sort=False)["value"].agg(how).reset_index()
    else:
        own = df[df["model"].astype(str) == model]
        # model-independent rows (model empty / NaN / "base") are kept as they are
        shared = df[df["model"].isna() | df["model"].astype(str).isin(["", "base", "all"])]
        shared = shared[~shared.set_index(["layer", "metric"]).index.isin(
            own.set_index(["layer", "metric"]).index)]
        out = pd.concat([own, shared]).groupby(["layer", "metric"], sort=False)["value"] \
            .mean().reset_index()
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


class Overview(Viewer):
    """Heatmap of layers x metrics, per model or aggregated. Tapping a cell sets
    ``session.layer``, which every other view follows."""

    model = param.Selector(default=AGGREGATES[0], objects=list(AGGREGATES),
                           doc="Model whose metrics are shown, or an aggregate over models.")
    metrics = param.ListSelector(default=[], objects=[], doc="Metrics (columns) shown.")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        ws = session.workspace
        self.param.model.objects = list(AGGREGATES) + list(ws.labels)
        self._tap = None
        self._plot = pn.pane.HoloViews(None, sizing_mode="stretch_width", min_height=300,
                                       name="overview-heatmap", css_classes=["wsviz-heatmap"])
        self._progress = pn.indicators.Progress(value=0, max=100, width=300, active=True)
        self._status = pn.pane.Markdown("", css_classes=["wsviz-overview-status"])
        self._model_w = pn.widgets.Select.from_param(self.param.model, name="Model", width=220)
        self._metric_w = pn.widgets.MultiChoice.from_param(self.param.metrics, name="Metrics",
                                                           sizing_mode="stretch_width")
        self._selected = pn.pane.Markdown("", css_classes=["wsviz-selected-layer"])
        session.param.watch(self._on_table, "table")
        session.param.watch(self._on_progress, ["analysis_progress", "status"])
        session.param.watch(self._on_layer, "layer")
        self.param.watch(self._redraw, ["model", "metrics"])
        self._on_layer()
        if session.table is not None:
            self._on_table()
        else:
            self._on_progress()

    def _on_progress(self, *_):
        if self.session.table is None:
            self._progress.value = int(100 * self.session.analysis_progress)
            self._progress.visible = True
            self._status.object = self.session.status or "waiting for the analysis…"
        else:
            self._progress.visible = False
            self._status.object = ""

    def _on_layer(self, *_):
        self._selected.object = f"**Selected layer:** `{self.session.layer}`"

    def _on_table(self, *_):
        table = self.session.table
        if table is None:
            return
        ms = ordered_metrics(table)
        self.param.metrics.objects = ms
        self._on_progress()
        if self.metrics == ms[:12]:
            self._redraw()
        else:
            self.metrics = ms[:12]  # triggers _redraw

    def frame(self) -> pd.DataFrame:
        """The (layer, metric, value, score) frame currently drawn."""
        return heatmap_frame(self.session.table, self.model, self.metrics,
                             self.session.workspace.layers())

    def _redraw(self, *_):
        if self.session.table is None:
            return
        df = self.frame()
        if df.empty:
            self._plot.object = hv.Div("<i>No metric values for this selection.</i>")
            return
        n_layers = df["layer"].nunique()
        height = int(min(1400, max(300, 22 * n_layers + 120)))
        hm = hv.HeatMap(df, kdims=["metric", "layer"], vdims=["score", "value"]).opts(
            cmap="viridis", colorbar=True, tools=["hover", "tap"], xrotation=45,
            invert_yaxis=True, responsive=True, height=height, clim=(0, 1),
            title="Layers x metrics (colour: scaled per metric; hover for values)",
            toolbar="above", default_tools=["save", "reset"],
        )
        self._tap = hv.streams.Tap(source=hm, x=None, y=None)
        self._tap.add_subscriber(self._on_tap)
        self._plot.object = hm
        self._plot.min_height = height

    def _on_tap(self, x=None, y=None):
        if y is not None:
            self.session.select_layer(str(y))

    def __panel__(self):
        return pn.Column(
            pn.Row(self._model_w, self._metric_w),
            self._selected,
            pn.Row(self._progress, self._status),
            self._plot,
            sizing_mode="stretch_width",
        )

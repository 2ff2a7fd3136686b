"""Task map: task vectors (whole model or one layer group) in 2-D by PCA and UMAP, plus the
whole-model cosine-similarity matrix."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.ui.plot_style import READABLE, cell_labels
from wsviz.ui.session import Session

WHOLE = "whole model"


def project_2d(X: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """Project rows of ``X`` [n, d] to [n, 2] by "pca" or "umap" (tiny n handled: pads with
    zeros when fewer than 2 components exist)."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if how == "pca":
        from sklearn.decomposition import PCA

        k = max(1, min(2, n, X.shape[1]))
        Y = PCA(n_components=k, random_state=seed).fit_transform(X)
    else:
        if n < 4:
            return project_2d(X, "pca")
        import umap

        Y = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), init="random",
                      random_state=seed, metric="cosine").fit_transform(X)
    if Y.shape[1] < 2:
        Y = np.c_[Y, np.zeros(n)]
    return Y


def label_range(values, labels=None, pad: float = 0.15) -> tuple[float, float]:
    """Axis limits around ``values`` with room for text labels centred on the points: the
    span padded by ``pad`` plus, with ``labels``, 2.5 % of the span per character of the
    longest label on each side (a 300-600 px wide plot); a span of 1 when all are equal."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (-1.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    span = (hi - lo) or max(1.0, abs(hi))
    chars = max((len(str(t)) for t in labels), default=0) if labels is not None else 0
    extra = span * (pad + 0.025 * chars)
    return (lo - extra, hi + extra)


class TaskMap(Viewer):
    """Scatter of task vectors (PCA and UMAP side by side) and the cosine matrix."""

    group = param.Selector(default=WHOLE, objects=[WHOLE],
                           doc="Whole model or one layer group.")
    autostart = param.Boolean(default=True, doc="Compute as soon as displayed (the app "
                              "starts it when its tab is first opened instead).")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        groups = sorted(set(session.workspace.layer_groups().values()))
        self.param.group.objects = [WHOLE] + groups
        self._pca = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._umap = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._cos = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self.points: pd.DataFrame | None = None
        self.param.watch(self._update, "group")
        self._started = False

    def start(self):
        """Compute the projections (off the event loop in server mode)."""
        if not self._started:
            self._started = True
            self._update()
            self.session.runner.submit("cosine", self.session.workspace.cosine_matrix,
                                       self._show_cos)

    def _update(self, *_):
        group = None if self.group == WHOLE else self.group
        ws = self.session.workspace

        def work():
            labels, X = ws.task_map(group)
            pts = pd.DataFrame({"model": labels,
                                **dict(zip(["pca1", "pca2"], project_2d(X, "pca").T))})
            return pts, X

        def umap_work(X):
            return project_2d(X, "umap")

        def done(result):
            pts, X = result
            self.points = pts
            self._draw(self._pca, pts, ("pca1", "pca2"), "PCA")
            self.session.runner.submit("taskmap-umap", lambda: umap_work(X),
                                       lambda Y: self._show_umap(pts, Y))

        self._pca.object = hv.Div("<i>computing…</i>")
        self._umap.object = hv.Div("<i>UMAP: computing… (the first run compiles numba "
                                   "code)</i>")
        self.session.runner.submit("taskmap", work, done)

    def _show_umap(self, pts: pd.DataFrame, Y):
        pts = pts.assign(umap1=Y[:, 0], umap2=Y[:, 1])
        self.points = pts
        self._draw(self._umap, pts, ("umap1", "umap2"), "UMAP")

    def _draw(self, pane, pts: pd.DataFrame, dims, name: str):
        opts = dict(size=12, tools=["hover"], responsive=True, height=340, color="model",
                    cmap="Category10", show_legend=False)
        a, b = dims
        pts_el = hv.Points(pts, [a, b], ["model"]).opts(**opts, title=f"{name}: {self.group}")
        # labels centred above their point (clear of the marker), inside ranges padded for
        # the longest label
        ylim = label_range(pts[b], None, 0.25)
        pane.object = (pts_el * hv.Labels(pts, [a, b], "model").opts(
            text_font_size="9pt", text_align="center", text_baseline="bottom",
            yoffset=0.06 * (ylim[1] - ylim[0]))).opts(
            xlim=label_range(pts[a], pts["model"]), ylim=ylim, **READABLE)

    def _show_cos(self, cos: pd.DataFrame):
        df = cos.copy()
        df.index = df.index.astype(str)
        df.columns = df.columns.astype(str)
        long = df.stack().rename("cos").reset_index()
        long.columns = ["a", "b", "cos"]
        self._cos.object = (hv.HeatMap(long, ["a", "b"], "cos").opts(
            cmap="RdBu_r", clim=(-1, 1), colorbar=True, tools=["hover"], height=360,
            responsive=True, title="Task-vector cosine similarity (whole model)",
            xrotation=45) * cell_labels(long, ["a", "b"], "cos", long["cos"].abs() > 0.6)
            ).opts(**READABLE)

    def __panel__(self):
        if self.autostart:
            self.start()
        return pn.Column(
            pn.widgets.Select.from_param(self.param.group, name="Task vectors of", width=260),
            pn.Row(self._pca, self._umap, sizing_mode="stretch_width"),
            self._cos,
            sizing_mode="stretch_width",
        )

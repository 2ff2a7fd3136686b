"""Layer detail: spectra, ESD with its power-law fit, delta histogram, the matrix as an image,
the sign-conflict map and agreement matrix, and intruder dimensions of the selected layer."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import CustomJSHover, HoverTool
from holoviews.operation.datashader import rasterize
from panel.viewable import Viewer

from wsviz.analysis.maps import CELL_RANGE_JS, view_shape
from wsviz.session.views import LayerDetailView
from wsviz.ui.plot_style import READABLE, cell_labels, sig
from wsviz.ui.session import Session
from wsviz.ui.text import Md, SafeMarkdown, html, md, md_code
from wsviz.ui.widgets import submit_with_spinner

# Matrices larger than this many cells are drawn through datashader's rasterize (its first
# use JIT-compiles numba code for several seconds, so small matrices go to Bokeh directly).
RASTERIZE_CELLS = 1024 * 1024


def _note(detail: LayerDetailView, key: str, default: str) -> hv.Div:
    return hv.Div(html("<i>{}</i>", detail.notes.get(key, default))).opts(height=60)


def spectra_plot(d: LayerDetailView):
    if d.spectra is None or d.spectra.empty:
        return _note(d, "spectra", "No spectra (1-D tensor).")
    curves = []
    # base and the task deltas (fine-tuned spectra sit on top of the base one)
    spectra = d.spectra[~d.spectra["series"].astype(str).str.startswith("ft:")]
    for series, g in spectra.groupby("series", sort=False):
        g = g[g["sigma"] > 0]
        dash = "dashed" if str(series).startswith("delta") else "solid"
        curves.append(hv.Curve(g, "index", "sigma", label=str(series)).opts(line_dash=dash))
    # the legend below the data, in columns (long labels such as "delta ft-prose" would
    # squeeze the plot from the side and overprint its x ticks)
    return hv.Overlay(curves).opts(
        logy=True, title="Singular values (log scale)", legend_position="bottom",
        legend_cols=min(3, len(curves)) or 1, responsive=True, height=360, xlabel="index i",
        ylabel="σ_i", xticks=5, fontsize={"legend": 8}, **READABLE)


def esd_plot(d: LayerDetailView, series: str | None = None):
    if d.esd is None or d.esd.empty:
        return _note(d, "esd", "No ESD (1-D tensor).")
    names = list(dict.fromkeys(d.esd["series"]))
    series = series if series in names else names[0]
    lam = d.esd.loc[d.esd["series"] == series, "lam"].to_numpy(dtype=float)
    lam = lam[lam > 0]
    if lam.size == 0:
        return _note(d, "esd", "All eigenvalues are zero.")
    edges = np.logspace(np.log10(lam.min()), np.log10(lam.max()) + 1e-9, 30)
    counts, edges = np.histogram(lam, bins=edges, density=True)
    centers = np.sqrt(edges[:-1] * edges[1:])
    ok = counts > 0
    hist = hv.Curve((centers[ok], counts[ok]), kdims=["λ = σ²"], vdims=["density"],
                    label=f"ESD {series}").opts(interpolation="steps-mid", line_width=2)
    pts = hv.Scatter((centers[ok], counts[ok]), kdims=["λ = σ²"], vdims=["density"]).opts(
        size=5, color="#1f77b4")
    layers = [hist, pts]
    title = f"ESD of {series}"
    if d.esd_fit is not None and not d.esd_fit.empty:
        fit = d.esd_fit[d.esd_fit["series"] == series]
        if not fit.empty and np.isfinite(fit["alpha"].iloc[0]):
            alpha = float(fit["alpha"].iloc[0])
            xmin = float(fit["xmin"].iloc[0])
            tail = lam[lam >= xmin]
            if tail.size and xmin > 0:
                # normalised power law over the tail, scaled by the tail's share of the mass
                xs = np.logspace(np.log10(xmin), np.log10(lam.max()), 50)
                ys = (alpha - 1) / xmin * (xs / xmin) ** (-alpha) * (tail.size / lam.size)
                layers.append(hv.Curve((xs, ys), kdims=["λ = σ²"], vdims=["density"],
                                       label=f"power law α={sig(alpha, 3)}, "
                                             f"λ ≥ {sig(xmin, 3)}").opts(color="red"))
                title += f": α = {sig(alpha, 3)}"
    # short title (the fit's λ_min is in the legend), legend below the data
    return hv.Overlay(layers).opts(logx=True, logy=True, title=title, responsive=True,
                                   height=360, legend_position="bottom", legend_cols=2,
                                   xticks=3,  # under a decade: linear ticks, crowded
                                   fontsize={"legend": 8, "title": 10}, **READABLE)


def delta_hist_plot(d: LayerDetailView):
    if d.delta_hist is None or d.delta_hist.empty:
        return _note(d, "delta_hist", "No delta histogram.")
    hists = []
    for series, g in d.delta_hist.groupby("series", sort=False):
        edges = np.r_[g["left"].to_numpy(), g["right"].to_numpy()[-1:]]
        hists.append(hv.Histogram((edges, g["count"].to_numpy()), kdims=["Δ value"],
                                  vdims=["count"], label=str(series)).opts(alpha=0.45))
    return hv.Overlay(hists).opts(title="Histogram of delta values", responsive=True,
                                  height=360, legend_position="bottom",
                                  legend_cols=min(3, len(hists)) or 1, xticks=5,
                                  fontsize={"legend": 8}, **READABLE)


def matrix_plot(arr: np.ndarray, title: str, cmap: str = "RdBu_r", symmetric: bool = True,
                shape: tuple[int, ...] | None = None, mode: str = "strided", key: str = "matrix",
                label: str = "value"):
    """Image of a 2-D array on the axes of the tensor it shows: ``shape`` is the tensor's
    shape (its ``[rows, cols]`` view, see :func:`wsviz.analysis.maps.view_shape`; default
    the array's own), so a down-sampled map still spans rows ``0..rows`` and columns
    ``0..cols`` with row 0 at the top; the hover names the real rows / columns a cell
    covers (``mode`` "strided" for sampled matrices, "pooled" for block averages).
    ``key`` names the axes' dimensions so that two maps never share (link) their axes.
    Symmetric colour limits unless ``symmetric=False``; rasterized by datashader when the
    array is larger than :data:`RASTERIZE_CELLS`. ``label`` titles the colour bar."""
    arr = np.asarray(arr, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    h, w = arr.shape
    rows, cols = view_shape(tuple(shape)) if shape else (h, w)
    finite = arr[np.isfinite(arr)]
    if symmetric:
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        clim = (-lim or -1.0, lim or 1.0)
    else:
        clim = (float(finite.min()) if finite.size else 0.0,
                float(finite.max()) if finite.size else 1.0)
    xdim = hv.Dimension(f"{key}_column", label="column")
    ydim = hv.Dimension(f"{key}_row", label="row")
    # array row 0 at y in [0, rows/h): Image puts its first array row at the top, so flip
    # the array and invert the axis (row 0 drawn at the top, y = real row index)
    img = hv.Image(arr[::-1], bounds=(0, 0, cols, rows), kdims=[xdim, ydim], vdims=[hv.Dimension("v", label=label)])
    how = "" if (h, w) == (rows, cols) else (
        f" — {mode} to {h}×{w}, a cell ≈ {rows / h:.3g}×{cols / w:.3g}")
    opts = dict(cmap=cmap, colorbar=True, clim=clim, responsive=True, height=360,
                title=f"{title} [{rows}×{cols}]{how}", invert_yaxis=True, shared_axes=False,
                xlim=(0, cols), ylim=(0, rows), xticks=5, yticks=5, fontsize={"title": 10},
                **READABLE)
    if h * w > RASTERIZE_CELLS:
        return rasterize(img, aggregator="mean").opts(tools=["hover"], **opts)
    fmt = {axis: CustomJSHover(args=dict(n=n, m=m, mode=mode), code=CELL_RANGE_JS)
           for axis, n, m in (("$y", rows, h), ("$x", cols, w))}
    hover = HoverTool(tooltips=[("rows", "$y{custom}"), ("columns", "$x{custom}"),
                                ("value", "@image")], formatters=fmt)
    return img.opts(tools=[hover], **opts)


def agreement_plot(agreement: pd.DataFrame):
    df = agreement.copy()
    df.index = df.index.astype(str)
    df.columns = df.columns.astype(str)
    long = df.stack().rename("agreement").reset_index()
    long.columns = ["a", "b", "agreement"]
    # a fixed size per cell (>= 60 px: room for its "0.51"), labels sized to the cell
    n = len(df)
    cell = max(60, min(90, 480 // max(1, n)))
    longest = max((len(str(x)) for x in df.index), default=1)
    return (hv.HeatMap(long, ["a", "b"], "agreement").opts(
        cmap="RdBu", clim=(0, 1), colorbar=True, tools=["hover"], xrotation=45,
        title="Pairwise sign agreement", xlabel="", ylabel="", fontsize={"title": 10},
        ) * cell_labels(long, ["a", "b"], "agreement",
                        (long["agreement"] - 0.5).abs() > 0.3)).opts(
        width=cell * n + 7 * longest + 120, height=cell * n + 6 * longest + 70, **READABLE)


def intruder_table(d: LayerDetailView):
    if d.intruders is None:
        return SafeMarkdown(md("*{}*", d.notes.get('intruders', 'No intruder analysis.')))
    if d.intruders.empty:
        return SafeMarkdown(Md("**Intruder dimensions:** none found (every top-k singular "
                               "vector of the fine-tunes is close to a base direction)."))
    return pn.Column(
        SafeMarkdown(md("**Intruder dimensions:** {} found", len(d.intruders))),
        pn.pane.DataFrame(d.intruders, index=False, float_format="{:.3f}".format,
                          sizing_mode="stretch_width"),
    )


class LayerDetail(Viewer):
    """All detail views of ``session.layer``; follows the selection made anywhere."""

    matrix_of = param.Selector(default=None, objects=[], allow_None=True,
                               doc="Which matrix to draw (base weight, a fine-tune, a delta).")
    esd_of = param.Selector(default=None, objects=[], allow_None=True,
                            doc="Whose ESD to draw.")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.detail: LayerDetailView | None = None
        self._quiet = False
        self._title = SafeMarkdown("", css_classes=["wsviz-detail-title"])
        self._spectra = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._esd = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._hist = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._matrix = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._conflict = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._agree = pn.pane.HoloViews(None)  # fixed size per cell (agreement_plot)
        self._intruders = pn.Column(sizing_mode="stretch_width")
        self._spinner = pn.indicators.LoadingSpinner(value=False, size=24)
        session.param.watch(self._load, "layer")
        self.param.watch(self._draw_matrix, "matrix_of")
        self.param.watch(self._draw_esd, "esd_of")
        self._load()

    def _load(self, *_):
        layer = self.session.layer
        if not layer:
            return
        self._title.object = md("### Layer {} — loading…", md_code(layer))
        submit_with_spinner(self.session.runner, self._spinner, "detail",
                            lambda: self.session.workspace.detail(layer), self._show)

    def _show(self, d: LayerDetailView):
        self.detail = d
        shape = "×".join(map(str, d.shape)) if d.shape else "?"
        self._title.object = md("### Layer {} — shape {}", md_code(d.layer), shape)
        self._spectra.object = spectra_plot(d)
        self._hist.object = delta_hist_plot(d)
        self._quiet = True
        try:
            keys = list(d.matrix)
            choice = self.matrix_of if self.matrix_of in d.matrix else next(
                (k for k in keys if k.startswith("delta")), keys[0] if keys else None)
            self.param.matrix_of.objects = keys
            self.matrix_of = choice
            esd_names = list(dict.fromkeys(d.esd["series"])) if d.esd is not None else []
            self.param.esd_of.objects = esd_names
            if self.esd_of not in esd_names:
                self.esd_of = esd_names[0] if esd_names else None
        finally:
            self._quiet = False
        self._draw_matrix()
        self._draw_esd()
        if d.sign_conflict is not None:
            self._conflict.object = matrix_plot(
                d.sign_conflict, "Sign-conflict map (fraction disagreeing)", cmap="magma",
                symmetric=False, shape=d.shape, mode="pooled", key="conflict",
                label="fraction disagreeing")
        else:
            self._conflict.object = _note(d, "sign_conflict", "No sign-conflict map.")
        self._agree.object = (agreement_plot(d.agreement) if d.agreement is not None
                              else _note(d, "agreement", "No agreement matrix."))
        self._intruders[:] = [intruder_table(d)]

    def _draw_matrix(self, *_):
        d = self.detail
        if d is None or self._quiet:
            return
        if self.matrix_of and self.matrix_of in d.matrix:
            self._matrix.object = matrix_plot(d.matrix[self.matrix_of], self.matrix_of,
                                              shape=d.shape, mode="strided", key="matrix",
                                              label=self.matrix_of)
        else:
            self._matrix.object = _note(d, "matrix", "No matrix view (1-D tensor).")

    def _draw_esd(self, *_):
        if self.detail is not None and not self._quiet:
            self._esd.object = esd_plot(self.detail, self.esd_of)

    def __panel__(self):
        # Sub-tabs are dynamic: only the visible one is rendered when the layer changes.
        return pn.Column(
            pn.Row(self._title, self._spinner),
            pn.Tabs(
                ("Spectra", pn.Column(
                    pn.widgets.Select.from_param(self.param.esd_of, name="ESD of", width=220),
                    self._spectra, self._esd,  # stacked: each gets the full width
                    sizing_mode="stretch_width")),
                ("Δ histogram", self._hist),
                ("Matrix", pn.Column(
                    pn.widgets.Select.from_param(self.param.matrix_of, name="Matrix",
                                                 width=240),
                    self._matrix, sizing_mode="stretch_width")),
                ("Sign conflicts", pn.Column(self._conflict, self._agree,
                                             sizing_mode="stretch_width")),
                ("Intruders", self._intruders),
                dynamic=True, sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )

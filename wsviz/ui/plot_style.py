"""Plot options shared by the dashboard's figures, so that each is readable on a real model.

- The mouse wheel scrolls the page: no scroll tool is active when a figure is drawn (the
  toolbar still offers wheel zoom, one click away, and a DynamicMap update keeps the
  user's choice) — :func:`readable_hook` with ``active_tools=["pan"]``.
- Hover numbers keep 4 significant digits (``0.001634``, ``1.235e+05``), so neighbouring
  cells with values 0.0016 … 0.0023 stay apart — :data:`SIG_JS`, :func:`sig`.
- A colour bar is titled with its colour dimension's label (the metric), also when a
  DynamicMap later shows another metric.

Every figure gets these through ``**READABLE`` in its ``.opts``.
"""

from __future__ import annotations

import math
import re

from bokeh.models import ColorBar, CustomJSHover, HoverTool

#: significant digits of hover values and of numbers in titles
SIG_DIGITS = 4

#: Bokeh ``CustomJSHover`` code: a number with :data:`SIG_DIGITS` significant digits
#: (scientific below 1e-4 and from 1e5), anything else as text
SIG_JS = f"""
if (typeof value !== 'number' || !isFinite(value)) return String(value);
const a = Math.abs(value);
if (a !== 0 && (a < 1e-4 || a >= 1e5)) return value.toExponential({SIG_DIGITS - 1});
return String(Number(value.toPrecision({SIG_DIGITS})));
"""

_FIELD = re.compile(r"^@(\{[^}]+\}|\w+)$")


def sig(x: float, digits: int = SIG_DIGITS) -> str:
    """``x`` with ``digits`` significant digits, as the hover shows it (``0.001634``,
    ``1.235e+05``, ``nan``)."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a != 0 and (a < 1e-4 or a >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{float(f'{x:.{digits}g}'):g}"


def _precise_tooltips(hover: HoverTool) -> None:
    """Give every bare ``@field`` of ``hover`` the :data:`SIG_JS` formatter (idempotent;
    fields that carry their own format are left alone)."""
    tips = hover.tooltips
    if not isinstance(tips, list):
        return
    formatters = dict(hover.formatters or {})
    fmt = None
    out = []
    for label, spec in tips:
        m = _FIELD.match(spec) if isinstance(spec, str) else None
        if m:
            fmt = fmt or CustomJSHover(code=SIG_JS)
            formatters.setdefault(spec, fmt)
            spec = f"{spec}{{custom}}"
        out.append((label, spec))
    hover.update(tooltips=out, formatters=formatters)


def readable_hook(plot, element) -> None:
    """HoloViews bokeh hook: wheel zoom not active on first draw (kept if the user turns it
    on later), precise hover numbers, colour bar titled with the colour dimension."""
    fig = plot.state
    if not getattr(plot, "_wsviz_styled", False):
        plot._wsviz_styled = True
        fig.toolbar.active_scroll = None
    for tool in fig.toolbar.tools:
        if isinstance(tool, HoverTool):
            _precise_tooltips(tool)
    cdim = _colour_dim(plot, element)
    if cdim is not None:
        for r in fig.right + fig.left + fig.below + fig.above + fig.center:
            if isinstance(r, ColorBar):
                r.title = cdim


def _colour_dim(plot, element) -> str | None:
    """Label of the dimension that colours ``element`` (its ``color`` option or first vdim)."""
    try:
        color = plot.lookup_options(element, "style").options.get("color")
    except Exception:  # noqa: BLE001 - not every plot has style options
        color = None
    dim = element.get_dimension(color) if isinstance(color, str) else None
    if dim is None and element.vdims:
        dim = element.vdims[0]
    return dim.pprint_label if dim is not None else None


#: ``.opts(**READABLE)`` on every figure of the dashboard (on an overlay, not its layers: the
#: overlay sets the active tools after its layers' hooks ran). ``active_tools=["pan"]``: on
#: every update HoloViews activates pan only and leaves the scroll tool as the user set it
#: (its default would re-activate wheel zoom); figures without a pan tool use
#: :data:`READABLE_NO_PAN`.
READABLE = dict(active_tools=["pan"], hooks=[readable_hook])
READABLE_NO_PAN = dict(active_tools=[], hooks=[readable_hook])


#: ``CustomJSTransform`` code: a categorical x (``xs``) moved by the ``off`` column of ``src``
#: (fractions of a category's width), so points of one category sit side by side
DODGE_JS = "return xs.map((x, i) => r.synthetic(x) + (src.data.off ? src.data.off[i] : 0));"


def dodge_offsets(keys, width: float = 0.6) -> list[float]:
    """Offsets (fractions of a category) spreading the rows of each key side by side and
    off the category's centre (where the reference dashes are drawn): the ``k`` rows of a
    key take the first ``k`` of ``m`` evenly spaced slots over ``[-width/2, width/2]``
    (``m = k`` for even ``k``, ``k + 1`` for odd ``k``, so no slot is at 0)."""
    keys = list(keys)
    counts: dict = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    seen: dict = {}
    out = []
    for k in keys:
        i = seen.get(k, 0)
        seen[k] = i + 1
        n = counts[k]
        m = n if n % 2 == 0 else n + 1
        out.append(-width / 2 + width * i / (m - 1))
    return out


def dodge_hook(plot, element) -> None:
    """HoloViews bokeh hook for a Scatter on a categorical x axis with an ``off`` column
    (:func:`dodge_offsets`): each point is drawn at its category plus its offset, so
    reference values of one task do not hide each other."""
    from bokeh.models import CustomJSTransform

    renderer = plot.handles.get("glyph_renderer")
    if renderer is None or "off" not in renderer.data_source.data:
        return
    glyph = renderer.glyph
    x = glyph.x
    if isinstance(x, str):
        field, current = x, None
    elif isinstance(x, dict):
        field, current = x.get("field"), x.get("transform")
    else:
        field, current = getattr(x, "field", None), getattr(x, "transform", None)
    if not field or isinstance(current, CustomJSTransform):
        return  # not a column, or already dodged
    transform = CustomJSTransform(args=dict(r=plot.state.x_range, src=renderer.data_source),
                                  v_func=DODGE_JS)
    glyph.x = {"field": field, "transform": transform}


def y_range_hook(plot, element) -> None:
    """HoloViews bokeh hook: the figure's y range = the range of the y dimension (first value
    dimension) of ``element`` or of its first layer, when both ends are set — on every
    frame of a DynamicMap (whose overlay ``ylim`` applies to the first frame only)."""
    layers = list(element.values()) if hasattr(element, "values") and not hasattr(
        element, "vdims") else [element]
    for layer in layers:
        if getattr(layer, "vdims", None):
            lo, hi = layer.vdims[0].range
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                plot.state.y_range.update(start=float(lo), end=float(hi))
            return


def cell_labels(frame, kdims: list[str], col: str, dark, fmt: str = "{:.2f}"):
    """Value labels (``fmt``) of heatmap cells: white on the cells where the boolean mask
    ``dark`` holds, black elsewhere, so every number stays readable on its colour."""
    import holoviews as hv

    text = frame.assign(txt=frame[col].map(fmt.format))
    dark = list(dark)
    on_dark = text[dark] if len(text) else text
    on_light = text[[not d for d in dark]] if len(text) else text
    return (hv.Labels(on_light, kdims, "txt").opts(text_font_size="9pt", text_color="black")
            * hv.Labels(on_dark, kdims, "txt").opts(text_font_size="9pt", text_color="white"))

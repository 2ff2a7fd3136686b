"""Plot options shared by the dashboard's figures, so that each is readable on a real model.

- The mouse wheel scrolls the page: no scroll tool is active when a figure is drawn (the
  toolbar still offers wheel zoom, one click away) — :func:`readable_hook`.
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


#: ``.opts(**READABLE)`` on every figure of the dashboard
READABLE = dict(hooks=[readable_hook])

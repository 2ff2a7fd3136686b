"""Widgets built from a :class:`~wsviz.session.views.ParamView`, and the live metric view
shared by the merge and prune tuners."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import holoviews as hv
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.errors import RecipeError
from wsviz.eval.metrics import FRACTION, KNOWN, MetricSpec
from wsviz.session.param_grid import check_value, range_text, slider_grid, tidy
from wsviz.session.views import ParamView
from wsviz.ui.plot_style import dodge_hook, dodge_offsets, readable_hook, y_range_hook
from wsviz.ui.text import Md, SafeMarkdown, md, md_code


def make_widget(p: ParamView, value=None, name: str | None = None, width: int = 220):
    """A Panel widget for ``p``; sliders are watched on ``value_throttled`` (see
    :func:`watch_widget`) so a drag triggers one re-merge, on release."""
    value = p.default if value is None else value
    label = name or p.name
    if p.kind == "bool":
        return pn.widgets.Checkbox(name=label, value=bool(value), width=width)
    if p.kind == "choice":
        return pn.widgets.Select(name=label, options=list(p.choices), value=value, width=width)
    if p.kind == "int":
        lo = int(p.lo if p.lo is not None else 0)
        hi = int(p.hi if p.hi is not None else max(10, int(value or 0) * 2))
        return pn.widgets.IntSlider(name=label, start=lo, end=hi, value=int(value or lo),
                                    step=int(p.step or 1), width=width)
    if p.kind == "float":
        lo = float(p.lo if p.lo is not None else 0.0)
        hi = float(p.hi if p.hi is not None else 1.0)
        v = lo if value is None or (isinstance(value, float) and math.isnan(value)) else value
        step = float(p.step or (hi - lo) / 100 or 0.01)
        return pn.widgets.FloatSlider(name=label, start=lo, end=hi, value=float(v), step=step,
                                      width=width)
    return pn.widgets.TextInput(name=label, value="" if value is None else str(value),
                                width=width)


class ParamEntry(Viewer):
    """A numeric parameter as a slider on round steps, a typed-value box beside it (kept in
    sync) and a tooltip with the parameter's doc and valid range.

    ``value`` is the committed value: set on slider release or when a typed value passes
    :func:`~wsviz.session.param_grid.check_value` (a typed value outside the slider's range
    widens the slider; an invalid one sets ``error`` — a one-line message, also shown under
    the entry — and the box returns to ``value``). With ``allow_none`` (a per-model override
    of a global value) an empty box means None: "use the global value", shown by the slider
    at ``fallback``.
    """

    value = param.Parameter(default=None, doc="Committed value (None: not set).")
    error = param.String(default="", doc="Why the last typed value was refused ('' if not).")
    fallback = param.Number(default=None, allow_None=True,
                            doc="What the slider shows while value is None.")

    def __init__(self, p: ParamView, value=None, name: str | None = None, width: int = 260,
                 allow_none: bool = False, **params):
        self.spec = p
        self.integer = p.kind == "int"
        self.allow_none = allow_none
        v = None if value is None and allow_none else (p.default if value is None else value)
        if v is not None and isinstance(v, float) and math.isnan(v):
            v = None
        super().__init__(value=v, **params)
        lo = p.lo if p.lo is not None else 0.0
        hi = p.hi if p.hi is not None else 1.0
        shown = v if v is not None else (self.fallback if self.fallback is not None else lo)
        grid = slider_grid(lo, hi, shown, integer=self.integer)
        self.step = float(p.step or grid.step)
        label = name or p.name
        box_w = 80
        slider_cls = pn.widgets.IntSlider if self.integer else pn.widgets.FloatSlider
        conv = int if self.integer else float
        self.slider = slider_cls(name=label, start=conv(grid.start), end=conv(grid.end),
                                 step=conv(self.step), value=conv(grid.value),
                                 width=max(100, width - box_w - 30))
        input_cls = pn.widgets.IntInput if self.integer else pn.widgets.FloatInput
        self.input = input_cls(value=None if v is None else conv(v), step=conv(self.step),
                               width=box_w, align="end",
                               placeholder="global" if allow_none else "",
                               css_classes=["wsviz-param-input"])
        doc = p.doc or p.name
        tip = f"{doc}. Valid: {range_text(p.valid, p.open_low, p.open_high)}."
        if allow_none:
            tip += " Leave the box empty to use the global value."
        self.tooltip = pn.widgets.TooltipIcon(value=tip, align="end")
        self._msg = SafeMarkdown("", visible=False, css_classes=["wsviz-param-error"],
                                 styles={"color": "#b00020"}, margin=(0, 5))
        self._sync = False
        self.slider.param.watch(self._on_drag, "value")
        self.slider.param.watch(self._on_release, "value_throttled")
        # every typed value counts, also one equal to the current value (after a refusal the
        # browser may still show the refused one): it clears the refusal message
        self.input.param.watch(self._on_typed, "value", onlychanged=False)
        self.param.watch(self._on_value, "value")
        self.param.watch(self.clear_error, "value")  # a new value, however set: no stale error
        self.param.watch(self._on_fallback, "fallback")
        self._layout = pn.Column(pn.Row(self.slider, self.input, self.tooltip, margin=0),
                                 self._msg, margin=0)

    def __panel__(self):
        return self._layout

    # -- browser -> value ------------------------------------------------------------------
    def _tidy(self, v):
        return int(v) if self.integer else tidy(v, self.step)

    def _on_drag(self, event) -> None:
        if not self._sync:  # mirror the drag in the box; the value commits on release
            with self._syncing():
                self.input.value = self._tidy(event.new)

    def _on_release(self, event) -> None:
        if not self._sync and event.new is not None:
            self._commit(self._tidy(event.new))

    def _on_typed(self, event) -> None:
        if self._sync:
            return
        if event.new is None:
            if self.allow_none:
                self._commit(None)
            else:
                self._refuse(f"{self.spec.name}: type a number "
                             f"({range_text(self.spec.valid, self.spec.open_low, self.spec.open_high)})")
            return
        try:
            v = check_value(self.spec.name, event.new, self.spec.valid, self.spec.open_low,
                            self.spec.open_high, self.integer)
        except RecipeError as exc:
            self._refuse(str(exc))
            return
        self._commit(v)

    def clear_error(self, *_) -> None:
        """Hide the message of a refused value (a later valid edit, here or in another
        entry of the same recipe, makes it stale)."""
        self.error = ""
        self._msg.object = ""
        self._msg.visible = False

    def _commit(self, v) -> None:
        self.clear_error()
        if v == self.value and type(v) is type(self.value):
            self._on_value()  # put both widgets back on it
        else:
            self.value = v

    def _refuse(self, msg: str) -> None:
        self._msg.object = msg
        self._msg.visible = True
        self.error = msg
        self._on_value()

    # -- value -> browser ------------------------------------------------------------------
    @contextmanager
    def _syncing(self):
        self._sync = True
        try:
            yield
        finally:
            self._sync = False

    def _show_on_slider(self, v) -> None:
        if v is None:
            return
        conv = int if self.integer else float
        s = self.slider
        if v < s.start or v > s.end:
            g = slider_grid(min(s.start, v), max(s.end, v), v, integer=self.integer)
            s.start, s.end = conv(min(s.start, g.start)), conv(max(s.end, g.end))
        s.value = conv(v)

    def _on_value(self, *_) -> None:
        with self._syncing():
            v = self.value
            self.input.value = v
            self._show_on_slider(v if v is not None else self.fallback)

    def _on_fallback(self, *_) -> None:
        if self.value is None:
            with self._syncing():
                self._show_on_slider(self.fallback)

    def type_value(self, text_or_number) -> None:
        """Enter a value in the box as a user would (tests, notebooks)."""
        self.input.value = text_or_number


def make_entry(p: ParamView, value=None, name: str | None = None, width: int = 260,
               allow_none: bool = False):
    """:class:`ParamEntry` for numeric parameters, :func:`make_widget` for the others."""
    if p.kind in ("float", "int"):
        return ParamEntry(p, value=value, name=name, width=width, allow_none=allow_none)
    return make_widget(p, value=value, name=name, width=width)


def is_slider(w) -> bool:
    return isinstance(w, (pn.widgets.FloatSlider, pn.widgets.IntSlider))


def watch_widget(w, callback: Callable) -> None:
    """Call ``callback()`` when the user commits a new value (slider release, a typed value
    accepted, other edits)."""
    w.param.watch(lambda e: callback(), "value_throttled" if is_slider(w) else "value")


def widget_value(w):
    """The committed value (FloatSlider values arrive from the browser as int when whole;
    slider positions are tidied onto their round grid)."""
    if isinstance(w, ParamEntry):
        return w.value
    if isinstance(w, pn.widgets.FloatSlider):
        return tidy(float(w.value), w.step)
    return w.value


def set_widget(w, value) -> None:
    """Set a widget programmatically as if the user had committed ``value``."""
    if isinstance(w, ParamEntry):
        w.value = value
    elif is_slider(w):
        w.value = value
        with param.edit_constant(w):
            w.value_throttled = value
    else:
        w.value = value


def submit_with_spinner(runner, spinner, key: str, work: Callable, done: Callable,
                        error: Callable | None = None) -> None:
    """Run ``work()`` as job ``key`` on ``runner`` with ``spinner`` spinning until it ends;
    ``done(result)`` then runs on the event loop (errors are reported by the runner, then
    ``error(exc)`` runs when given)."""
    spinner.value = True

    def finished(result):
        spinner.value = False
        done(result)

    def failed(exc):
        spinner.value = False
        if error is not None:
            error(exc)

    runner.submit(key, work, finished, failed)


def load_references(session, done: Callable[[dict], None], key: str = "references") -> None:
    """Fetch the workspace's reference rows (``{"pretrained": {task: v}, ...}``) off the event
    loop — the first call evaluates the base and every fine-tune — then ``done(refs)`` on it.
    A failure is shown as a notification; the tuner works without references."""
    session.runner.submit(key, session.workspace.references, done)


def summary_stats(metrics: dict[str, float], individual: dict[str, float],
                  spec: MetricSpec | None = None) -> dict[str, float]:
    """``avg`` (mean over tasks), ``worst`` task (the minimum when higher is better, the
    maximum when lower is) and ``normalized``: the mean over tasks with an individual
    reference of :meth:`MetricSpec.normalized` (metric / individual, or individual / metric
    for lower-is-better metrics: 1 = as good as the task's own fine-tune; NaN without one)."""
    spec = spec or KNOWN["accuracy"]
    vals = [float(v) for v in metrics.values()]
    out = {"avg": math.fsum(vals) / len(vals) if vals else math.nan,
           "worst": spec.worst(vals) if vals else math.nan}
    ratios = [spec.normalized(float(metrics[t]), float(individual[t])) for t in metrics
              if t in individual]
    ratios = [r for r in ratios if not math.isnan(r)]
    out["normalized"] = math.fsum(ratios) / len(ratios) if ratios else math.nan
    return out


def summary_text(stats: dict[str, float], spec: MetricSpec, normalized: bool = True) -> Md:
    """``"accuracy ↑: avg **87.3 %** · worst **80.1 %** · normalised avg 95.0 %"`` (the
    normalised part only when asked for and defined)."""
    text = md("{} {}: avg **{}** · worst **{}**", spec.name, spec.arrow,
              spec.format(stats["avg"]), spec.format(stats["worst"]))
    if normalized and not math.isnan(stats.get("normalized", math.nan)):
        text += md(" · normalised avg {}", f"{stats['normalized']:.1%}")
    return text


def axis_range(spec: MetricSpec, values, pad: float = 0.05) -> tuple | None:
    """Axis range for ``values`` of ``spec``: for fractions in [0, 1] the range reaches the
    ideal end (1 when higher is better, 0 when lower is) so good results sit at the edge;
    for unbounded metrics such as perplexity the values' own span, padded
    (:func:`padded_range`); with no values the natural range, or None (auto)."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    bounded = spec.unit == FRACTION and spec.hi is not None
    if not vals:
        return (spec.lo or 0.0, spec.hi) if bounded else None
    if not bounded:  # padded, but never below the natural floor (perplexity >= 1)
        lo, hi = padded_range(vals)
        return (lo if spec.lo is None else max(lo, spec.lo), hi)
    if spec.higher_is_better:
        return (max(spec.lo or 0.0, min(vals) - pad), spec.hi)
    return (spec.lo or 0.0, min(spec.hi, max(vals) + pad))


def padded_range(values, pad: float = 0.12) -> tuple[float, float]:
    """``(min - pad·span, max + pad·span)`` of ``values`` (a span of 5 % of the value, or 1,
    when they are all equal): close results stay apart on screen."""
    lo, hi = min(values), max(values)
    span = (hi - lo) or (0.05 * abs(hi)) or 1.0
    return (lo - pad * span, hi + pad * span)


#: Colours of the reference rows ("pretrained", "individual", then "ft:<label>" rows).
REF_COLORS = {"individual": "black", "pretrained": "#999999"}
FT_PALETTE = ("#e45756", "#54a24b", "#b279a2", "#f58518", "#72b7b2", "#ff9da6", "#9d755d")


def metrics_plot(metrics: dict[str, float], refs: dict[str, dict[str, float]], title: str,
                 label: str = "merged", spec: MetricSpec | None = None):
    """Bars of per-task metrics with the references drawn on top: individual fine-tune
    (black dash), pre-trained (grey dash) and, when tasks have no fine-tune of their own, every
    fine-tune (``ft:<label>`` rows, coloured dots). The y axis names the metric and its
    direction. Always the same four layers (possibly empty), so a DynamicMap can update it in
    place."""
    spec = spec or KNOWN["accuracy"]
    metrics = metrics or {}
    df = pd.DataFrame({"task": list(metrics), "metric": [float(v) for v in metrics.values()]})
    bars = hv.Bars(df, "task", "metric", label=label).opts(
        color="#4c78a8", tools=["hover"], xrotation=30)
    layers = [bars]
    for kind, color in REF_COLORS.items():
        ref = refs.get(kind) or {}
        pts = pd.DataFrame({"task": [t for t in metrics if t in ref],
                            "metric": [float(ref[t]) for t in metrics if t in ref]})
        # no legend entry for a reference row with no value (it would show a label and
        # no marker): an empty label leaves the legend
        layers.append(hv.Scatter(pts, "task", "metric", label=kind if len(pts) else "").opts(
            marker="dash", size=36, line_width=3, color=color, tools=["hover"]))
    fts = [k for k in refs if k.startswith("ft:")]
    rows = [{"task": t, "metric": float(refs[k][t]), "reference": k}
            for k in fts for t in metrics if t in refs[k]]
    ft_df = pd.DataFrame(rows, columns=["task", "metric", "reference"])
    ft_df["off"] = dodge_offsets(ft_df["task"])  # side by side within their task
    cmap = {k: FT_PALETTE[i % len(FT_PALETTE)] for i, k in enumerate(fts)} or {"": "black"}
    layers.append(hv.Scatter(ft_df, "task", ["metric", "reference", "off"],
                             label="fine-tunes" if len(ft_df) else "").opts(
        color="reference", cmap=cmap, marker="circle", size=10, tools=["hover"],
        hover_tooltips=[("reference", "@reference"), ("task", "@task"),
                        ("metric", "@metric")], hooks=[dodge_hook]))
    values = [*df["metric"], *(v for r in refs.values() for t, v in r.items() if t in metrics)]
    ylim = (None, None)
    if spec.unit == FRACTION and spec.hi is not None and values:  # bars start at 0
        top = spec.hi if spec.higher_is_better else min(spec.hi, max(values) + 0.05)
        ylim = (0.0, 1.05 * top)
    elif values:  # unbounded (perplexity ~ 130 for every merge): zoom on the values,
        lo, hi = padded_range(values, 0.25)  # never below the metric's natural floor
        ylim = (lo if spec.lo is None else max(lo, spec.lo), hi)
    plot = hv.Overlay(layers).opts(responsive=True, height=320, title=title, ylim=ylim,
                                   legend_position="right", ylabel=spec.label,
                                   active_tools=["pan"], hooks=[readable_hook, y_range_hook])
    # the y range travels as the metric's dimension range, which y_range_hook applies on
    # every update of a DynamicMap (LiveBars): an overlay's ylim is read on its first frame
    return plot.redim.range(metric=ylim) if ylim != (None, None) else plot


class LiveBars:
    """A metrics bar chart updated in place through a Pipe (no figure rebuild per update).
    ``refs_getter()`` gives the reference rows and ``spec_getter()`` the metric's
    :class:`MetricSpec` at drawing time (both may change after the first evaluation)."""

    def __init__(self, refs_getter, label: str = "merged", spec_getter=None):
        self._refs = refs_getter
        self._spec = spec_getter or (lambda: KNOWN["accuracy"])
        self._last: tuple = ({}, "waiting for the first evaluation…")
        self.pipe = hv.streams.Pipe(data=self._last)
        dmap = hv.DynamicMap(
            lambda data: metrics_plot(data[0], self._refs(), data[1], label, self._spec()),
            streams=[self.pipe])
        self.pane = pn.pane.HoloViews(dmap, sizing_mode="stretch_width")

    def update(self, metrics: dict[str, float], title: str) -> None:
        self._last = (dict(metrics), title)
        self.pipe.send(self._last)

    def redraw(self) -> None:
        """Draw the last metrics again (e.g. when the references arrive)."""
        self.pipe.send(self._last)


def write_folder_async(owner, key: str, target, work, wrote: str, notice: str) -> None:
    """Run ``work(progress)`` (which writes the folder ``target`` and returns its path) off
    the event loop for a panel ``owner`` holding ``session``, ``_progress``, ``_write_btn``,
    ``_write_msg`` and ``written``: the button is disabled and the bar shown meanwhile; on
    success ``written`` is set, ``wrote`` (with ``{path}``) shown and ``notice`` notified; on
    failure the runner has shown the error and "Nothing written" is said."""
    runner = owner.session.runner
    owner._progress.value = 0
    owner._progress.visible = True
    owner._write_btn.disabled = True
    owner._write_msg.object = md("writing {}…", md_code(target))

    def progress(frac, msg):
        runner.call_soon(lambda: setattr(owner._progress, "value", int(100 * frac)))

    def done(path):
        owner._progress.visible = False
        owner._write_btn.disabled = False
        owner.written = str(path)
        owner._write_msg.object = md(wrote, path=md_code(path))
        owner.session.notify_info(notice.format(path=path))

    def error(exc):
        owner._progress.visible = False
        owner._write_btn.disabled = False
        owner._write_msg.object = Md("**Nothing written** (see the notification).")

    runner.submit(key, lambda: work(progress), done, error)

"""Widgets built from a :class:`~wsviz.ui.workspace.ParamView`, and the live metric view
shared by the merge and prune tuners."""

from __future__ import annotations

import math
from collections.abc import Callable

import holoviews as hv
import pandas as pd
import panel as pn
import param

from wsviz.ui.workspace import ParamView


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


def is_slider(w) -> bool:
    return isinstance(w, (pn.widgets.FloatSlider, pn.widgets.IntSlider))


def watch_widget(w, callback: Callable) -> None:
    """Call ``callback()`` when the user commits a new value (slider release, other edits)."""
    w.param.watch(lambda e: callback(), "value_throttled" if is_slider(w) else "value")


def widget_value(w):
    """The committed value (FloatSlider values arrive from the browser as int when whole)."""
    if isinstance(w, pn.widgets.FloatSlider):
        return float(w.value)
    return w.value


def set_widget(w, value) -> None:
    """Set a widget programmatically as if the user had committed ``value``."""
    if is_slider(w):
        w.value = value
        with param.edit_constant(w):
            w.value_throttled = value
    else:
        w.value = value


def submit_with_spinner(runner, spinner, key: str, work: Callable, done: Callable) -> None:
    """Run ``work()`` as job ``key`` on ``runner`` with ``spinner`` spinning until it ends;
    ``done(result)`` then runs on the event loop (errors are reported by the runner)."""
    spinner.value = True

    def finished(result):
        spinner.value = False
        done(result)

    runner.submit(key, work, finished, lambda exc: setattr(spinner, "value", False))


def summary_stats(metrics: dict[str, float], individual: dict[str, float]) -> dict[str, float]:
    """avg and worst task metric, and the normalised average (metric / individual, averaged)."""
    vals = [float(v) for v in metrics.values()]
    out = {"avg": sum(vals) / len(vals) if vals else float("nan"),
           "worst": min(vals) if vals else float("nan")}
    ratios = [float(metrics[t]) / float(individual[t]) for t in metrics
              if t in individual and individual[t]]
    out["normalized"] = sum(ratios) / len(ratios) if ratios else float("nan")
    return out


def metrics_plot(metrics: dict[str, float], refs: dict[str, dict[str, float]], title: str,
                 label: str = "merged"):
    """Bars of per-task metrics, with the individual fine-tuned (black dash) and pre-trained
    (grey dash) references drawn on top. Always the same three layers (possibly empty), so a
    DynamicMap can update it in place."""
    metrics = metrics or {}
    df = pd.DataFrame({"task": list(metrics), "metric": [float(v) for v in metrics.values()]})
    bars = hv.Bars(df, "task", "metric", label=label).opts(
        color="#4c78a8", tools=["hover"], xrotation=30)
    layers = [bars]
    styles = {"individual": "black", "pretrained": "#999999"}
    for kind, color in styles.items():
        ref = refs.get(kind) or {}
        pts = pd.DataFrame({"task": [t for t in metrics if t in ref],
                            "metric": [float(ref[t]) for t in metrics if t in ref]})
        layers.append(hv.Scatter(pts, "task", "metric", label=kind).opts(
            marker="dash", size=36, line_width=3, color=color, tools=["hover"]))
    unit = all(0 <= v <= 1 for v in df["metric"])  # accuracies; else e.g. perplexity
    return hv.Overlay(layers).opts(responsive=True, height=320, title=title,
                                   ylim=(0, 1.05) if unit else (None, None),
                                   legend_position="right",
                                   ylabel="accuracy" if unit else "metric")


class LiveBars:
    """A metrics bar chart updated in place through a Pipe (no figure rebuild per update)."""

    def __init__(self, refs_getter, label: str = "merged"):
        self._refs = refs_getter
        self.pipe = hv.streams.Pipe(data=({}, "waiting for the first evaluation…"))
        dmap = hv.DynamicMap(lambda data: metrics_plot(data[0], self._refs(), data[1], label),
                             streams=[self.pipe])
        self.pane = pn.pane.HoloViews(dmap, sizing_mode="stretch_width")

    def update(self, metrics: dict[str, float], title: str) -> None:
        self.pipe.send((dict(metrics), title))

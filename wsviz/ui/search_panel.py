"""Search panel: run a recipe search around the merge tuner's current recipe and watch the
per-task Pareto front grow live; click a point to load its recipe into the tuner and export
it (mergekit YAML when mergekit has the method).

The search itself runs in :meth:`wsviz.session.Workspace.search` (wsviz.search, off the
event loop); this module only edits the space, draws rows and forwards clicks.
"""

from __future__ import annotations

import io
import math
import threading

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import yaml
from panel.viewable import Viewer

from wsviz.eval.metrics import MetricSpec
from wsviz.eval.pareto import pareto_mask
from wsviz.ui.plot_style import READABLE
from wsviz.ui.session import Session
from wsviz.ui.text import Md, SafeMarkdown, md

SAMPLERS = ("tpe", "nsga2", "gp", "random", "map", "cmaes")
KIND_COLORS = {"Pareto (this pair)": "#d62728", "dominated": "#9ecae1",
               "MAP predicted": "#ff7f0e", "selected": "#2ca02c"}


def default_space(method_view, n_blocks_hint: bool = True) -> dict:
    """A starting space for a method: every float parameter the tuner shows globally, over its
    slider range (``density`` per depth band, when the method has it)."""
    params = {}
    for p in method_view.params:
        if p.kind != "float" or p.scope == "model" or p.name == "weight":
            continue
        lo = float(p.lo if p.lo is not None else 0.0)
        hi = float(p.hi if p.hi is not None else 1.0)
        if p.name == "density":
            lo = max(lo, 0.05)
        entry = {"low": round(lo, 4), "high": round(hi, 4)}
        if p.name == "density" and n_blocks_hint:
            entry["groups"] = ["depth:2"]
        params[p.name] = entry
    return {"params": params, "objectives": {"over": "tasks"}}


class SearchPanel(Viewer):
    """Edit a space, run a search (TPE, NSGA-II, GP, random, MAP, CMA-ES), see the live
    Pareto front of a task pair, click a point to load and export its recipe."""

    running = param.Boolean(default=False, doc="A search is in progress.")
    n_done = param.Integer(default=0, doc="Trials finished in the current / last search.")
    selected = param.Integer(default=None, allow_None=True,
                             doc="Trial number of the clicked point.")

    def __init__(self, session: Session, tuner, **params):
        super().__init__(**params)
        self.session = session
        self.tuner = tuner
        self.rows: list[dict] = []
        self.info: dict = {}
        self._stop = threading.Event()
        ws = session.workspace
        self._space = pn.widgets.CodeEditor(value="", language="yaml", height=220,
                                            sizing_mode="stretch_width")
        self._sampler = pn.widgets.Select(name="Sampler", options=list(SAMPLERS), value="tpe",
                                          width=120)
        self._trials = pn.widgets.IntInput(name="Trials", value=30, start=2, end=5000,
                                           width=100)
        self._run = pn.widgets.Button(name="Run search", button_type="primary", width=120)
        self._run.on_click(lambda e: self.start())
        self._stop_btn = pn.widgets.Button(name="Stop", width=80, disabled=True)
        self._stop_btn.on_click(lambda e: self.stop())
        self._reset_btn = pn.widgets.Button(name="Space from tuner", width=140)
        self._reset_btn.on_click(lambda e: self.reset_space())
        self._progress = pn.indicators.Progress(value=0, max=100, width=260, visible=False)
        self._status = SafeMarkdown("", css_classes=["wsviz-search-status"],
                                    sizing_mode="stretch_width")
        self._x = pn.widgets.Select(name="x task", options=[], width=160)
        self._y = pn.widgets.Select(name="y task", options=[], width=160)
        self._x.param.watch(lambda e: self._draw(), "value")
        self._y.param.watch(lambda e: self._draw(), "value")
        self._pipe = hv.streams.Pipe(data=self.pair_frame())
        points = hv.DynamicMap(self._points_el, streams=[self._pipe])
        front = hv.DynamicMap(self._front_el, streams=[self._pipe])
        self._tap = hv.streams.Selection1D(source=points)
        self._tap.add_subscriber(self._on_tap)
        self._plot = pn.pane.HoloViews((points * front).opts(**READABLE),
                                       sizing_mode="stretch_width")
        self._detail = SafeMarkdown(Md("*click a point to load its recipe*"),
                                    css_classes=["wsviz-search-selected"],
                                    sizing_mode="stretch_width")
        self._yaml = pn.widgets.CodeEditor(value="", language="yaml", readonly=True,
                                           height=220, sizing_mode="stretch_width")
        self._download = pn.widgets.FileDownload(callback=self._yaml_file,
                                                 filename="searched.yml",
                                                 label="Download recipe", width=200,
                                                 disabled=True)
        self.yaml_text: str | None = None
        self._table = pn.widgets.Tabulator(pd.DataFrame(), height=220, disabled=True,
                                           sizing_mode="stretch_width", show_index=False)
        if not ws.can_search:
            self._run.disabled = True
            self._status.object = Md("*Search needs an evaluator (`--eval` or `--demo`) and "
                                     "optuna (a wsviz dependency).*")
        self.reset_space()

    # -- space -------------------------------------------------------------------------------
    def reset_space(self) -> None:
        """Fill the space editor from the tuner's current method."""
        view = self.tuner.methods[self.tuner.method]
        self._space.value = yaml.safe_dump(default_space(view), sort_keys=False)

    def space(self) -> dict:
        """The edited space as a mapping (:class:`WsvizError`-like ValueError text shown)."""
        try:
            d = yaml.safe_load(self._space.value or "")
        except yaml.YAMLError as exc:
            raise ValueError(f"the search space is not valid YAML: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError("the search space is a YAML mapping with params: ...")
        return d

    # -- running -----------------------------------------------------------------------------
    def start(self, n_trials: int | None = None, sampler: str | None = None) -> None:
        """Run a search around the tuner's current recipe (off the event loop)."""
        if self.running:
            return
        recipe = self.tuner.recipe
        if recipe is None:
            self.session.notify_error("no valid recipe in the merge tuner to search around")
            return
        try:
            space = self.space()
        except ValueError as exc:
            self.session.notify_error(str(exc))
            return
        n = int(n_trials or self._trials.value)
        sampler = sampler or self._sampler.value
        self.rows, self.info, self.selected = [], {}, None
        self._stop.clear()
        self.running, self.n_done = True, 0
        self._run.disabled, self._stop_btn.disabled = True, False
        self._progress.value, self._progress.visible = 0, True
        self._status.object = f"starting a {sampler} search of {n} trials…"
        runner = self.session.runner
        ws = self.session.workspace

        def on_start(info):
            runner.call_soon(lambda: self._started(info))

        def on_trial(row):
            runner.call_soon(lambda: self._add(row, n))

        def work():
            return ws.search(recipe, space, n, sampler=sampler, on_start=on_start,
                             on_trial=on_trial, should_stop=self._stop.is_set)

        runner.submit("search", work, self._finished, self._failed)

    def stop(self) -> None:
        """Ask the running search to stop after the trials in flight."""
        self._stop.set()
        self._status.object = "stopping after the trials in flight…"

    def _started(self, info: dict) -> None:
        self.info = info
        tasks = list(info.get("tasks") or [])
        with pn.io.hold():
            self._x.options = tasks
            self._y.options = tasks
            if tasks:
                self._x.value = tasks[0]
                self._y.value = tasks[-1] if len(tasks) > 1 else tasks[0]

    def _add(self, row: dict, total: int) -> None:
        self.rows.append(row)
        if row.get("state") == "COMPLETE":
            self.n_done += 1
        self._progress.value = int(100 * min(1.0, self.n_done / max(1, total)))
        self._status.object = self._summary(total)
        self._draw()

    def _finished(self, df) -> None:
        self.running = False
        self._run.disabled, self._stop_btn.disabled = False, True
        self._progress.visible = False
        self._status.object = self._summary(None) + Md(" — done")
        self._draw()

    def _failed(self, exc) -> None:
        self.running = False
        self._run.disabled, self._stop_btn.disabled = False, True
        self._progress.visible = False
        self._status.object = f"search failed: {exc}"

    @property
    def metric(self) -> MetricSpec:
        return self.info.get("metric") or self.session.workspace.metric_spec

    def _summary(self, total: int | None) -> Md:
        ok = [r for r in self.rows if r.get("state") == "COMPLETE"]
        failed = len(self.rows) - len(ok)
        m = self.metric
        best = m.best(r["mean"] for r in ok) if ok else math.nan
        text = md("**{}{} trials** · best mean {} **{}**", len(ok),
                  f"/{total}" if total else "", m.name, m.format(best))
        if failed:
            text += md(" · {} failed", failed)
        return text

    # -- plotting ----------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """All finished trials (rows from the workspace)."""
        return pd.DataFrame(self.rows)

    def pair_frame(self) -> pd.DataFrame:
        """Complete trials with ``x``/``y`` = the chosen task pair's metric values, ``kind``
        (Pareto for this pair in the metric's direction / dominated / selected)."""
        cols = ["number", "x", "y", "mean", "worst", "kind", "phase"]
        ok = [r for r in self.rows if r.get("state") == "COMPLETE"]
        xt, yt = self._x.value, self._y.value
        if not ok or xt is None or yt is None:
            return pd.DataFrame(columns=cols)
        df = pd.DataFrame({"number": [r["number"] for r in ok],
                           "x": [r.get(f"task:{xt}", math.nan) for r in ok],
                           "y": [r.get(f"task:{yt}", math.nan) for r in ok],
                           "mean": [r.get("mean", math.nan) for r in ok],
                           "worst": [r.get("worst", math.nan) for r in ok],
                           "phase": [r.get("phase", "search") for r in ok],
                           "feasible": [bool(r.get("feasible", True)) for r in ok]})
        d = self.metric.direction
        front = pareto_mask(df[["x", "y"]].to_numpy(float), [d, d], df["feasible"].to_numpy())
        df["kind"] = np.where(front, "Pareto (this pair)", "dominated")
        if self.selected is not None:
            df.loc[df["number"] == self.selected, "kind"] = "selected"
        return df[cols]

    def predicted_frame(self) -> pd.DataFrame:
        """MAP confirmation points: predicted (``px``, ``py``) and measured (``x``, ``y``)
        values of the chosen pair."""
        xt, yt = self._x.value, self._y.value
        m = self.metric.name
        rows = []
        for r in self.rows:
            if r.get("phase") != "confirm" or r.get("state") != "COMPLETE":
                continue
            px, py = r.get(f"predicted:{m}:{xt}"), r.get(f"predicted:{m}:{yt}")
            if px is None or py is None:
                continue
            rows.append({"number": r["number"], "px": px, "py": py,
                         "x": r.get(f"task:{xt}"), "y": r.get(f"task:{yt}")})
        return pd.DataFrame(rows, columns=["number", "px", "py", "x", "y"])

    def _draw(self) -> None:
        self._pipe.send(self.pair_frame())
        df = self.frame()
        if len(df):
            keep = ["number", "state", "phase", "mean", "worst"] + [
                c for c in df.columns if c.startswith(("task:", "param:"))]
            self._table.value = df[[c for c in keep if c in df]].rename(
                columns=lambda c: c.split(":", 1)[-1])

    def _points_el(self, data: pd.DataFrame):
        m = self.metric
        title = "Search: per-task trade-off (click a point to load it)"
        pts = hv.Points(data, ["x", "y"], ["number", "mean", "worst", "kind", "phase"]).opts(
            color="kind", cmap=KIND_COLORS, size=10, tools=["hover", "tap"], responsive=True,
            height=360, nonselection_alpha=0.6, title=title, framewise=True,
            xlabel=f"{self._x.value or 'task'}: {m.label}",
            ylabel=f"{self._y.value or 'task'}: {m.label}", legend_position="bottom",
            legend_cols=3, **READABLE)  # legend off the points
        return pts

    def _front_el(self, data: pd.DataFrame):
        front = data[data["kind"].isin(["Pareto (this pair)", "selected"])]
        front = front.sort_values("x")
        curve = hv.Curve(front, "x", "y").opts(color="#d62728", line_dash="dotted")
        pred = self.predicted_frame()
        if not len(pred):
            return curve
        segs = hv.Segments(pred, ["px", "py", "x", "y"]).opts(color="#ff7f0e", alpha=0.6)
        pp = hv.Points(pred.rename(columns={"px": "x", "py": "y", "x": "mx", "y": "my"}),
                       ["x", "y"], ["number"]).opts(color="#ff7f0e", marker="triangle",
                                                    size=9, fill_alpha=0.0)
        return curve * segs * pp

    # -- selection / export ------------------------------------------------------------------
    def _on_tap(self, index) -> None:
        if not index:
            return
        data = self._pipe.data
        i = index[0]
        if 0 <= i < len(data):
            self.load(int(data.iloc[i]["number"]))

    def load(self, number: int) -> None:
        """Select trial ``number``: load its recipe into the tuner (when the tuner can show
        it) and show its export."""
        row = next((r for r in self.rows if r["number"] == number), None)
        if row is None or row.get("recipe") is None:
            self.session.notify_error(f"trial {number} has no recipe to load")
            return
        self.selected = number
        ws = self.session.workspace
        text, reason = ws.recipe_yaml(row["recipe"])
        if text is None:
            text = ws.recipe_json(row["recipe"])
            self._download.filename = f"trial{number}.json"
            how = f"JSON (not expressible in mergekit: {reason})"
        else:
            self._download.filename = f"trial{number}.yml"
            how = "mergekit YAML"
        self.yaml_text = text
        self._yaml.language = "yaml" if how == "mergekit YAML" else "json"
        self._yaml.value = text
        self._download.disabled = False
        m = self.metric
        state = row.get("tuner_state")
        if state is not None:
            self.tuner.restore(state)
            note = "loaded into the merge tuner"
        else:
            note = "the merge tuner cannot show this recipe (export it instead)"
        self._detail.object = md("**trial {}** — mean {}, worst {} · {} · export as {}", number,
                                 m.format(row.get("mean")), m.format(row.get("worst")), note,
                                 how)
        self._draw()

    def _yaml_file(self):
        return io.StringIO(self.yaml_text or "")

    # -- layout ------------------------------------------------------------------------------
    def __panel__(self):
        return pn.Row(
            pn.Column(
                SafeMarkdown(Md("#### Search space (YAML)")), self._space,
                pn.Row(self._sampler, self._trials),
                pn.Row(self._run, self._stop_btn, self._reset_btn),
                self._progress, self._status, width=520),
            pn.Column(pn.Row(self._x, self._y), self._plot, self._detail,
                      pn.Row(self._download), self._yaml, self._table,
                      sizing_mode="stretch_width"),
            sizing_mode="stretch_width")

"""Merge tuner: pick a method, tune its parameters (global, per model, per layer group) and see
live per-task metrics, a history of every recipe tried, and parameter sweeps."""

from __future__ import annotations

import copy
import json
import time

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.errors import RecipeError
from wsviz.eval.pareto import pareto_mask
from wsviz.session.views import MethodView
from wsviz.ui.plot_style import READABLE
from wsviz.ui.session import Session
from wsviz.ui.text import Md, SafeMarkdown, md, md_code
from wsviz.ui.widgets import (
    LiveBars,
    ParamEntry,
    axis_range,
    load_references,
    make_entry,
    set_widget,
    submit_with_spinner,
    summary_stats,
    summary_text,
    watch_widget,
    widget_value,
)

DEFAULT_METHOD = "task_arithmetic"
NO_EVALUATOR = ("*No evaluator: live metrics are off (the recipe still exports). Start with "
                "`--eval module:function` or `--eval text.txt` (perplexity), or use `--demo`.*")


def parse_schedule(text: str) -> list | None:
    """Parse a per-layer schedule typed by the user.

    ``"0.2, 0.5, 1.0"`` -> gradient list ``[0.2, 0.5, 1.0]`` (interpolated over layers);
    ``"attn: 0.5, mlp: 0.3"`` -> filter list ``[{"filter": "attn", "value": 0.5}, ...]``
    (matched on tensor names, as mergekit does). Empty -> None. RecipeError on bad input.
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        if all(":" in p for p in parts):
            out = []
            for p in parts:
                key, val = p.split(":", 1)
                out.append({"filter": key.strip(), "value": float(val)})
            return out
        return [float(p) for p in parts]
    except ValueError as exc:
        raise RecipeError(
            f"schedule {text!r} is not understood: write a gradient like '0.2, 0.5, 1.0' or "
            f"filters like 'attn: 0.5, mlp: 0.3' ({exc})") from None


def scheduled(text: str, params: dict, name: str) -> list | None:
    """The setting for parameter ``name`` given its schedule ``text`` (see
    :func:`parse_schedule`): None when empty; a filter list gets the current
    ``params[name]`` (when present) appended as the fallback for unmatched tensors."""
    sched = parse_schedule(text)
    if sched and isinstance(sched[0], dict) and name in params:
        sched = sched + [{"value": params[name]}]
    return sched


class MergeTuner(Viewer):
    """Interactive merge tuning with live evaluation.

    ``state`` (a dict: method, params, model_params, schedules) fully describes the recipe;
    every committed widget change rebuilds the recipe, re-merges in memory and re-evaluates
    (off the event loop in server mode, coalesced to the latest change).
    """

    method = param.Selector(default=None, objects=[], doc="Merge method.")
    recipe = param.Parameter(default=None, doc="The current valid Recipe (None until valid).")
    metrics = param.Dict(default=None, allow_None=True, doc="Per-task metrics of `recipe`.")
    n_evals = param.Integer(default=0, doc="Evaluations completed in this session.")

    def __init__(self, session: Session, **params):
        self.session = session
        ws = session.workspace
        self.methods: dict[str, MethodView] = ws.merge_methods()
        names = list(self.methods)
        super().__init__(**params)
        self.param.method.objects = names
        self.history: list[dict] = []
        self.refs: dict[str, dict[str, float]] = {}
        self._widgets: dict[str, object] = {}
        self._model_widgets: dict[str, dict[str, object]] = {}
        self._sched_widgets: dict[str, object] = {}
        self._building = False
        self._t_request = 0.0
        self.last_latency_ms: float | None = None

        self._method_w = pn.widgets.Select.from_param(self.param.method, name="Method",
                                                      width=240)
        self._doc = SafeMarkdown("", sizing_mode="stretch_width")
        self._global_box = pn.Column()
        self._model_box = pn.Column()
        self._sched_box = pn.Column()
        self._summary = SafeMarkdown(Md("*no evaluation yet*"),
                                     css_classes=["wsviz-merge-summary"],
                                     sizing_mode="stretch_width")
        self._live = LiveBars(lambda: self.refs, spec_getter=lambda: self.spec)
        self._bars = self._live.pane
        self._history_pipe = hv.streams.Pipe(data=self.history_frame())
        points = hv.DynamicMap(self._history_el, streams=[self._history_pipe])
        front = hv.DynamicMap(self._front_el, streams=[self._history_pipe])
        self._selection = hv.streams.Selection1D(source=points)
        self._selection.add_subscriber(self._on_history_tap)
        # the wheel setting is the overlay's (its hooks run after the elements')
        self._history_pane = pn.pane.HoloViews((points * front).opts(**READABLE),
                                               sizing_mode="stretch_width")
        self._busy = pn.indicators.LoadingSpinner(value=False, size=24)
        self._refresh = pn.widgets.Button(name="Re-evaluate", button_type="default", width=120)
        self._refresh.on_click(lambda e: self.request())
        # sweep
        self._sweep_param = pn.widgets.Select(name="Sweep parameter", options=[], width=180)
        self._sweep_from = pn.widgets.FloatInput(name="from", value=0.0, width=90)
        self._sweep_to = pn.widgets.FloatInput(name="to", value=1.0, width=90)
        self._sweep_steps = pn.widgets.IntInput(name="steps", value=6, start=2, end=50,
                                                width=80)
        self._sweep_btn = pn.widgets.Button(name="Run sweep", button_type="primary", width=110)
        self._sweep_btn.on_click(lambda e: self.run_sweep())
        self._sweep_progress = pn.indicators.Progress(value=0, max=100, width=240,
                                                      visible=False)
        self._sweep_plot = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self.sweep_result: pd.DataFrame | None = None

        from wsviz.ui.why_panel import WhyPanel

        self.why = WhyPanel(session, self)  # updated by request(), after the metrics
        self.param.watch(self._on_method, "method")
        if ws.can_evaluate:
            load_references(session, self._set_refs, "merge-references")
        self.method = DEFAULT_METHOD if DEFAULT_METHOD in names else names[0]

    @property
    def spec(self):
        """The :class:`~wsviz.eval.metrics.MetricSpec` of the metric shown."""
        return self.session.workspace.metric_spec

    def _set_refs(self, refs: dict) -> None:
        self.refs = refs
        self._live.redraw()

    # -- building widgets ------------------------------------------------------------------
    def _spec(self) -> MethodView:
        return self.methods[self.method]

    def _on_method(self, *_):
        spec = self._spec()
        self._building = True
        try:
            self._doc.object = md("**{}** — {}", spec.name, spec.doc) + Md(
                "" if spec.mergekit else "  \n*(not in mergekit: exports as JSON only)*")
            self._widgets = {}
            for p in spec.params:
                if p.scope in ("global", "both"):
                    self._widgets[p.name] = make_entry(p)
            self._model_widgets = {}
            rows = []
            # every per-model parameter the method declares: "model" scope (weight) has a
            # value per model; "both" (density, gamma, epsilon, ...) a global value that a
            # model may override (an empty box = the global value)
            per_model = [p for p in spec.params if p.scope in ("model", "both")]
            labels = self.session.workspace.labels
            limit = spec.n_models
            for i, label in enumerate(labels):
                ws_ = {"include": pn.widgets.Checkbox(
                    name="", value=limit is None or i < limit, width=30)}
                for p in per_model:
                    w = make_entry(p, name=p.name, width=250, allow_none=p.scope == "both")
                    ws_[p.name] = w
                    glob = self._widgets.get(p.name)
                    if isinstance(w, ParamEntry) and isinstance(glob, ParamEntry):
                        w.fallback = glob.value
                        glob.param.watch(lambda e, w=w: setattr(w, "fallback", e.new), "value")
                self._model_widgets[label] = ws_
                rows.append(pn.Row(ws_["include"], SafeMarkdown(md_code(label), width=90),
                                   pn.FlexBox(*[w for k, w in ws_.items() if k != "include"],
                                              min_width=260, max_width=520)))
            self._sched_widgets = {}
            for p in spec.params:
                if p.kind == "float" and p.scope != "model":
                    self._sched_widgets[p.name] = pn.widgets.TextInput(
                        name=f"{p.name} schedule", placeholder="e.g. 0.2, 0.8  or  attn: 0.5",
                        width=220)
            for w in [*self._widgets.values(), *self._sched_widgets.values()]:
                watch_widget(w, self.request)
            for ws_ in self._model_widgets.values():
                for w in ws_.values():
                    watch_widget(w, self.request)
            for w in self._entries():
                w.param.watch(self._on_entry_error, "error")
                w.param.watch(self._clear_entry_errors, "value")
            self._global_box[:] = list(self._widgets.values()) or [
                SafeMarkdown(Md("*no global parameters*"))]
            self._model_box[:] = rows or [SafeMarkdown(Md("*no per-model parameters*"))]
            self._sched_box[:] = list(self._sched_widgets.values()) or [
                SafeMarkdown(Md("*no schedulable parameters*"))]
            floats = [p.name for p in spec.params if p.kind == "float" and p.scope != "model"]
            self._sweep_param.options = floats
            self._sweep_param.value = ("lambda" if "lambda" in floats
                                       else floats[0] if floats else None)
            if floats:
                p0 = spec.param(floats[0])
                self._sweep_from.value = float(p0.lo if p0.lo is not None else 0.0)
                self._sweep_to.value = float(p0.hi if p0.hi is not None else 1.0)
        finally:
            self._building = False
        self.request()

    def _entries(self) -> list[ParamEntry]:
        ws_ = [*self._widgets.values(),
               *(w for m in self._model_widgets.values() for w in m.values())]
        return [w for w in ws_ if isinstance(w, ParamEntry)]

    def _on_entry_error(self, event) -> None:
        if event.new:
            self.session.notify_error(RecipeError(event.new))

    def _clear_entry_errors(self, *_) -> None:
        """A value committed in any entry: the refusal messages of the others are stale."""
        for w in self._entries():
            if w.error:
                w.clear_error()

    def entry(self, name: str, model: str | None = None) -> ParamEntry:
        """The :class:`ParamEntry` of parameter ``name`` (global, or of ``model``)."""
        w = (self._widgets.get(name) if model is None
             else self._model_widgets.get(model, {}).get(name))
        if not isinstance(w, ParamEntry):
            raise RecipeError(f"method {self.method!r} has no numeric parameter {name!r}"
                              + (f" for model {model!r}" if model else ""))
        return w

    # -- state <-> recipe ------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """JSON-able description of the current settings (restorable with :meth:`restore`)."""
        return {
            "method": self.method,
            "params": {k: widget_value(w) for k, w in self._widgets.items()},
            "model_params": {lab: {k: widget_value(w) for k, w in ws_.items()}
                             for lab, ws_ in self._model_widgets.items()},
            "schedules": {k: w.value for k, w in self._sched_widgets.items() if w.value},
        }

    def build_recipe(self, state: dict | None = None):
        """Recipe for ``state`` (default: current widgets); RecipeError if invalid."""
        state = state or self.state
        params = dict(state["params"])
        for name, text in state.get("schedules", {}).items():
            sched = scheduled(text, params, name)
            if sched is not None:
                params[name] = sched
        model_params = {lab: {k: v for k, v in mp.items() if v is not None}
                        for lab, mp in state["model_params"].items()}
        return self.session.workspace.make_recipe(state["method"], params, model_params)

    def set(self, name: str, value, model: str | None = None) -> None:
        """Set one parameter (globally or for ``model``) as if the user had; re-evaluates."""
        if model is None and isinstance(value, str) and name in self._sched_widgets:
            w = self._sched_widgets[name]  # a per-layer schedule typed as text
        elif model is None:
            w = self._widgets.get(name)
        else:
            w = self._model_widgets.get(model, {}).get(name)
        if w is None:
            raise RecipeError(f"method {self.method!r} has no parameter {name!r}"
                              + (f" for model {model!r}" if model else ""))
        set_widget(w, value)

    def restore(self, state: dict) -> None:
        """Put the widgets back to ``state`` (from :attr:`history`) and re-evaluate once."""
        self._building = True
        try:
            if state["method"] != self.method:
                self.method = state["method"]
            for k, v in state["params"].items():
                if k in self._widgets:
                    set_widget(self._widgets[k], v)
            for lab, mp in state["model_params"].items():
                for k, w in self._model_widgets.get(lab, {}).items():
                    v = mp.get(k)
                    if isinstance(w, ParamEntry) and w.allow_none:
                        set_widget(w, v)  # None: back to the global value
                    elif v is not None:
                        set_widget(w, v)
            for k, w in self._sched_widgets.items():
                w.value = state.get("schedules", {}).get(k, "")
        finally:
            self._building = False
        self.request()

    # -- evaluation --------------------------------------------------------------------------
    def request(self) -> None:
        """Rebuild the recipe from the widgets and evaluate it (coalesced)."""
        if self._building:
            return
        state = copy.deepcopy(self.state)
        try:
            recipe = self.build_recipe(state)
        except Exception as exc:  # noqa: BLE001 - bad parameters are shown, not raised
            self.session.notify_error(exc)
            return
        self.recipe = recipe
        self.why.cancel()  # a newer recipe: its anatomy follows its metrics
        if not self.session.workspace.can_evaluate:
            self._summary.object = md_code(_short(state)) + Md("  \n" + NO_EVALUATOR)
            self.why.schedule()
            return
        self._t_request = time.perf_counter()
        ws = self.session.workspace

        def shown(result):
            self._show(result)
            self.why.schedule()  # after the metrics, once the user pauses

        submit_with_spinner(self.session.runner, self._busy, "merge-eval",
                            lambda: (state, recipe, ws.evaluate_recipe(recipe)), shown,
                            error=lambda exc: self.why.schedule())

    def _show(self, result) -> None:
        with pn.io.hold():  # one patch to the browser: summary, bars and history together
            self._show_now(result)

    def _show_now(self, result) -> None:
        state, recipe, metrics = result
        self.last_latency_ms = 1000 * (time.perf_counter() - self._t_request)
        self.metrics = dict(metrics)
        self.n_evals += 1
        stats = summary_stats(metrics, self.refs.get("individual", {}), self.spec)
        self._summary.object = (md("**eval #{}** — {}  \n{}", self.n_evals,
                                   summary_text(stats, self.spec), md_code(_short(state))))
        self._live.update(metrics, f"{state['method']}: per-task")
        key = json.dumps(state, sort_keys=True, default=str)
        if not any(h["key"] == key for h in self.history):
            self.history.append({"key": key, "state": state, "metrics": dict(metrics), **stats})
            self._draw_history()

    def history_frame(self) -> pd.DataFrame:
        """One row per recipe tried: ``i, avg, worst, recipe, pareto, kind``."""
        df = pd.DataFrame([{"i": i, "avg": h["avg"], "worst": h["worst"],
                            "recipe": _short(h["state"])} for i, h in enumerate(self.history)],
                          columns=["i", "avg", "worst", "recipe"])
        df["pareto"] = pareto_mask(df[["avg", "worst"]].to_numpy(float),
                                   [self.spec.direction] * 2)
        df["kind"] = np.where(df["pareto"], "Pareto", "dominated")
        return df

    def _draw_history(self):
        self._history_pipe.send(self.history_frame())

    def _history_el(self, data: pd.DataFrame):
        spec = self.spec
        df = data
        vals = [*df["avg"], *df["worst"]]
        rng = axis_range(spec, vals)
        good = "top right" if spec.higher_is_better else "bottom left"
        pts = hv.Points(df, ["avg", "worst"], ["i", "recipe", "kind"]).opts(
            color="kind", cmap={"Pareto": "#d62728", "dominated": "#9ecae1"}, size=11,
            tools=["hover", "tap"], responsive=True, height=320, nonselection_alpha=0.5,
            title=f"Recipes tried (click one to restore it; best: {good})",
            xlabel=spec.labelled(f"mean {spec.name}"),
            ylabel=spec.labelled(f"worst-task {spec.name}"),
            xlim=rng or (None, None), ylim=rng or (None, None), framewise=True,
            legend_position="bottom", legend_cols=2, fontsize={"labels": 9},
            **READABLE)  # legend off the points, axis labels that fit
        return pts

    def _front_el(self, data: pd.DataFrame):
        front = data[data["pareto"]].sort_values("avg")
        return hv.Curve(front, "avg", "worst").opts(color="#d62728", line_dash="dotted")

    def _on_history_tap(self, index):
        if index:
            i = index[0]
            if 0 <= i < len(self.history):
                self.restore(self.history[i]["state"])

    # -- sweeps ------------------------------------------------------------------------------
    def run_sweep(self, name: str | None = None, values=None) -> None:
        """Evaluate the current recipe over a grid of one parameter (with progress)."""
        name = name or self._sweep_param.value
        if not name:
            self.session.notify_error("This method has no float parameter to sweep.")
            return
        if values is None:
            values = np.linspace(self._sweep_from.value, self._sweep_to.value,
                                 int(self._sweep_steps.value)).tolist()
        base_state = copy.deepcopy(self.state)

        def make(v):
            st = copy.deepcopy(base_state)
            st["params"][name] = float(v)
            st.get("schedules", {}).pop(name, None)
            return self.build_recipe(st)

        try:
            make(values[0])
        except Exception as exc:  # noqa: BLE001
            self.session.notify_error(exc)
            return
        self._sweep_progress.value = 0
        self._sweep_progress.visible = True
        self._sweep_btn.disabled = True
        runner = self.session.runner

        def progress(frac, msg):
            runner.call_soon(lambda: setattr(self._sweep_progress, "value", int(100 * frac)))

        def work():
            return self.session.workspace.sweep(make, values, progress=progress)

        def done(df):
            self._sweep_btn.disabled = False
            self._sweep_progress.visible = False
            self.sweep_result = df
            spec = self.spec
            avg = df.groupby("value", as_index=False)["metric"].mean().assign(task="average")
            worst = df.groupby("value", as_index=False)["metric"].agg(
                "min" if spec.higher_is_better else "max").assign(task="worst")
            curves = [hv.Curve(g, "value", "metric", label=str(t)).opts(alpha=0.5)
                      for t, g in df.groupby("task")]
            curves += [hv.Curve(avg, "value", "metric", label="average").opts(
                           color="black", line_width=3),
                       hv.Curve(worst, "value", "metric", label="worst").opts(
                           color="red", line_width=3, line_dash="dashed")]
            self._sweep_plot.object = hv.Overlay(curves).opts(
                responsive=True, height=320, title=f"Sweep of {name} ({base_state['method']})",
                xlabel=name, ylabel=spec.label, legend_position="right", **READABLE)

        def error(exc):
            self._sweep_btn.disabled = False
            self._sweep_progress.visible = False

        runner.submit("sweep", work, done, error)

    # -- layout ------------------------------------------------------------------------------
    def controls(self):
        return pn.Column(
            pn.Row(self._method_w, self._busy, self._refresh),
            self._doc,
            SafeMarkdown(Md("#### Parameters")), self._global_box,
            SafeMarkdown(Md("#### Models (include; per-model parameters — an empty box "
                            "uses the global value)")), self._model_box,
            SafeMarkdown(Md("#### Per-layer schedules (gradient or filters)")), self._sched_box,
            width=640,
        )

    def __panel__(self):
        return pn.Row(
            self.controls(),
            pn.Column(
                self._summary, self._bars, self._history_pane, self.why,
                pn.Row(self._sweep_param, self._sweep_from, self._sweep_to, self._sweep_steps,
                       self._sweep_btn),
                self._sweep_progress, self._sweep_plot,
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _short(state: dict) -> str:
    ps = ", ".join(f"{k}={_fmt(v)}" for k, v in state["params"].items())
    weights = [mp.get("weight") for mp in state["model_params"].values()]
    if weights and any(w not in (None, 1.0) for w in weights):
        ps += ", w=[" + ", ".join(_fmt(w) for w in weights) + "]"
    overrides = [f"{k}@{lab}={_fmt(v)}" for lab, mp in state["model_params"].items()
                 for k, v in mp.items() if k not in ("include", "weight") and v is not None]
    if overrides:
        ps += ", " + ", ".join(overrides)
    sched = state.get("schedules") or {}
    if sched:
        ps += ", " + ", ".join(f"{k}~[{v}]" for k, v in sched.items())
    return f"{state['method']}({ps})"

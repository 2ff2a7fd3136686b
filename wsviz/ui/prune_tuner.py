"""Prune tuner: method, target sparsity and per-layer-group schedule; live metrics and the
keep-mask of the selected layer."""

from __future__ import annotations

import copy

import holoviews as hv
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.ui.layer_detail import matrix_plot
from wsviz.ui.merge_tuner import NO_EVALUATOR, scheduled
from wsviz.ui.session import Session
from wsviz.ui.widgets import (
    LiveBars,
    load_references,
    make_widget,
    set_widget,
    submit_with_spinner,
    summary_stats,
    summary_text,
    watch_widget,
    widget_value,
)


class PruneTuner(Viewer):
    """Prune one model (a fine-tune or the base) and evaluate it live."""

    target = param.Selector(default=None, objects=[], doc="Model to prune.")
    method = param.Selector(default=None, objects=[], doc="Pruning method.")
    metrics = param.Dict(default=None, allow_None=True, doc="Per-task metrics of the pruned model.")
    n_evals = param.Integer(default=0)

    def __init__(self, session: Session, **params):
        self.session = session
        ws = session.workspace
        self.methods = ws.prune_methods()
        super().__init__(**params)
        self.param.target.objects = list(ws.labels) + ["base"]
        self.param.method.objects = list(self.methods)
        self.refs = {}
        self._widgets: dict[str, object] = {}
        self._building = False
        self._box = pn.Column()
        self._sched = pn.widgets.TextInput(name="sparsity per layer group",
                                           placeholder="e.g. attn: 0.3, mlp: 0.7", width=260)
        watch_widget(self._sched, self.request)
        self._summary = pn.pane.Markdown("*no evaluation yet*",
                                         css_classes=["wsviz-prune-summary"])
        self._live = LiveBars(lambda: self.refs, label="pruned",
                              spec_getter=lambda: ws.metric_spec)
        if ws.can_evaluate:
            load_references(session, self._set_refs, "prune-references")
        self._bars = self._live.pane
        self._mask = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._busy = pn.indicators.LoadingSpinner(value=False, size=24)
        self._doc = pn.pane.Markdown("")
        self.param.watch(self._on_method, "method")
        self.param.watch(lambda e: self.request(), "target")
        session.param.watch(lambda e: self._draw_mask(), "layer")
        with param.parameterized.discard_events(self):
            self.target = ws.labels[0] if ws.labels else "base"
        self.method = "magnitude" if "magnitude" in self.methods else list(self.methods)[0]

    def _set_refs(self, refs: dict) -> None:
        self.refs = refs
        self._live.redraw()

    def _on_method(self, *_):
        spec = self.methods[self.method]
        self._building = True
        try:
            self._doc.object = f"**{spec.name}** — {spec.doc}"
            self._widgets = {p.name: make_widget(p) for p in spec.params}
            for w in self._widgets.values():
                watch_widget(w, self.request)
            self._box[:] = list(self._widgets.values())
        finally:
            self._building = False
        self.request()

    @property
    def state(self) -> dict:
        params = {k: widget_value(w) for k, w in self._widgets.items()}
        return {"target": self.target, "method": self.method, "params": params,
                "schedule": self._sched.value}

    def _params(self, state: dict) -> dict:
        params = dict(state["params"])
        sched = scheduled(state.get("schedule", ""), params, "sparsity")
        if sched is not None and "sparsity" in params:
            params["sparsity"] = sched
        return params

    def set(self, name: str, value) -> None:
        if name == "schedule":
            self._sched.value = value
            return
        set_widget(self._widgets[name], value)

    def request(self) -> None:
        if self._building:
            return
        state = copy.deepcopy(self.state)
        try:
            params = self._params(state)
        except Exception as exc:  # noqa: BLE001
            self.session.notify_error(exc)
            return
        ws = self.session.workspace
        self._draw_mask()
        if not ws.can_evaluate:
            self._summary.object = NO_EVALUATOR
            return
        submit_with_spinner(
            self.session.runner, self._busy, "prune-eval",
            lambda: (state, ws.evaluate_prune(state["target"], state["method"], params)),
            self._show)

    def _show(self, result):
        state, metrics = result
        self.metrics = dict(metrics)
        self.n_evals += 1
        spec = self.session.workspace.metric_spec
        stats = summary_stats(metrics, self.refs.get("individual", {}), spec)
        ps = ", ".join(f"{k}={v}" for k, v in state["params"].items())
        self._summary.object = (
            f"**eval #{self.n_evals}** — {state['method']}({ps}) on `{state['target']}`: "
            f"{summary_text(stats, spec, normalized=False)}")
        self._live.update(metrics, f"pruned {state['target']}: per-task")

    def _draw_mask(self):
        layer = self.session.layer
        if not layer or self.method is None:
            return
        state = copy.deepcopy(self.state)
        try:
            params = self._params(state)
        except Exception:  # noqa: BLE001 - reported by request()
            return
        ws = self.session.workspace

        def work():
            return ws.prune_mask(layer, state["target"], state["method"], params)

        def done(mask):
            if mask is None:
                self._mask.object = hv.Div(f"<i>{layer} is 1-D: not pruned.</i>")
            else:
                kept = float(mask.mean()) if mask.size else 0.0
                self._mask.object = matrix_plot(
                    mask.astype(float), f"keep-mask of {layer} (kept {kept:.1%})",
                    cmap="gray", symmetric=False)

        self.session.runner.submit("prune-mask", work, done)

    def __panel__(self):
        return pn.Row(
            pn.Column(
                pn.Row(pn.widgets.Select.from_param(self.param.method, name="Method",
                                                    width=200), self._busy),
                pn.widgets.Select.from_param(self.param.target, name="Model to prune",
                                             width=200),
                self._doc, self._box, self._sched, width=420),
            pn.Column(self._summary, self._bars, self._mask, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

"""Prune tuner: target (the base, a fine-tune or the merge tuner's current merge), method,
sparsity, per-layer schedule and include / exclude globs; live metrics, the keep-mask of the selected
layer, and export of the prune recipe (YAML) and of the pruned weights.

Every number comes from :mod:`wsviz.recipes.prune` through the workspace, the code
``wsviz prune`` runs: the downloaded recipe, applied by ``wsviz prune MODEL --recipe`` to the
same model, writes the tensors this tuner shows and writes."""

from __future__ import annotations

import copy
import io

import holoviews as hv
import panel as pn
import param
from panel.viewable import Viewer

from wsviz.errors import WsvizError
from wsviz.session.views import MERGE_TARGET
from wsviz.ui.layer_detail import matrix_plot
from wsviz.ui.merge_tuner import NO_EVALUATOR, parse_schedule
from wsviz.ui.session import Session
from wsviz.ui.text import Md, SafeMarkdown, html, md, md_code
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
    write_folder_async,
)


class PruneTuner(Viewer):
    """Prune one model (a fine-tune, the base or the current merge) and evaluate it live."""

    target = param.Selector(default=None, objects=[], doc="Model to prune.")
    method = param.Selector(default=None, objects=[], doc="Pruning method.")
    metrics = param.Dict(default=None, allow_None=True, doc="Per-task metrics of the pruned model.")
    n_evals = param.Integer(default=0)
    recipe_text = param.String(default="", doc="The prune recipe as YAML (empty if invalid).")
    written = param.String(default=None, allow_None=True, doc="Last directory written.")

    def __init__(self, session: Session, **params):
        self.session = session
        ws = session.workspace
        self.methods = ws.prune_methods()
        super().__init__(**params)
        self.param.target.objects = list(ws.labels) + ["base", MERGE_TARGET]
        self.param.method.objects = list(self.methods)
        self.refs = {}
        self._widgets: dict[str, object] = {}
        self._building = False
        self._box = pn.Column()
        self._sched = pn.widgets.TextInput(name="sparsity per layer group",
                                           placeholder="e.g. attn: 0.3, mlp: 0.7", width=260)
        self._include = pn.widgets.TextInput(name="prune only (globs)",
                                             placeholder="default: 2-D weights, no embeddings "
                                             "or heads", width=260)
        self._exclude = pn.widgets.TextInput(name="never prune (globs)",
                                             placeholder="e.g. *.layers.0.*, *.o_proj.*",
                                             width=260)
        watch_widget(self._sched, self.request)
        watch_widget(self._exclude, self.request)
        watch_widget(self._include, self.request)
        self._summary = SafeMarkdown(Md("*no evaluation yet*"),
                                     css_classes=["wsviz-prune-summary"])
        self._live = LiveBars(lambda: self.refs, label="pruned",
                              spec_getter=lambda: ws.metric_spec)
        if ws.can_evaluate:
            load_references(session, self._set_refs, "prune-references")
        self._bars = self._live.pane
        self._mask = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._busy = pn.indicators.LoadingSpinner(value=False, size=24)
        self._doc = SafeMarkdown("")
        # export: recipe download, pruned weights written under the export root
        self._yaml = pn.widgets.CodeEditor(value="", language="yaml", readonly=True,
                                           height=160, sizing_mode="stretch_width")
        self._dl = pn.widgets.FileDownload(callback=lambda: io.StringIO(self.recipe_text),
                                           filename="prune.yml", label="Download prune recipe",
                                           width=220, css_classes=["wsviz-dl-prune"])
        root = ws.export_root
        self._outdir = pn.widgets.TextInput(name=f"Output folder (inside {root})",
                                            placeholder="pruned-model", width=420)
        self._force = pn.widgets.Checkbox(name="overwrite if it exists", value=False)
        self._write_btn = pn.widgets.Button(name="Write pruned weights",
                                            button_type="success", width=200)
        self._write_btn.on_click(lambda e: self.write())
        self._progress = pn.indicators.Progress(value=0, max=100, width=300, visible=False)
        self._write_msg = SafeMarkdown("", css_classes=["wsviz-prune-written"])
        self.param.watch(self._on_method, "method")
        self.param.watch(lambda e: self.request(), "target")
        session.param.watch(lambda e: self._draw_mask(), "layer")
        session.param.watch(self._on_merge, "merge_recipe")
        with param.parameterized.discard_events(self):  # the current merge when there is one
            self.target = (MERGE_TARGET if session.merge_recipe is not None
                           else ws.labels[0] if ws.labels else "base")
        self.method = "magnitude" if "magnitude" in self.methods else list(self.methods)[0]

    def _set_refs(self, refs: dict) -> None:
        self.refs = refs
        self._live.redraw()

    def _on_merge(self, *_):
        if self.target == MERGE_TARGET:
            self.request()

    def _on_method(self, *_):
        spec = self.methods[self.method]
        self._building = True
        try:
            self._doc.object = md("**{}** — {}", spec.name, spec.doc)
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
                "schedule": self._sched.value, "exclude": self._exclude.value,
                "include": self._include.value}

    def _params(self, state: dict) -> dict:
        """Workspace parameters of ``state``: the widgets' values, the schedule (tensors it
        does not cover get the sparsity slider's value) and the exclude globs."""
        params = dict(state["params"])
        if "sparsity" in params:
            sched = parse_schedule(state.get("schedule", ""))
            if sched is not None:
                params["schedule"] = sched
        for key in ("include", "exclude"):
            globs = [g.strip() for g in (state.get(key) or "").split(",") if g.strip()]
            if globs:
                params[key] = globs
        return params

    def _merge(self, state: dict):
        return self.session.merge_recipe if state["target"] == MERGE_TARGET else None

    def set(self, name: str, value) -> None:
        if name == "schedule":
            self._sched.value = value
            return
        if name in ("include", "exclude"):
            getattr(self, f"_{name}").value = value
            return
        set_widget(self._widgets[name], value)

    def request(self) -> None:
        if self._building:
            return
        state = copy.deepcopy(self.state)
        ws = self.session.workspace
        try:
            params = self._params(state)
            self.recipe_text = ws.prune_recipe_text(state["method"], params)
            if state["target"] == MERGE_TARGET and self.session.merge_recipe is None:
                raise WsvizError("no valid merge recipe yet: set one up in the Merge tab")
        except Exception as exc:  # noqa: BLE001
            self.recipe_text = ""
            self._yaml.value = ""
            self._failed(state, exc)
            return
        self._yaml.value = self.recipe_text
        merge = self._merge(state)
        self._draw_mask()
        if not ws.can_evaluate:
            self._summary.object = Md(NO_EVALUATOR)
            return
        submit_with_spinner(
            self.session.runner, self._busy, "prune-eval",
            lambda: (state, ws.evaluate_prune(state["target"], state["method"], params,
                                              merge=merge)),
            self._show, lambda exc: self._failed(state, exc, notify=False))

    def _failed(self, state: dict, exc, notify: bool = True) -> None:
        """An evaluation of ``state`` failed: the previous result is withdrawn (the summary,
        bars and mask say nothing was computed for these settings), the error is shown."""
        if notify:
            self.session.notify_error(exc)
        self.metrics = None
        self._summary.object = (f"**no result** for {state['method']} on `{state['target']}` "
                                "(see the notification)")
        self._live.update({}, f"{state['method']} on {state['target']}: failed")
        self._mask.object = None

    def _show(self, result):
        state, metrics = result
        self.metrics = dict(metrics)
        self.n_evals += 1
        spec = self.session.workspace.metric_spec
        stats = summary_stats(metrics, self.refs.get("individual", {}), spec)
        ps = ", ".join(f"{k}={v}" for k, v in state["params"].items())
        self._summary.object = md(
            "**eval #{}** — {}({}) on {}: {}", self.n_evals, state["method"], ps,
            md_code(state["target"]), summary_text(stats, spec, normalized=False))
        self._live.update(metrics, f"pruned {state['target']}: per-task")

    def _draw_mask(self):
        layer = self.session.layer
        if not layer or self.method is None:
            return
        state = copy.deepcopy(self.state)
        merge = self._merge(state)
        if state["target"] == MERGE_TARGET and merge is None:
            return
        try:
            params = self._params(state)
        except Exception:  # noqa: BLE001 - reported by request()
            return
        ws = self.session.workspace

        def work():
            return ws.prune_mask(layer, state["target"], state["method"], params, merge=merge)

        def done(mask):
            if mask is None:
                self._mask.object = hv.Div(html("<i>{} is not pruned (only 2-D weight "
                                                "matrices, no embeddings, heads or excluded "
                                                "tensors).</i>", layer))
            else:
                kept = float(mask.mean()) if mask.size else 0.0
                self._mask.object = matrix_plot(
                    mask.astype(float), f"keep-mask of {layer} (kept {kept:.1%})",
                    cmap="gray", symmetric=False, label="kept (1) / pruned (0)")

        def failed(exc):
            self._mask.object = None  # the error is shown; no stale mask stays

        self.session.runner.submit("prune-mask", work, done, failed)

    def write(self, outdir: str | None = None, force: bool | None = None) -> None:
        """Write the pruned target to ``outdir`` inside the export root (off the event loop,
        with progress); refusals are notifications and nothing is written."""
        outdir = (outdir if outdir is not None else self._outdir.value).strip()
        force = self._force.value if force is None else force
        state = copy.deepcopy(self.state)
        ws = self.session.workspace
        if not outdir:
            self.session.notify_error("Type an output folder name first.")
            return
        try:
            from wsviz.io.outputs import resolve_under

            params = self._params(state)
            ws.prune_recipe_text(state["method"], params)
            merge = self._merge(state)
            if state["target"] == MERGE_TARGET and merge is None:
                raise WsvizError("no valid merge recipe yet: set one up in the Merge tab")
            target = resolve_under(ws.export_root, outdir)
        except Exception as exc:  # noqa: BLE001 - shown, nothing written
            self.session.notify_error(exc)
            self._write_msg.object = Md("**Nothing written** (see the notification).")
            return
        write_folder_async(
            self, "prune-write", target,
            lambda progress: ws.write_pruned(state["target"], state["method"], params,
                                             str(target), force, merge=merge,
                                             progress=progress),
            "Wrote {path} (with `wsviz_prune.yml`)", "Pruned model written to {path}")

    def __panel__(self):
        export = pn.Column(
            SafeMarkdown(Md("#### Export: prune recipe and pruned weights (HF directory)")),
            pn.Row(self._dl), self._yaml,
            pn.Row(self._outdir, self._force, self._write_btn),
            self._progress, self._write_msg, sizing_mode="stretch_width")
        return pn.Column(
            pn.Row(
                pn.Column(
                    pn.Row(pn.widgets.Select.from_param(self.param.method, name="Method",
                                                        width=200), self._busy),
                    pn.widgets.Select.from_param(self.param.target, name="Model to prune",
                                                 width=200),
                    self._doc, self._box, self._sched, self._include, self._exclude,
                    width=420),
                pn.Column(self._summary, self._bars, self._mask, sizing_mode="stretch_width"),
                sizing_mode="stretch_width"),
            export, sizing_mode="stretch_width")

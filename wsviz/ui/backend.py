"""The :class:`~wsviz.ui.workspace.Workspace` on top of wsviz's public API.

Adapters only: analysis (:func:`wsviz.analysis.analyze`), merging
(:class:`wsviz.recipes.Recipe`, :class:`~wsviz.recipes.InMemoryMerger`,
:func:`~wsviz.recipes.merge_to_dir`), pruning (:mod:`wsviz.recipes.prune`, the code ``wsviz prune`` runs), evaluation
(:mod:`wsviz.eval`) and the demo zoo (:mod:`wsviz.zoo`). Tensors are turned into numpy /
pandas here, so the views never see torch.

Thread safety: a workspace is shared by every browser session of a server; lazily built
members are created under a lock and the merger / evaluator are used under ``_eval_lock``
(torch already runs one merge on all cores, so serialising loses nothing).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsviz.errors import EvalError, RecipeError, WsvizError
from wsviz.ui.workspace import (
    MERGE_TARGET,
    LayerDetailView,
    MethodView,
    ParamView,
    Progress,
    Workspace,
)

#: Largest matrix side sent to the matrix image (bigger ones are strided down first;
#: datashader then rasterises to screen resolution).
MAX_IMAGE_SIDE = 2048

#: Where the merge tuner starts for each method (a useful first view; spec defaults apply
#: to everything not listed).
UI_START: dict[str, dict] = {
    "task_arithmetic": {"lambda": 0.3},
    "ties": {"density": 0.2},
    "dare_ties": {"density": 0.5},
    "dare_linear": {"density": 0.5},
    "breadcrumbs": {"density": 0.8},
    "breadcrumbs_ties": {"density": 0.8},
    "della": {"density": 0.5},
    "della_linear": {"density": 0.5},
    "slerp": {"t": 0.5},
    "nearswap": {"t": 0.01},
    "passthrough": {"scale": 1.0},
}

InputNorms = Callable[..., dict]
"""``input_norms(target, weights=None) -> {tensor or module name: ||X||_2 per input
feature}`` for Wanda (``target``: a label, ``"base"``, or :data:`MERGE_TARGET` with the
merged ``weights``)."""


def _param_view(p, method: str) -> ParamView:
    """A :class:`ParamView` from a :class:`wsviz.compute.merge.ParamSpec`."""
    start = UI_START.get(method, {})
    default = start.get(p.name, None if p.required else p.default)
    if p.name == "weight" and default is None:
        default = 1.0
    kind = {float: "float", int: "int", bool: "bool", str: "choice" if p.choices else "str"
            }.get(p.type, "str")
    lo = hi = step = None
    if kind in ("float", "int"):  # a slider on round numbers (see wsviz.ui.param_grid)
        from wsviz.ui.param_grid import slider_grid

        rng = p.ui_range or p.range or (0.0, 1.0)
        lo, hi = rng
        lo = 0.0 if lo is None else lo
        hi = max(lo + 1.0, 2.0 * abs(default or 1.0)) if hi is None else hi
        open_low = bool(p.open_low and p.range and p.range[0] == lo)
        grid = slider_grid(lo, hi, integer=kind == "int", open_low=open_low)
        lo, hi, step = grid.start, grid.end, grid.step
    # mergekit "model" scope: one value per model, or a global fallback
    scope = "model" if p.name == "weight" else ("both" if p.scope == "model" else "global")
    return ParamView(name=p.name, kind=kind, default=default, lo=lo, hi=hi, step=step,
                     choices=tuple(p.choices or ()), scope=scope, doc=p.doc,
                     required=p.required, valid=p.range, open_low=p.open_low,
                     open_high=p.open_high)


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


class ApiWorkspace(Workspace):
    """A model set (base + fine-tunes) with an optional evaluator.

    ``modelset``: :class:`wsviz.io.ModelSet`; ``evaluator``: an object with ``evaluate
    (weights) -> {task: {metric: value}}`` (and optionally ``names``, ``tasks``,
    ``references()``, ``metrics``), or None (no live metrics); ``metric``: which metric the
    tuners plot, ``"NAME"`` or ``"NAME:min|max"`` or a :class:`~wsviz.eval.MetricSpec`
    (default: the evaluator's primary metric, see :func:`wsviz.eval.metrics.primary_metric`;
    for an evaluator that declares none, the first metric it reports).
    """

    def __init__(self, modelset, evaluator=None, title: str = "model set", device=None,
                 metric=None, base_label: str = "base",
                 input_norms: InputNorms | None = None):
        from wsviz.eval.metrics import metric_specs

        self.ms = modelset
        self.evaluator = evaluator
        self.title = title
        self.device = device
        self.metric_spec = _choose_metric(evaluator, metric)
        self.metric = self.metric_spec.name
        # nothing declared, nothing chosen: follow the first metric the evaluator reports
        self._metric_auto = metric is None and not metric_specs(evaluator)
        self.base_label = base_label
        self.labels = list(modelset.labels)
        self.tasks = list(getattr(evaluator, "tasks", None) or [])
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()
        self._refs_lock = threading.Lock()
        self._analysis = None
        self._run = None
        self._merger = None
        self._refs = None
        self.reference_results: dict[str, dict] | None = None
        self._taskmaps: dict = {}
        self._groups = None
        self._input_norms = input_norms
        #: Wanda calibration file (``--calib``), written into exported wanda prune recipes
        self.calib: str | None = None
        self._norms: dict = {}
        self._merged_cache = None
        self._plan_cache = None

    @property
    def can_evaluate(self) -> bool:
        return self.evaluator is not None

    # -- analysis ---------------------------------------------------------------------------
    def layers(self) -> list[str]:
        return list(self.ms.names)

    def layer_groups(self) -> dict[str, str]:
        if self._groups is None:
            self._groups = {n: self.ms.layer(n).group for n in self.ms.names}
        return self._groups

    def analysis_run(self):
        """The progressive :class:`wsviz.analysis.AnalysisRun` (started once, disk-cached)."""
        with self._lock:
            if self._run is None:
                from wsviz.analysis import AnalysisRun

                self._run = AnalysisRun(self.ms, device=self.device).start()
            return self._run

    def analysis(self, progress: Progress | None = None):
        """The :class:`wsviz.analysis.AnalysisResult` (waits for :meth:`analysis_run`)."""
        if self._analysis is None:
            run = self.analysis_run()
            if progress:
                run.subscribe(lambda e: progress(e.done / max(1, e.total),
                                                 f"{e.done}/{e.total} {e.stage} {e.name}"))
            self._analysis = run.result()
        return self._analysis

    def analysis_table(self, progress: Progress | None = None) -> pd.DataFrame:
        return self.analysis(progress).table

    def detail(self, layer: str) -> LayerDetailView:
        d = (self._analysis or self.analysis_run()).detail(layer)
        notes = {}
        text = "; ".join(d.notes)
        view = LayerDetailView(layer=layer, shape=tuple(d.shape), notes=notes)
        if d.sv:
            rows = []
            for key, sv in d.sv.items():
                s = _np(sv)
                series = key if key.startswith(("base", "delta:")) else f"ft:{key}"
                rows.append(pd.DataFrame({"series": series, "index": np.arange(len(s)),
                                          "sigma": s}))
            view.spectra = pd.concat(rows, ignore_index=True)
            esd_rows, fit_rows = [], []
            for key in d.sv:
                series = key if key.startswith(("base", "delta:")) else f"ft:{key}"
                esd_rows.append(pd.DataFrame({"series": series, "lam": _np(d.esd(key))}))
                fit = d.fits.get(key)
                if fit is not None:
                    fit_rows.append({"series": series, "alpha": float(fit.alpha),
                                     "xmin": float(fit.xmin)})
            view.esd = pd.concat(esd_rows, ignore_index=True)
            view.esd_fit = pd.DataFrame(fit_rows, columns=["series", "alpha", "xmin"])
        else:
            notes["spectra"] = notes["esd"] = text or "no spectra for this tensor"
        if d.delta_hist is not None and d.delta_hist_edges is not None:
            edges = _np(d.delta_hist_edges)
            counts = d.delta_hist.cpu().numpy()
            view.delta_hist = pd.concat([
                pd.DataFrame({"series": lab, "left": edges[:-1], "right": edges[1:],
                              "count": counts[i]}) for i, lab in enumerate(d.labels)],
                ignore_index=True)
        if d.conflict_map is not None:
            view.sign_conflict = _np(d.conflict_map)
        if d.sign_agreement is not None:
            view.agreement = pd.DataFrame(_np(d.sign_agreement), index=d.labels,
                                          columns=d.labels)
        if d.intruders:
            recs = []
            for lab, intr in d.intruders.items():
                mc = _np(intr.max_cos)
                flag = intr.is_intruder.cpu().numpy()
                sv = _np(intr.sv)
                for r in np.nonzero(flag)[0]:
                    recs.append({"model": lab, "rank": int(r), "sigma": float(sv[r]),
                                 "max_cos": float(mc[r])})
            view.intruders = pd.DataFrame(recs, columns=["model", "rank", "sigma", "max_cos"])
        else:
            notes["intruders"] = "Intruder dimensions are defined for 2-D weights only."
        view.matrix = self._matrices(layer)
        if not view.matrix:
            notes["matrix"] = "1-D tensor: no matrix view."
        if text:
            notes.setdefault("sign_conflict", text)
        return view

    def _matrices(self, layer: str) -> dict[str, np.ndarray]:
        info = self.ms.info(layer)
        if len(info.shape) < 2:
            return {}

        def as2d(t):
            t = t.reshape(t.shape[0], -1)
            sr = max(1, -(-t.shape[0] // MAX_IMAGE_SIDE))
            sc = max(1, -(-t.shape[1] // MAX_IMAGE_SIDE))
            return _np(t[::sr, ::sc])

        out = {"base": as2d(self.ms.get_base(layer))}
        deltas = self.ms.deltas(layer)
        for i, lab in enumerate(self.labels):
            out[f"delta:{lab}"] = as2d(deltas[i])
        return out

    def task_map(self, group: str | None):
        with self._lock:
            if group not in self._taskmaps:
                from wsviz.analysis import task_vector_matrix

                names = None
                if group is not None:
                    names = [n for n, g in self.layer_groups().items() if g == group]
                self._taskmaps[group] = task_vector_matrix(self.ms, names=names,
                                                           device=self.device)
            tv = self._taskmaps[group]
        return list(tv.labels), _np(tv.matrix)

    def cosine_matrix(self) -> pd.DataFrame:
        res = self.analysis()
        if res.task_vectors is not None:
            return res.task_vectors.cosine_frame()
        self.task_map(None)
        return self._taskmaps[None].cosine_frame()

    # -- merging ----------------------------------------------------------------------------
    def merge_methods(self) -> dict[str, MethodView]:
        from wsviz.compute.merge import METHODS

        out = {}
        for name, spec in METHODS.items():
            if not self._can_give(spec.needs):
                continue  # needs an input this workspace cannot give
            n = len(self.labels)
            if n < spec.min_models:
                continue
            out[name] = MethodView(
                name=name, doc=spec.doc,
                params=tuple(_param_view(p, name) for p in spec.params),
                mergekit=spec.in_mergekit, needs_base=spec.needs_base,
                n_models=spec.max_models)
        return out

    def _can_give(self, needs) -> bool:
        """Fishers come from an evaluator that can compute them on its own data
        (``evaluator.fisher(weights, label)``: the zoo, a perplexity text)."""
        return all(n == "fisher" and callable(getattr(self.evaluator, "fisher", None))
                   for n in needs)

    def _ensure_fishers(self, recipe) -> None:
        """Compute (once) the diagonal Fisher of every model the recipe merges with the
        evaluator's data and cache it in the merger."""
        if "fisher" not in recipe.spec.needs:
            return
        mg = self.merger()
        todo = [lab for lab in recipe.labels if lab in mg.labels
                and lab not in mg.fisher_labels]
        if not todo:
            return
        fishers = {lab: mg.fisher(lab) for lab in mg.fisher_labels}
        for lab in todo:
            i = mg.labels.index(lab)
            weights = {n: mg.base(n) + mg.deltas(n)[i] for n in mg.names}
            fishers[lab] = self.evaluator.fisher(weights, lab)
        mg.set_fisher(fishers)

    def make_recipe(self, method: str, params: dict, model_params: dict[str, dict]):
        from wsviz.compute.merge import get_method
        from wsviz.recipes import ModelEntry, Recipe

        spec = get_method(method)
        include = [lab for lab in self.labels if model_params.get(lab, {}).get("include", True)]
        if spec.max_models is not None:
            include = include[: spec.max_models]
        if not include:
            raise RecipeError("select at least one model to merge")
        models = []
        for lab in include:
            mp = {k: v for k, v in model_params.get(lab, {}).items()
                  if k != "include" and v is not None}
            models.append(ModelEntry(lab, mp))
        glob = {k: v for k, v in params.items() if v is not None}
        # methods with an optional base (nuslerp, multislerp) work on task vectors here
        takes_base = spec.needs_base or spec.optional_base
        recipe = Recipe(method=method, base=self.base_label if takes_base else None,
                        models=models, params=glob, seed=0 if spec.random else None)
        if not spec.needs_base and method == "linear":
            recipe.base = None
        return recipe.validate()

    def merger(self):
        with self._lock:
            if self._merger is None:
                from wsviz.recipes import InMemoryMerger

                names = getattr(self.evaluator, "names", None)
                self._merger = InMemoryMerger(self.ms, device=self.device,
                                              names=list(names) if names else None)
            return self._merger

    def _metric_of(self, results: dict) -> dict[str, float]:
        from wsviz.eval.references import metric_of

        return metric_of(results, self.metric)

    def _results(self, weights) -> dict:
        """The evaluator's full ``{task: {metric: v}}`` for ``weights`` (EvalError on
        failure); the first results fix :attr:`tasks` and, for an evaluator that declares
        no metrics, :attr:`metric_spec`."""
        if self.evaluator is None:
            raise EvalError("no evaluator: start with --eval SPEC (zoo, ppl:text.txt, "
                            "mc:questions.jsonl, lm-eval:TASK, module:function) or --demo "
                            "to see live metrics")
        try:
            res = self.evaluator.evaluate(weights)
        except WsvizError:
            raise
        except Exception as exc:  # noqa: BLE001 - user evaluators may raise anything
            raise EvalError(f"the evaluator raised {type(exc).__name__}: {exc}") from None
        if not self.tasks:
            self.tasks = list(res)
        if self._metric_auto:
            from wsviz.eval.metrics import primary_metric

            self.metric_spec = primary_metric(self.evaluator, res)
            self.metric = self.metric_spec.name
            self._metric_auto = False
        return res

    def _evaluate_weights(self, weights) -> dict[str, float]:
        return self._metric_of(self._results(weights))

    def evaluate_recipe(self, recipe) -> dict[str, float]:
        with self._eval_lock:
            self._ensure_fishers(recipe)
            names = getattr(self.evaluator, "names", None)
            weights = self.merger().merge(recipe, names=list(names) if names else None)
            return self._evaluate_weights(weights)

    def merge_anatomy(self, recipe, progress: Progress | None = None) -> pd.DataFrame:
        """:func:`wsviz.analysis.anatomy.recipe_anatomy` of ``recipe`` over the merger's
        tensors, read from its cache (recipes without ``dtype``) or streamed from disk."""
        from wsviz.analysis.anatomy import recipe_anatomy

        mg = self.merger()
        load = None
        if recipe.dtype is None:
            def load(n):  # the merger's cache: rank tables shared with the live merges
                return mg.base(n), mg.deltas(n), mg.tensor_cache(n)
        return recipe_anatomy(self.ms, recipe, names=mg.names, device=self.device, load=load,
                              progress=progress)

    def references(self) -> dict[str, dict[str, float]]:
        """Reference rows of :attr:`metric` (computed once, see
        :mod:`wsviz.eval.references`): ``pretrained`` (the base's weights), ``individual``
        (each task's own fine-tune, matched by name) and, when some task has no fine-tune of
        its own, one ``ft:<label>`` row per fine-tune. The evaluator's own ``references()``
        is used when it has one and :attr:`metric` is its primary metric; otherwise the base
        and every fine-tune are evaluated through the evaluator (one evaluation each)."""
        with self._refs_lock:
            if self._refs is None:
                self._refs = self._compute_references()
            return self._refs

    def _compute_references(self) -> dict[str, dict[str, float]]:
        from wsviz.eval.metrics import primary_metric
        from wsviz.eval.references import metric_of, reference_results, reference_rows

        if self.evaluator is None:
            return {"pretrained": {}, "individual": {}}
        own = getattr(self.evaluator, "references", None)
        if callable(own) and self.metric == primary_metric(self.evaluator).name:
            with self._eval_lock:
                r = own()
            return {k: metric_of(rows, self.metric) for k, rows in r.items()}

        def evaluate(weights):
            with self._eval_lock:
                return self._results(weights)

        names = getattr(self.evaluator, "names", None)
        per_model = reference_results(self.evaluator, self.ms, names=names, device=self.device,
                                      evaluate=evaluate)
        self.reference_results = {("pretrained" if k == "base" else k): v
                                  for k, v in per_model.items()}
        return reference_rows(per_model, self.metric, self.tasks or None)

    # -- search -----------------------------------------------------------------------------
    @property
    def can_search(self) -> bool:
        if self.evaluator is None:
            return False
        try:
            import optuna  # noqa: F401
        except ImportError:
            return False
        return True

    def search(self, recipe, space: dict, n_trials: int, sampler: str = "tpe",
               on_start=None, on_trial=None, should_stop=None, storage=None):
        """In-process :class:`wsviz.search.Search` on this workspace's merger and evaluator
        (serialised with live evaluations by ``_eval_lock``); see the base class."""
        if self.evaluator is None:
            raise EvalError("no evaluator: a search needs live metrics (--eval or --demo)")
        try:
            from wsviz.search import InlineBackend, Search, SearchSpace
        except ImportError:
            raise WsvizError("recipe search needs optuna: pip install optuna cmaes distributed") \
                from None
        from wsviz.recipes import Recipe

        backend = InlineBackend(self.merger(), self.evaluator, lock=self._eval_lock)
        probe = backend.probe()
        sp = SearchSpace.from_dict(space, recipe, probe["names"], probe["all_names"])
        search = Search(sp, backend, storage=storage, sampler=sampler, probe=probe,
                        study_name="wsviz-ui")
        methods = self.merge_methods()

        def row(r: dict) -> dict:
            r = dict(r)
            rd = r.get("recipe")
            r["recipe"] = Recipe.from_dict(rd) if rd else None
            r["tuner_state"] = tuner_state(r["recipe"], methods, self.labels) if rd else None
            return r

        try:
            search.open()
            if on_start is not None:
                ro = search.resolved
                on_start({"objectives": ro.names, "directions": ro.directions,
                          "tasks": ro.tasks, "metric": ro.metric,
                          "dims": sp.names, "sampler": sampler})
            res = search.run(n_trials, on_trial=(lambda r: on_trial(row(r))) if on_trial
                             else None, should_stop=should_stop)
        finally:
            search.close()
        df = res.frame()
        if len(df):
            df = pd.DataFrame([row(r) for r in df.to_dict("records")])
        return df

    # -- pruning ----------------------------------------------------------------------------
    # Everything here runs wsviz.recipes.prune (the code `wsviz prune` runs): the same
    # PruneRecipe, tensor selection and masks, so the tuner shows what the CLI writes.
    def prune_methods(self) -> dict[str, MethodView]:
        from wsviz.recipes.prune import METHODS

        sp = ParamView("sparsity", "float", 0.5, 0.0, 0.95, 0.05,
                       doc="fraction of entries pruned")
        extra = {
            "magnitude": (ParamView("scope", "choice", "layer", choices=("layer", "row",
                                                                          "global"),
                                    doc="rank within each layer, each output row, or one "
                                        "threshold over all pruned layers"),),
            "random": (ParamView("seed", "int", 0, 0, 100, 1, doc="random seed"),),
            "structured": (ParamView("dim", "int", 0, 0, 1, 1,
                                     doc="0 drops output rows, 1 input columns"),),
            "wanda": (),
        }
        out = {}
        for name, doc in METHODS.items():
            if name == "wanda" and self._input_norms is None:
                continue  # no calibration data for this model set
            if name == "nm":
                params: tuple[ParamView, ...] = (
                    ParamView("n", "int", 2, 1, 8, 1, doc="entries kept per group"),
                    ParamView("m", "int", 4, 1, 8, 1, doc="group size along the input dim"))
            else:
                params = (sp, *extra[name])
            out[name] = MethodView(name, doc, params, mergekit=False)
        return out

    def prune_recipe(self, method: str, params: dict):
        """The :class:`wsviz.recipes.prune.PruneRecipe` of the tuner's ``method`` and
        ``params`` (``sparsity``, ``schedule``, ``scope``, ``seed``, ``dim``, ``n``, ``m``,
        ``include``, ``exclude``; a list/dict ``sparsity`` is taken as the schedule).
        RecipeError naming the bad parameter."""
        from wsviz.recipes.prune import PruneRecipe, parse_method

        name, n, m = parse_method(method)
        kw = {k: v for k, v in params.items() if v is not None and v != ""}
        if isinstance(kw.get("sparsity"), (list, dict)):
            kw.setdefault("schedule", kw.pop("sparsity"))
        if n is not None:
            kw.update(n=n, m=m)
        if name == "nm":
            kw.pop("sparsity", None)
            kw.pop("schedule", None)
        unknown = sorted(set(kw) - {"sparsity", "schedule", "scope", "seed", "dim", "n", "m",
                                     "include", "exclude"})
        if unknown:
            raise RecipeError(f"prune: unknown parameter(s) {unknown} for {name}")
        if name == "wanda" and self.calib is not None:
            kw["calib"] = self.calib  # the exported recipe names the calibration file
        return PruneRecipe(method=name, **kw).validate()

    def _check_target(self, target: str, merge) -> str:
        if target == MERGE_TARGET:
            if merge is None:
                raise WsvizError("no current merge to prune: set up a valid recipe in the "
                                 "Merge tab first")
            return target
        if target in ("base", self.base_label):
            return "base"
        if target not in self.labels:
            raise WsvizError(f"unknown model {target!r}; choose base, {MERGE_TARGET!r} or one "
                             f"of {self.labels}")
        return target

    def _merged(self, merge) -> dict[str, torch.Tensor]:
        """The current merge's tensors (every cached floating tensor), cached for the
        latest recipe (the tuner asks for masks and metrics of the same merge)."""
        key = merge.to_json()
        with self._lock:
            hit = self._merged_cache
            if hit is not None and hit[0] == key:
                return hit[1]
        with self._eval_lock:
            self._ensure_fishers(merge)
            weights = self.merger().merge(merge)
        with self._lock:
            self._merged_cache = (key, weights)
        return weights

    def _prune_source(self, target: str, merge):
        """``(shapes, get)`` of the model pruned: ``shapes`` ``{name: (shape, stored
        dtype)}`` over the aligned tensors, ``get(name)`` reads one as stored (the merge: in
        its output dtype, non-floating tensors from the base) on the workspace device."""
        names = list(self.ms.names)
        if target == MERGE_TARGET:
            weights = self._merged(merge)

            def get(n):
                w = weights.get(n)
                return w if w is not None else self.ms.base.get(n, device=self.device)
        else:
            lab = None if target == "base" else target

            def get(n):
                return self.ms.source(lab, n).get(n, device=self.device)
        shapes = {}
        for n in names:
            if target == MERGE_TARGET and n in weights:
                shapes[n] = (tuple(weights[n].shape), weights[n].dtype)
            else:
                i = self.ms.source(None if target in ("base", MERGE_TARGET) else target,
                                   n).info(n)
                shapes[n] = (tuple(i.shape), i.dtype)
        return shapes, get

    def _prune_plan(self, target: str, recipe, merge=None):
        """``(plan, get)``: :class:`wsviz.recipes.prune.PrunePlan` of ``recipe`` on ``target``
        (the latest plan is cached: a global threshold or Wanda norms are computed once)."""
        from wsviz.recipes.prune import PrunePlan

        target = self._check_target(target, merge)
        key = (target, recipe.to_json(), merge.to_json() if merge is not None else None)
        with self._lock:
            hit = self._plan_cache
            if hit is not None and hit[0] == key:
                return hit[1], hit[2]
        shapes, get = self._prune_source(target, merge)
        norms = self._wanda_norms(target, merge) if recipe.method == "wanda" else None
        plan = PrunePlan(recipe, shapes, norms=norms, load=get)
        with self._lock:
            self._plan_cache = (key, plan, get)
        return plan, get

    def _wanda_norms(self, target: str, merge=None) -> dict:
        if self._input_norms is None:
            raise WsvizError("Wanda needs calibration activations, which this model set has "
                             "none of; use magnitude, random, nm or structured")
        key = target if target != MERGE_TARGET else (target, merge.to_json())
        with self._lock:
            if key in self._norms:
                return self._norms[key]
        if target == MERGE_TARGET:
            norms = self._input_norms(target, self._merged(merge))
            with self._lock:  # keep one merge's norms at a time
                for k in [k for k in self._norms if isinstance(k, tuple)]:
                    del self._norms[k]
        else:
            norms = self._input_norms(target)
        with self._lock:
            self._norms[key] = norms
        return norms

    def prune_weights(self, target: str, method: str, params: dict, names=None,
                      merge=None) -> dict[str, torch.Tensor]:
        """Pruned tensors of ``target`` (a label, ``"base"`` or :data:`MERGE_TARGET` with
        ``merge`` the merge Recipe), ``names`` default: all aligned tensors; bit-identical
        to what ``wsviz prune`` writes for that model."""
        plan, get = self._prune_plan(target, self.prune_recipe(method, params), merge)
        return {n: plan.apply(n, get(n))[0] for n in (names or plan.names)}

    def evaluate_prune(self, target: str, method: str, params: dict,
                       merge=None) -> dict[str, float]:
        names = getattr(self.evaluator, "names", None)
        weights = self.prune_weights(target, method, params, names, merge=merge)
        with self._eval_lock:
            return self._evaluate_weights(weights)

    def prune_mask(self, layer: str, target: str, method: str, params: dict, merge=None):
        plan, get = self._prune_plan(target, self.prune_recipe(method, params), merge)
        if layer not in plan.names:
            raise WsvizError(f"no tensor {layer!r} in this model set")
        m = plan.mask(layer, get(layer))
        if m is None:
            return None
        m = m.reshape(m.shape[0], -1)
        sr = max(1, -(-m.shape[0] // MAX_IMAGE_SIDE))
        sc = max(1, -(-m.shape[1] // MAX_IMAGE_SIDE))
        return m[::sr, ::sc].cpu().numpy()

    def prune_recipe_text(self, method: str, params: dict, fmt: str = "yaml") -> str:
        """The prune recipe as YAML (``wsviz prune MODEL --recipe``) or JSON text."""
        r = self.prune_recipe(method, params)
        return r.to_yaml() if fmt == "yaml" else r.to_json()

    def write_pruned(self, target: str, method: str, params: dict, outdir: str, force: bool,
                     merge=None, progress: Progress | None = None) -> str:
        """Write the pruned ``target`` to the HF directory ``outdir`` inside
        :attr:`export_root` (same rules as :meth:`write_merged`), with ``wsviz_prune.yml``
        beside the weights (and, for the current merge, its ``wsviz_recipe.json`` with
        checkpoint paths): ``wsviz merge`` + ``wsviz prune --recipe`` reproduce it."""
        from wsviz.io.outputs import check_output, resolve_under
        from wsviz.recipes.prune import prune_to_dir, write_pruned

        recipe = self.prune_recipe(method, params)
        target = self._check_target(target, merge)
        out = resolve_under(self.export_root, str(outdir))
        check_output(out, self.input_files(), force=force,
                     hint="tick 'overwrite' to replace it or choose another name")

        def step(i, total):
            if progress:
                progress(0.1 + 0.9 * i / max(1, total), f"{i}/{total}")

        if progress:
            progress(0.05, "pruning")
        norms = self._wanda_norms(target, merge) if recipe.method == "wanda" else None
        try:
            if target == MERGE_TARGET:
                plan, get = self._prune_plan(target, recipe, merge)
                base_dir = self.ms.base.path
                base_dir = base_dir if base_dir is not None and Path(base_dir).is_dir() \
                    else None
                path, _ = write_pruned(
                    plan, get, out, force=force, copy_from=base_dir,
                    inputs=self.input_files(), device=self.device, progress=step,
                    model="current merge",
                    extra_files={"wsviz_recipe.json": self.recipe_json(merge)})
            else:
                src = self.ms.base if target == "base" else self.ms.models[target]
                path, _ = prune_to_dir(recipe, src, out, force=force, device=self.device,
                                       norms=norms, inputs=self.input_files(), progress=step)
        except OSError as exc:
            raise WsvizError(f"cannot write {out}: {exc.strerror or exc}") from None
        if progress:
            progress(1.0, "done")
        return str(path)

    # -- export -----------------------------------------------------------------------------
    def _paths(self) -> dict[str, str]:
        paths = {}
        if self.ms.base.path is not None:
            paths[self.base_label] = str(self.ms.base.path)
        for lab, src in self.ms.models.items():
            if src.path is not None:
                paths[lab] = str(src.path)
        return paths

    def _path_recipe(self, recipe):
        """Copy of ``recipe`` with model-set labels replaced by checkpoint paths."""
        paths = self._paths()
        r = copy.deepcopy(recipe)
        missing = [x for x in [r.base, *r.labels] if x and x not in paths]
        if missing:
            raise WsvizError(f"models {missing} were not loaded from disk, so they cannot be "
                             "named in an exported recipe")
        if r.base:
            r.base = paths[r.base]
        for m in r.models:
            m.model = paths[m.model]
        return r

    def recipe_yaml(self, recipe):
        try:
            text = recipe.to_mergekit_yaml(paths=self._paths())
        except RecipeError as exc:
            return None, str(exc)
        return text, None

    def recipe_json(self, recipe) -> str:
        try:
            return self._path_recipe(recipe).to_json()
        except WsvizError:
            return recipe.to_json()

    def input_files(self) -> list[Path]:
        """Every path the served model set reads (never an export target)."""
        return self.ms.files()

    def write_merged(self, recipe, outdir: str, force: bool, progress: Progress | None = None
                     ) -> str:
        """Merge ``recipe`` to the HF directory ``outdir``, which must lie inside
        :attr:`export_root` (a relative name is taken inside it) and may not be, contain or
        lie inside a served model (:func:`wsviz.io.outputs.check_output`)."""
        from wsviz.io.outputs import check_output, resolve_under
        from wsviz.recipes import merge_to_dir

        out = resolve_under(self.export_root, str(outdir))
        check_output(out, self.input_files(), force=force,
                     hint="tick 'overwrite' to replace it or choose another name")
        if progress:
            progress(0.05, "merging")
        disk_recipe = self._path_recipe(recipe)
        if "fisher" in recipe.spec.needs:  # the Fishers go beside the output, named by it
            disk_recipe.extra["fisher"] = self._save_fishers(recipe, out.with_name(
                out.name + "-fisher"))
        try:
            path = merge_to_dir(disk_recipe, out, force=force,
                                device=self.device, progress=False)
        except OSError as exc:
            raise WsvizError(f"cannot write {out}: {exc.strerror or exc}") from None
        if progress:
            progress(1.0, "done")
        return str(path)


    def _save_fishers(self, recipe, fdir: Path) -> dict[str, str]:
        """Write the Fishers of ``recipe``'s models to ``fdir`` (one safetensors each) and
        return ``{checkpoint path: Fisher file}`` for the disk recipe."""
        from safetensors.torch import save_file

        with self._eval_lock:
            self._ensure_fishers(recipe)
        fdir.mkdir(parents=True, exist_ok=True)
        paths = self._paths()
        out = {}
        for lab in recipe.labels:
            f = fdir / f"{lab}.safetensors"
            save_file({k: v.detach().cpu().contiguous()
                       for k, v in self.merger().fisher(lab).items()}, str(f))
            out[paths[lab]] = str(f)
        return out


def _choose_metric(evaluator, metric):
    """The :class:`MetricSpec` for ``metric`` (None / name / "name:min|max" / spec)."""
    from dataclasses import replace

    from wsviz.eval.metrics import MetricSpec, parse_metric, primary_metric

    if isinstance(metric, MetricSpec):
        return metric
    if not metric:
        return primary_metric(evaluator)
    name, higher = parse_metric(metric)
    spec = primary_metric(evaluator, name=name)
    if higher is not None and higher != spec.higher_is_better:
        spec = replace(spec, higher_is_better=higher)
    return spec


def tuner_state(recipe, methods: dict[str, MethodView], labels=()) -> dict | None:
    """The merge tuner's state (``method``, ``params``, ``model_params``, ``schedules``) that
    rebuilds ``recipe``, or None when the tuner's widgets cannot express it (a per-model
    schedule, a gradient list, a filter list without a catch-all value). Per-model numbers
    go to the models' own entries. ``labels``: every model of the
    workspace (those the recipe leaves out are unticked)."""
    view = methods.get(recipe.method)
    if view is None:
        return None
    widgets = {p.name for p in view.params if p.scope in ("global", "both")}
    per_model = {p.name for p in view.params if p.scope in ("model", "both")}
    params: dict = {}
    schedules: dict = {}

    def put(name, setting) -> bool:
        if isinstance(setting, (int, float, bool, str)):
            params[name] = setting
            return True
        if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting):
            *flt, last = setting
            if "filter" in last or any("filter" not in e for e in flt):
                return False
            if not all(isinstance(e["value"], (int, float)) for e in setting):
                return False
            params[name] = last["value"]
            schedules[name] = ", ".join(f"{e['filter']}: {e['value']:.6g}" for e in flt)
            return True
        return False

    for k, v in recipe.params.items():
        if k not in widgets or not put(k, v):
            return None
    model_params = {}
    shared: dict[str, object] = {}
    for m in recipe.models:
        mp = {"include": True}
        for k, v in m.params.items():
            if k in per_model and isinstance(v, (int, float)) and not isinstance(v, bool):
                mp[k] = v  # the model's own entry (an override of the global value)
            elif k == "weight":
                return None
            elif k in shared and shared[k] != v:
                return None
            else:
                shared[k] = v
        model_params[m.model] = mp
    for lab in labels:
        model_params.setdefault(lab, {"include": False})
    for k, v in shared.items():
        if k not in widgets or not put(k, v):
            return None
    return {"method": recipe.method, "params": params, "model_params": model_params,
            "schedules": schedules}


# -- constructors -------------------------------------------------------------------------------
def demo_workspace(device=None, metric=None) -> ApiWorkspace:
    """The demo zoo (base + task fine-tunes) with its per-task evaluator (``metric``:
    ``accuracy`` by default; ``loss`` / ``normalized_accuracy`` also reported)."""
    from wsviz.zoo import ensure_zoo

    zoo = ensure_zoo()
    ms = zoo.modelset()
    ev = zoo.evaluator()
    return ApiWorkspace(ms, ev, title="demo zoo (digits Llama)", device=device,
                        metric=metric, input_norms=partial(_zoo_input_norms, zoo))


def _zoo_input_norms(zoo, target: str, weights=None) -> dict:
    """Wanda calibration for the demo zoo: input-feature norms of every linear layer of the
    Llama ``target`` (a task or "base"; with ``weights``, the base architecture holding those
    tensors, e.g. the current merge) on the zoo's (tokenised) training images
    (:func:`wsviz.compute.masks.collect_input_norms` on :class:`wsviz.zoo.ZooClassifier`)."""
    from torch import nn

    from wsviz.compute.masks import collect_input_norms
    from wsviz.recipes.calibration import load_weights
    from wsviz.zoo import ZooClassifier, load_digits_split

    model = ZooClassifier.from_pretrained(zoo.base_dir if target == "base" or weights is not None
                                          else zoo.task_dirs[target])
    load_weights(model, weights)

    class Features(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.features(x)

    cfg = zoo.manifest["config"]
    x = load_digits_split(cfg["n_train"], cfg["split_seed"]).x_train
    norms = collect_input_norms(Features(model), x)
    return {f"{k.removeprefix('m.')}.weight": v for k, v in norms.items()}


def _hf_input_norms(paths: dict, calib: str, device, target: str, weights=None) -> dict:
    """Wanda calibration for a transformers model set: module input norms of ``target``
    (``paths[target]``; with ``weights``, the base's architecture holding them) on the
    ``calib`` file, exactly as ``wsviz prune --calib`` computes them
    (:func:`wsviz.recipes.prune.calibration_norms`)."""
    from wsviz.recipes.calibration import calibration_norms

    path = paths["base"] if weights is not None or target == "base" else paths[target]
    return calibration_norms(path, calib, device, weights=weights)


def load_evaluator(spec: str | None, modelset=None, device=None, **options):
    """An evaluator from ``--eval`` (see :func:`wsviz.eval.factory.make_evaluator`, which
    takes ``options``: tokenizer, lm_eval_include, lm_eval_limit, metric): ``zoo``,
    ``ppl:TEXT``, ``mc:FILE.jsonl``, ``lm-eval:TASKS`` or ``module:function``. None -> None."""
    if not spec:
        return None
    from wsviz.eval.factory import make_evaluator

    return make_evaluator(spec, modelset=modelset, device=device, **options)


def open_workspace(base, models, eval_spec: str | None = None, device=None,
                   labels=None, metric=None, calib: str | None = None,
                   **eval_options) -> ApiWorkspace:
    """A workspace over checkpoint paths ``base`` and ``models``; ``eval_spec`` and
    ``eval_options`` (tokenizer, lm_eval_include, lm_eval_limit) as for
    :func:`load_evaluator`; ``metric``: ``"NAME"`` or ``"NAME:min|max"`` to plot;
    ``calib``: Wanda calibration file (``.pt`` token ids or ``.txt``) for transformers
    models, as ``wsviz prune --calib`` takes it (enables the tuner's wanda method)."""
    from wsviz.io import ModelSet

    ms = ModelSet.open(str(base), [str(m) for m in models], labels=labels)
    evaluator = load_evaluator(eval_spec, ms, device=device, metric=metric, **eval_options)
    norms = None
    if calib is not None:
        if not Path(calib).is_file():
            raise WsvizError(f"--calib {calib}: no such file")
        paths = {"base": str(base), **dict(zip(ms.labels, map(str, models)))}
        norms = partial(_hf_input_norms, paths, str(calib), device)
    ws = ApiWorkspace(ms, evaluator, title=f"{Path(str(base)).name} + {len(ms.labels)}",
                      device=device, metric=metric, input_norms=norms)
    ws.calib = str(calib) if calib is not None else None
    return ws

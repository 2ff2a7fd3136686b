"""The workspace's merge job: the methods the tuner offers (:class:`MethodView` from the
method registry), recipes from the tuner's values, the shared in-memory merger, Fisher
inputs, and live evaluation of a recipe."""

from __future__ import annotations

import pandas as pd

from wsviz.errors import RecipeError
from wsviz.session.param_grid import slider_grid
from wsviz.session.views import MethodView, ParamView, Progress

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

def _param_view(p, method: str) -> ParamView:
    """A :class:`ParamView` from a :class:`wsviz.compute.merge.ParamSpec`."""
    start = UI_START.get(method, {})
    default = start.get(p.name, None if p.required else p.default)
    if p.name == "weight" and default is None:
        default = 1.0
    kind = {float: "float", int: "int", bool: "bool", str: "choice" if p.choices else "str"
            }.get(p.type, "str")
    lo = hi = step = None
    if kind in ("float", "int"):  # a slider on round numbers (see wsviz.session.param_grid)
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




class MergingMixin:
    """Merge methods of :class:`~wsviz.session.ApiWorkspace` (uses ``self.ms``,
    ``self.evaluator``, ``self.labels``, ``self._merger``, ``self._eval_lock``)."""

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


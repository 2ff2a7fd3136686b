"""The workspace's prune job: prune recipes from the tuner's values and prune plans on a
model of the set or on the current merge, run by :mod:`wsviz.recipes.prune` (the code
``wsviz prune`` runs), so the tuner shows what the CLI writes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from wsviz.errors import RecipeError, WsvizError
from wsviz.session.analysis import MAX_IMAGE_SIDE
from wsviz.session.views import MERGE_TARGET, MethodView, ParamView

InputNorms = Callable[..., dict]
"""``input_norms(target, weights=None) -> {tensor or module name: ||X||_2 per input
feature}`` for Wanda (``target``: a label, ``"base"``, or :data:`MERGE_TARGET` with the
merged ``weights``)."""


class PruningMixin:
    """Prune methods of :class:`~wsviz.session.ApiWorkspace` (uses ``self._input_norms``,
    ``self.calib``, ``self._norms``, ``self._merged_cache``, ``self._plan_cache``)."""

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


"""Validation of a merge method's parameter settings, shared by :class:`~wsviz.recipes.Recipe`
(``models:`` recipes) and :mod:`wsviz.recipes.slices` (``slices:`` recipes).

Each check raises :class:`~wsviz.errors.RecipeError` naming where the bad value sits
(``parameters``, ``model 'x'``, ``slices[0] source 'y'``) and the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from wsviz.errors import RecipeError
from wsviz.recipes.schedule import (
    check_setting_shape,
    evaluate_setting,
    resolve_params,
    setting_filters,
    setting_scalars,
)

__all__ = ["check_global_params", "check_resolved", "check_values"]


def check_values(p, setting, where: str) -> None:
    """Check every scalar of ``setting`` (a scalar, gradient list or filter list) against the
    :class:`~wsviz.compute.merge.ParamSpec` ``p`` (type, range, choices)."""
    check_setting_shape(setting, f"{where}: {p.name}")
    for s in setting_scalars(setting):
        try:
            p.check(evaluate_setting(s, "", 0.0, p.type))
        except ValueError as e:
            extra = " (density must be in (0, 1])" if p.name == "density" else ""
            raise RecipeError(f"{where}: {e}{extra}") from None


def check_global_params(spec, params: Mapping, where: str | None = None) -> None:
    """Names and values of the global ``params`` of method ``spec``; ``where`` names the
    slice holding them (None: the recipe's own ``parameters``)."""
    valid = spec.param_names
    for k, v in params.items():
        if k not in valid:
            at = f" in {where}" if where else ""
            raise RecipeError(f"unknown parameter {k!r}{at} for method {spec.name!r}; valid "
                              f"parameters: {', '.join(valid) or '(none)'}")
        check_values(spec.param(k), v, f"{where} parameters" if where else "parameters")


def check_resolved(spec, params: Mapping, model_params: Sequence[Mapping]) -> None:
    """Probe the values resolved over layer positions and filter names (global ``params``,
    one ``model_params`` mapping per merged model) for the normalize / zero-sum rule, the
    method's own check and DELLA's epsilon rule."""
    settings = list(params.values()) + [v for mp in model_params for v in mp.values()]
    names = {""}
    knots = {0.0, 1.0}
    for s in settings:
        names.update(setting_filters(s))
        if isinstance(s, (list, tuple)) and len(s) > 1:
            knots.update(i / (len(s) - 1) for i in range(len(s)))
    knots.update(i / 16 for i in range(17))
    names_list = sorted(names)
    consensus = spec.name in ("ties", "dare_ties", "breadcrumbs_ties", "della")
    for name in names_list:
        for t in sorted(knots):
            try:
                vals = resolve_params(spec, params, model_params, name, t)
            except RecipeError:
                continue  # a filter-only setting without a catch-all; checked at merge
            if ("normalize" in vals and vals["normalize"] and "weight" in vals
                    and not consensus):
                if abs(math.fsum(vals["weight"])) < 1e-8:
                    raise RecipeError(
                        f"{spec.name}: the weights sum to zero with normalize=true"
                        + (f" (tensor {name!r}, layer position {t:g})" if name else "")
                        + "; set normalize: false or change the weights")
            if spec.check is not None:
                try:
                    spec.check(vals)
                except ValueError as e:
                    where = f" (tensor {name!r}, layer position {t:g})" if name else ""
                    raise RecipeError(f"{spec.name}: {e}{where}") from None
            if "epsilon" in vals and "density" in vals:
                for d, e in zip(vals["density"], vals["epsilon"]):
                    if d < 1 and (d - e <= 0 or d + e >= 1):
                        raise RecipeError(
                            f"{spec.name}: density ± epsilon must lie in (0, 1); got "
                            f"density={d:g}, epsilon={e:g}")


def check_model_count(spec, n: int, noun: str = "model(s)", where: str = "") -> None:
    """``n`` inputs besides the base within ``spec``'s ``min_models`` / ``max_models``;
    :class:`RecipeError` naming the method, the bound and ``where`` (e.g. " in slice 2")."""
    if n < spec.min_models:
        raise RecipeError(f"method {spec.name!r} needs at least {spec.min_models} {noun} "
                          f"besides the base{where}; got {n}")
    if spec.max_models is not None and n > spec.max_models:
        raise RecipeError(f"method {spec.name!r} takes at most {spec.max_models} {noun} "
                          f"besides the base{where}; got {n}")

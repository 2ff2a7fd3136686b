"""Merge methods: one definition each, used by the CLI, the UI and export alike.

:data:`METHODS` maps a method name to its :class:`MethodSpec` (parameters with type,
default, range, scope and doc; base / model-count rules; ``in_mergekit``; the tensor
function ``fn``). Methods mergekit has use mergekit 0.1.5's semantics exactly.

>>> from wsviz.compute.merge import METHODS
>>> spec = METHODS["ties"]
>>> merged = spec.fn(base, models, {"weight": [1, 1], "density": [0.2, 0.2],
...                                 "normalize": True, "rescale": False, "lambda": 1.0})
"""

from __future__ import annotations

from wsviz.compute.merge import basic, task_arithmetic  # noqa: F401  (registers methods)
from wsviz.compute.merge.spec import METHODS, REQUIRED, MethodSpec, ParamSpec, register

__all__ = ["METHODS", "REQUIRED", "SEARCHES", "MethodSpec", "ParamSpec", "get_method",
           "register"]

# mergekit's other methods, listed after the task-arithmetic family
# methods mergekit lacks (pcb, tsv, fisher, compeft, magnitude_prune): torch and wsviz only,
# so a failing import is a bug to surface, never a reason to drop them
from wsviz.compute.merge import (  # noqa: E402,F401
    extra,  # noqa: E402,F401
    passthrough,
    selective,
    spherical,
)

#: names users reach for that are searches over an evaluator, not per-tensor merge methods
SEARCHES = {
    "greedy_soup": "it tries models best-first and keeps one only when the evaluator's held-out "
                   "metric improves; run wsviz.eval.greedy_soup(evaluator, merger) or "
                   "`wsviz soup`, which return the soup as a linear recipe",
}


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name``; RecipeError listing the valid names if none."""
    from wsviz.errors import RecipeError

    if name in SEARCHES:
        raise RecipeError(f"{name!r} is not a merge method but a search: {SEARCHES[name]}")
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(
            f"unknown merge method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        ) from None

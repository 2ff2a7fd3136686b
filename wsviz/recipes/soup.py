"""Greedy soup (Wortsman et al., 2022, "Model soups", Algorithm 1) on an
:class:`InMemoryMerger`: a search over an evaluator, whose result is a ``linear`` recipe."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from wsviz.errors import EvalError
from wsviz.recipes.recipe import Recipe


def _score(evaluator, merged) -> float:
    try:
        s = float(evaluator(merged))
    except EvalError:
        raise
    except Exception as e:  # an evaluator bug is the user's to see, with context
        raise EvalError(f"the evaluator failed: {e}") from e
    if math.isnan(s):
        raise EvalError("the evaluator returned NaN")
    return s


def soup_recipe(labels: Sequence[str]) -> Recipe:
    """The uniform average of ``labels`` as a ``linear`` recipe (weight 1 each; mergekit's
    linear normalises the weights)."""
    return Recipe("linear", models=[{"model": m, "params": {"weight": 1.0}} for m in labels])


def greedy_soup(merger, evaluator: Callable[[dict], float],
                labels: Sequence[str] | None = None, *, higher_is_better: bool = True,
                better: Callable[[float, float], bool] | None = None,
                ) -> tuple[Recipe, list[dict]]:
    """Greedy soup: score every model alone on the held-out data, sort them best first,
    start the soup with the best, then try the others in that order and keep each one only
    if the uniform average of the soup plus it scores strictly *better* than the best soup so
    far (the reference code's ``>``, or ``<`` for lower-is-better metrics).

    ``evaluator(tensors: dict[name, Tensor]) -> float`` receives the merger's tensors;
    ``higher_is_better`` (or a ``better(a, b)`` predicate such as
    :meth:`wsviz.eval.metrics.MetricSpec.better`) gives the metric's direction — perplexity
    or loss soups need ``higher_is_better=False``. Returns the ``linear`` recipe of the
    selected models (exportable to mergekit) and the history
    ``[{"model", "individual", "score", "accepted"}]`` in trial order (``score``: the soup
    with that model added; for the first, the model alone). Raises EvalError when the evaluator fails or
    returns NaN.
    """
    labels = list(labels or merger.labels)
    if not labels:
        raise EvalError("greedy soup needs at least one model")
    if better is None:
        def better(a: float, b: float) -> bool:
            return a > b if higher_is_better else a < b

    indiv = {lab: _score(evaluator, merger.merge(soup_recipe([lab]))) for lab in labels}
    order = list(labels)
    # best first, by the metric's direction (a stable insertion sort keeps ties in input order)
    ranked: list[str] = []
    for lab in order:
        pos = len(ranked)
        while pos > 0 and better(indiv[lab], indiv[ranked[pos - 1]]):
            pos -= 1
        ranked.insert(pos, lab)
    chosen = [ranked[0]]
    best = indiv[ranked[0]]
    history = [{"model": ranked[0], "individual": best, "score": best, "accepted": True}]
    for lab in ranked[1:]:
        s = _score(evaluator, merger.merge(soup_recipe(chosen + [lab])))
        ok = better(s, best)
        if ok:
            chosen.append(lab)
            best = s
        history.append({"model": lab, "individual": indiv[lab], "score": s, "accepted": ok})
    return soup_recipe(chosen), history

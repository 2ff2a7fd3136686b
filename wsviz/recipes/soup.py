"""Greedy soup (Wortsman et al., 2022) on an :class:`InMemoryMerger` with a user evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from wsviz.errors import EvalError
from wsviz.recipes.recipe import Recipe


def _score(evaluator, merged) -> float:
    try:
        s = float(evaluator(merged))
    except Exception as e:  # an evaluator bug is the user's to see, with context
        raise EvalError(f"the evaluator failed: {e}") from e
    if s != s:
        raise EvalError("the evaluator returned NaN")
    return s


def greedy_soup(merger, evaluator: Callable[[dict], float],
                labels: Sequence[str] | None = None, higher_is_better: bool = True
                ) -> tuple[Recipe, list[dict]]:
    """Greedy soup: rank the models by ``evaluator`` on their own weights (higher is better,
    or lower with ``higher_is_better=False``, e.g. a perplexity), start the soup with the
    best and add each next one if the uniform average's score does not get worse.

    ``evaluator(tensors: dict[name, Tensor]) -> float`` receives the merger's tensors.
    Returns a ``linear`` recipe with weight 1 per selected model (exportable to mergekit)
    and the history ``[{"model", "score", "accepted"}]``. Raises EvalError when the
    evaluator fails or returns NaN.
    """
    labels = list(labels or merger.labels)

    def soup(ms):
        return Recipe("linear", models=[{"model": m, "params": {"weight": 1.0}} for m in ms])

    sign = 1.0 if higher_is_better else -1.0
    indiv = {lab: _score(evaluator, merger.merge(soup([lab]))) for lab in labels}
    order = sorted(labels, key=lambda x: -sign * indiv[x])
    chosen = [order[0]]
    best = indiv[order[0]]
    history = [{"model": order[0], "score": best, "accepted": True, "individual": best}]
    for lab in order[1:]:
        s = _score(evaluator, merger.merge(soup(chosen + [lab])))
        ok = sign * s >= sign * best
        if ok:
            chosen.append(lab)
            best = s
        history.append({"model": lab, "score": s, "accepted": ok, "individual": indiv[lab]})
    return soup(chosen), history

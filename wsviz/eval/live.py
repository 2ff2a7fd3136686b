"""Recipe -> in-memory merge -> metrics: :func:`evaluate_recipe`, grid :func:`sweep` over one
or two recipe parameters, and :func:`greedy_soup` (all without disk I/O).

Parameter paths (for :func:`sweep` and :func:`set_param`):

- ``"lambda"`` — a global parameter of the method (``recipe.params["lambda"]``);
- ``"density"`` — a per-model parameter without a model: set for *every* model entry (a
  per-model value would otherwise override a global one, as in mergekit);
- ``"models.<label>.<param>"`` or ``"<label>.<param>"`` — one model's parameter;
- ``"params.<param>"`` — explicitly global.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from wsviz.errors import RecipeError
from wsviz.eval.base import Results, mean_metrics, to_frame

Progress = Callable[[float, str], None]


def _merge_names(evaluator, merger) -> list[str] | None:
    names = getattr(evaluator, "names", None)
    if names is None:
        return None
    cached = set(merger.names)
    missing = [n for n in names if n not in cached]
    if missing:
        from wsviz.errors import EvalError

        raise EvalError(f"the evaluator needs tensors the merger does not hold: {missing[:5]}; "
                        "create the InMemoryMerger with these names")
    return list(names)


def evaluate_recipe(recipe, evaluator, merger, on_partial=None, cancel=None) -> Results:
    """Merge ``recipe`` in memory with ``merger`` (:class:`wsviz.recipes.InMemoryMerger`)
    — only the tensors ``evaluator.names`` needs — and evaluate: ``{task: {metric: v}}``.
    With ``on_partial`` or ``cancel`` the evaluation is progressive
    (:func:`wsviz.eval.progressive.evaluate_progressive`: ``on_partial`` gets each
    :class:`~wsviz.eval.progressive.Partial`; the result is the same).

    Raises :class:`RecipeError` for an invalid recipe, :class:`EvalError` when evaluation
    fails, :class:`~wsviz.eval.progressive.EvalCancelled` when ``cancel`` is set."""
    weights = merger.merge(recipe, names=_merge_names(evaluator, merger))
    if on_partial is None and cancel is None:
        return evaluator.evaluate(weights)
    from wsviz.eval.progressive import evaluate_progressive

    return evaluate_progressive(evaluator, weights, cancel=cancel, on_partial=on_partial)


def set_param(recipe, path: str, value):
    """Copy of ``recipe`` with the parameter at ``path`` (see the module docstring) set to
    ``value``. Raises :class:`RecipeError` for an unknown model label or parameter."""
    r = copy.deepcopy(recipe)
    spec = r.spec

    def param(name):
        if name not in spec.param_names:
            raise RecipeError(f"sweep parameter {path!r}: method {spec.name!r} has no parameter "
                              f"{name!r}; valid: {', '.join(spec.param_names) or '(none)'}")
        return spec.param(name)

    parts = path.split(".")
    if parts[0] == "params" and len(parts) == 2:
        param(parts[1])
        r.params[parts[1]] = value
        return r
    if len(parts) == 1:
        p = param(parts[0])
        if p.scope == "model" and r.models:
            for m in r.models:
                m.params[p.name] = value
            r.params.pop(p.name, None)
        else:
            r.params[p.name] = value
        return r
    if parts[0] == "models":
        parts = parts[1:]
    label, name = ".".join(parts[:-1]), parts[-1]
    param(name)
    for m in r.models:
        if m.model == label:
            m.params[name] = value
            return r
    raise RecipeError(f"sweep parameter {path!r}: no model {label!r} in the recipe "
                      f"(models: {r.labels})")


def sweep(
    recipe, grid: Mapping[str, Sequence], evaluator, merger,
    progress: bool | Progress = True, mean: bool = True,
) -> pd.DataFrame:
    """Evaluate ``recipe`` over the grid of one or two parameters.

    ``grid``: ``{path: values}`` with 1 or 2 paths; every combination is merged in memory
    and evaluated. Returns the tidy table with one column per path, then ``task``,
    ``metric``, ``value`` (with ``mean``, extra ``task="mean"`` rows averaging the tasks).
    ``progress``: True for a tqdm bar, or a callable ``(fraction, message)``.
    Raises :class:`RecipeError` for a bad path / value, :class:`EvalError` from evaluation.
    """
    if not 1 <= len(grid) <= 2:
        raise RecipeError(f"sweep over 1 or 2 parameters, got {len(grid)}: {list(grid)}")
    paths = list(grid)
    values = [list(grid[p]) for p in paths]
    for p, v in zip(paths, values):
        if not v:
            raise RecipeError(f"sweep parameter {p!r} has no values")
    combos = list(itertools.product(*values))
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(combos), desc="sweep " + " x ".join(paths))
    frames = []
    try:
        for i, combo in enumerate(combos):
            r = recipe
            for p, v in zip(paths, combo):
                r = set_param(r, p, v)
            res = evaluate_recipe(r, evaluator, merger)
            frames.append(to_frame(res, mean=mean, **dict(zip(paths, combo))))
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress((i + 1) / len(combos), f"{i + 1}/{len(combos)}")
    finally:
        if bar is not None:
            bar.close()
    return pd.concat(frames, ignore_index=True)


def scorer(evaluator, metric: str | None = None, tasks: Sequence[str] | None = None,
           signed: bool = False) -> Callable[[Mapping], float]:
    """Adapter from an :class:`Evaluator` to a scalar score ``weights -> float``: the mean of
    ``metric`` (default: the evaluator's primary metric) over ``tasks`` (default all). With
    ``signed`` the score is negated for lower-is-better metrics, so larger is always better
    (:meth:`MetricSpec.score`). :class:`EvalError` if ``metric`` is not reported."""
    from wsviz.errors import EvalError
    from wsviz.eval.metrics import metric_specs, primary_metric

    def score(weights) -> float:
        res = evaluator.evaluate(weights)
        name = metric or primary_metric(evaluator, res).name
        mm = mean_metrics(res, list(tasks) if tasks is not None else None)
        if name not in mm:
            raise EvalError(f"the evaluator reports {sorted(mm)}, not {name!r}")
        spec = metric_specs(evaluator, res)[name]
        return spec.score(mm[name]) if signed else mm[name]

    return score


def greedy_soup(
    evaluator, merger, labels: Sequence[str] | None = None, metric: str | None = None,
    tasks: Sequence[str] | None = None,
) -> tuple[object, pd.DataFrame]:
    """Greedy soup (Wortsman et al. 2022) scored by ``evaluator``: the mean of ``metric``
    (default: the evaluator's primary metric, :func:`wsviz.eval.metrics.primary_metric`) over
    ``tasks`` (default all), in the metric's direction — a lower-is-better metric such as
    perplexity or loss is minimised. Delegates to :func:`wsviz.recipes.greedy_soup` (the merge
    side) with :func:`scorer` (the evaluation side).

    Returns ``(recipe, history)``: the ``linear`` recipe of the kept models and a table
    ``model, individual, score, accepted, metric``. Use held-out data in ``evaluator`` (e.g.
    ``ZooEvaluator(split="train")``, a validation text) so the soup is not tuned on the test
    set. Raises :class:`EvalError` when the evaluator fails or lacks ``metric``.
    """
    from wsviz.eval.metrics import primary_metric
    from wsviz.recipes import greedy_soup as _greedy_soup

    results = None
    if metric is None and not getattr(evaluator, "metrics", None):
        from wsviz.recipes.soup import soup_recipe  # undeclared metrics: look at one result

        labs = list(labels or merger.labels)
        results = evaluate_recipe(soup_recipe(labs[:1]), evaluator, merger)
    spec = primary_metric(evaluator, results, name=metric)
    recipe, history = _greedy_soup(merger, scorer(evaluator, spec.name, tasks), labels,
                                   better=spec.better)
    df = pd.DataFrame(history, columns=["model", "individual", "score", "accepted"])
    df["metric"] = spec.name
    return recipe, df

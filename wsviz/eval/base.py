"""The evaluator protocol and helpers on its results.

An evaluator turns weights into metrics::

    evaluate(weights: Mapping[str, Tensor]) -> dict[task, dict[metric, float]]

``weights`` are (merged) tensors by checkpoint name, usually only the tensors the evaluator
lists in ``names`` (``None`` = it takes whatever it gets and fills the rest from its own
model). Results are plain nested dicts of Python floats; :func:`to_frame` makes the tidy
table ``task, metric, value`` and :func:`mean_metrics` the across-task means.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import pandas as pd
import torch

from wsviz.errors import EvalError

Results = dict[str, dict[str, float]]
"""``{task: {metric: value}}``."""


@runtime_checkable
class Evaluator(Protocol):
    """Anything with ``tasks``, ``names`` and ``evaluate`` (see the module docstring).

    ``tasks``: the task names it reports (may be empty when only known after a call);
    ``names``: tensor names it needs (``None``: any subset, the rest from its own model);
    ``evaluate(weights)`` raises :class:`wsviz.errors.EvalError` when it cannot evaluate.

    Optional: ``metrics`` — the metrics it reports as :class:`wsviz.eval.metrics.MetricSpec`
    (name, higher-or-lower is better, unit), primary first; undeclared names are inferred by
    :func:`wsviz.eval.metrics.metric_specs`. ``references()`` — ``{"pretrained": {task: v},
    "individual": {task: v}}`` of its primary metric, when it can give them more cheaply
    than evaluating the base and each fine-tune through ``evaluate`` (which is what
    :mod:`wsviz.eval.references` does for every other evaluator).
    ``fisher(weights, label)`` — the diagonal Fisher of model ``label`` with ``weights`` on the
    evaluator's own data (``{name: Tensor}``); with it the dashboard offers the ``fisher`` merge method (the zoo and perplexity evaluators have one).
    ``evaluate_iter(weights, cancel=None)`` — partial results batch by batch
    (:mod:`wsviz.eval.progressive`); the last one must equal ``evaluate(weights)``.
    """

    tasks: list[str]
    names: list[str] | None

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results: ...


def as_number(value, where: str) -> float:
    """``value`` as a float if it is a real number (int, float, numpy scalar, one-element
    tensor / array); :class:`EvalError` naming ``where`` otherwise (bools and strings too)."""
    if isinstance(value, bool):
        raise EvalError(f"{where}: got a bool ({value!r}), expected a number")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.detach().reshape(()).cpu())
    try:
        import numpy as np

        if isinstance(value, np.ndarray | np.generic) and np.size(value) == 1 and \
                np.issubdtype(np.asarray(value).dtype, np.number) and \
                not np.iscomplexobj(value):
            return float(np.asarray(value).reshape(()))
    except ImportError:  # pragma: no cover
        pass
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    raise EvalError(f"{where}: got {type(value).__name__} {text}, expected a number")


def normalize_results(out, where: str, default_task: str = "user") -> Results:
    """Coerce an evaluator's return value to ``{task: {metric: float}}``.

    Accepted: a number (-> ``{default_task: {"score": x}}``), ``{metric: number}``
    (-> ``{default_task: {...}}``) or ``{task: {metric: number}}``. Anything else raises
    :class:`EvalError` naming ``where`` and what came back.
    """
    if isinstance(out, Mapping):
        if not out:
            raise EvalError(f"{where} returned an empty mapping; return {{metric: number}} "
                            "or {task: {metric: number}}")
        if all(isinstance(v, Mapping) for v in out.values()):
            res: Results = {}
            for task, metrics in out.items():
                if not metrics:
                    raise EvalError(f"{where}: task {task!r} has no metrics")
                res[str(task)] = {str(m): as_number(v, f"{where}: {task}/{m}")
                                  for m, v in metrics.items()}
            return res
        return {default_task: {str(m): as_number(v, f"{where}: metric {m!r}")
                               for m, v in out.items()}}
    try:
        return {default_task: {"score": as_number(out, f"{where} return value")}}
    except EvalError:
        text = repr(out)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise EvalError(f"{where} returned {type(out).__name__} {text}; expected a number, "
                        "{metric: number} or {task: {metric: number}}") from None


def mean_metrics(results: Results, tasks: list[str] | None = None) -> dict[str, float]:
    """Mean of every metric over ``tasks`` (default: all tasks that report it)."""
    tasks = list(results) if tasks is None else tasks
    sums: dict[str, list[float]] = {}
    for t in tasks:
        for m, v in results[t].items():
            sums.setdefault(m, []).append(v)
    return {m: math.fsum(vs) / len(vs) for m, vs in sums.items()}


def to_frame(results: Results, mean: bool = False, **labels) -> pd.DataFrame:
    """Tidy table with columns ``*labels, task, metric, value`` (one row per task x metric);
    with ``mean`` extra rows ``task="mean"`` hold :func:`mean_metrics`."""
    rows = [{**labels, "task": t, "metric": m, "value": v}
            for t, ms in results.items() for m, v in ms.items()]
    if mean:
        rows += [{**labels, "task": "mean", "metric": m, "value": v}
                 for m, v in mean_metrics(results).items()]
    return pd.DataFrame(rows, columns=[*labels, "task", "metric", "value"])

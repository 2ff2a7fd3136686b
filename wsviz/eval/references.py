"""Reference results for any evaluator: the pre-trained base and each fine-tune, evaluated
through the evaluator itself.

A merge is judged against two references: the **pre-trained** model (the base's weights) and
the **individual** fine-tunes. With one fine-tune per task — the usual multi-task merging
setting, e.g. the demo zoo — the individual reference of task ``t`` is the fine-tune trained for
``t``, found by name (:func:`match_tasks`). When the evaluator's tasks are not the fine-tunes'
labels (one perplexity text for three fine-tunes, lm-eval tasks over checkpoints named
``ft0``, ``ft1``, ...), there is no per-task "own" model, so every fine-tune becomes a reference
row of its own, ``"ft:<label>"``, evaluated on every task::

    rows = reference_rows(reference_results(ev, ms), "perplexity")
    # {"pretrained": {task: v}, "individual": {task: v}, "ft:<label>": {task: v}, ...}

``individual`` holds the matched tasks (possibly none); ``ft:<label>`` rows appear when some
task has no fine-tune of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from wsviz.eval.base import Results

BASE = "base"


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", str(name).lower())


def match_tasks(tasks: Sequence[str], labels: Sequence[str]) -> dict[str, str]:
    """``{task: label}`` for the tasks that have a fine-tune of their own: the label equal
    to the task name ignoring case and punctuation (``"arc-easy"`` ~ ``"ARC_easy"``), else the
    only label containing it (``"llama-ft-arc_easy"`` for ``arc_easy``). A label serves one
    task at most."""
    out: dict[str, str] = {}
    used: set[str] = set()
    nl = {lab: _norm(lab) for lab in labels}
    for t in tasks:
        nt = _norm(t)
        exact = [lab for lab in labels if nl[lab] == nt and lab not in used]
        if len(exact) == 1:
            out[t] = exact[0]
            used.add(exact[0])
    for t in tasks:
        if t in out or not _norm(t):
            continue
        nt = _norm(t)
        cands = [lab for lab in labels if nt in nl[lab] and lab not in used]
        if len(cands) == 1:
            out[t] = cands[0]
            used.add(cands[0])
    return out


def model_weights(modelset, label: str, names: Sequence[str] | None = None, device=None
                  ) -> dict:
    """``{name: Tensor}`` of one model of ``modelset`` (``"base"`` or a fine-tune label),
    only ``names`` (default: every aligned tensor)."""
    names = list(names) if names is not None else list(modelset.names)
    if label == BASE:
        return {n: modelset.get_base(n, device=device) for n in names}
    return {n: modelset.get(label, n, device=device) for n in names}


def reference_results(evaluator, modelset, names: Sequence[str] | None = None, device=None,
                      evaluate: Callable[[Mapping], Results] | None = None,
                      labels: Sequence[str] | None = None) -> dict[str, Results]:
    """``{"base": results, label: results, ...}``: the evaluator on the base's weights and on
    each fine-tune's (``labels``, default all). ``names``: tensors to pass (default the
    evaluator's ``names``, else all); ``evaluate``: how to call it (default
    ``evaluator.evaluate``). One evaluation per model; errors propagate
    (:class:`wsviz.errors.EvalError`)."""
    if names is None:
        names = getattr(evaluator, "names", None)
    evaluate = evaluate or evaluator.evaluate
    out = {BASE: evaluate(model_weights(modelset, BASE, names, device))}
    for lab in labels if labels is not None else modelset.labels:
        out[lab] = evaluate(model_weights(modelset, lab, names, device))
    return out


def metric_value(metrics, metric: str) -> float | None:
    """``metrics[metric]`` of a ``{metric: v}`` mapping (None when that task does not report
    it), or ``metrics`` itself when it is a number."""
    if isinstance(metrics, Mapping):
        return float(metrics[metric]) if metric in metrics else None
    return float(metrics)


def metric_of(results: Results, metric: str) -> dict[str, float]:
    """``{task: value of metric}`` over the tasks of ``results`` that report ``metric``;
    :class:`EvalError` naming the metrics reported when none does."""
    out = {}
    for task, ms in results.items():
        v = metric_value(ms, metric)
        if v is not None:
            out[task] = v
    if results and not out:
        from wsviz.errors import EvalError

        reported = sorted({m for ms in results.values() if isinstance(ms, Mapping) for m in ms})
        raise EvalError(f"the evaluator reports {reported}, not {metric!r}; choose one of them "
                        "with --metric NAME")
    return out


def reference_rows(per_model: Mapping[str, Results], metric: str,
                   tasks: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Reference rows (see the module docstring) of ``metric`` from :func:`reference_results`'
    output. ``tasks``: default the tasks the base reports."""
    base = per_model.get(BASE, {})
    tasks = list(tasks) if tasks is not None else list(base)
    labels = [lab for lab in per_model if lab != BASE]
    rows: dict[str, dict[str, float]] = {"pretrained": metric_of(
        {t: base[t] for t in tasks if t in base}, metric)}
    matched = match_tasks(tasks, labels)
    rows["individual"] = metric_of({t: per_model[lab][t] for t, lab in matched.items()
                                    if t in per_model[lab]}, metric)
    if len(matched) < len(tasks):
        for lab in labels:
            rows[f"ft:{lab}"] = metric_of({t: per_model[lab][t] for t in tasks
                                           if t in per_model[lab]}, metric)
    return rows

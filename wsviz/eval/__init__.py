"""Live evaluation: the :class:`Evaluator` protocol and built-ins.

- :class:`PerplexityEvaluator` — causal-LM perplexity of an HF model on a text file;
- :class:`MultipleChoiceEvaluator` — log-likelihood multiple-choice accuracy on a JSONL file;
- :class:`LMEvalEvaluator` — lm-evaluation-harness tasks (the ``lm-eval`` extra);
- :class:`CallableEvaluator` — a user function given as ``"module:function"``;
- :func:`make_evaluator` — any of these from a ``--eval`` spec string, or an evaluator a
  higher package registered under a bare name (:func:`register_evaluator`; the demo zoo's
  ``zoo`` lives in :mod:`wsviz.zoo.evaluator` and registers itself, ``wsviz.eval`` never
  imports ``wsviz.zoo``);
- :func:`reference_results` / :func:`reference_rows` — the base and every fine-tune through
  the same evaluator (pre-trained / individual references);
- :func:`evaluate_recipe`, :func:`sweep`, :func:`greedy_soup` — Recipe -> in-memory merge ->
  metrics, no disk I/O;
- :func:`evaluate_iter` / :func:`evaluate_progressive` — partial results batch by batch
  (running estimate ± standard error, fraction done, cancellable between batches; the last
  one equals ``evaluate``), see :mod:`wsviz.eval.progressive`.

Results are ``{task: {metric: float}}``; :func:`to_frame` gives the tidy table. What each
metric means (direction, unit) comes from :mod:`wsviz.eval.metrics`.
"""

from __future__ import annotations

from wsviz.eval.base import Evaluator, Results, mean_metrics, normalize_results, to_frame
from wsviz.eval.metrics import MetricSpec, declare_metric, metric_specs, primary_metric
from wsviz.eval.registry import register_evaluator, registered_evaluators

__all__ = [
    "CallableEvaluator", "Evaluator", "LMEvalEvaluator", "MetricSpec",
    "MultipleChoiceEvaluator", "PerplexityEvaluator", "Results", "register_evaluator",
    "registered_evaluators",
    "declare_metric", "metric_specs", "primary_metric", "reference_results", "reference_rows",
    "evaluate_recipe", "greedy_soup", "make_evaluator", "mean_metrics", "normalize_results",
    "scorer", "set_param", "sweep", "to_frame",
    "EvalCancelled", "Partial", "evaluate_iter", "evaluate_progressive",
]


def __getattr__(name):  # lazy: keep `import wsviz.eval` cheap
    if name == "PerplexityEvaluator":
        from wsviz.eval.perplexity import PerplexityEvaluator

        return PerplexityEvaluator
    if name == "MultipleChoiceEvaluator":
        from wsviz.eval.multiple_choice import MultipleChoiceEvaluator

        return MultipleChoiceEvaluator
    if name == "LMEvalEvaluator":
        from wsviz.eval.lm_harness import LMEvalEvaluator

        return LMEvalEvaluator
    if name in ("reference_results", "reference_rows"):
        from wsviz.eval import references

        return getattr(references, name)
    if name == "CallableEvaluator":
        from wsviz.eval.user import CallableEvaluator

        return CallableEvaluator
    if name == "make_evaluator":
        from wsviz.eval.factory import make_evaluator

        return make_evaluator
    if name in ("EvalCancelled", "Partial", "evaluate_iter", "evaluate_progressive"):
        from wsviz.eval import progressive

        return getattr(progressive, name)
    if name in ("evaluate_recipe", "sweep", "greedy_soup", "set_param", "scorer"):
        import importlib

        return getattr(importlib.import_module("wsviz.eval.live"), name)
    raise AttributeError(f"module 'wsviz.eval' has no attribute {name!r}")

"""Live evaluation: the :class:`Evaluator` protocol and built-ins.

- :class:`ZooEvaluator` — per-task accuracy / loss / normalized accuracy of the demo zoo;
- :class:`PerplexityEvaluator` — causal-LM perplexity of an HF model on a text file;
- :class:`CallableEvaluator` — a user function given as ``"module:function"``;
- :func:`make_evaluator` — any of these from a ``--eval`` spec string;
- :func:`evaluate_recipe`, :func:`sweep`, :func:`greedy_soup` — Recipe -> in-memory merge ->
  metrics, no disk I/O.

Results are ``{task: {metric: float}}``; :func:`to_frame` gives the tidy table.
"""

from __future__ import annotations

from wsviz.eval.base import Evaluator, Results, mean_metrics, normalize_results, to_frame
from wsviz.eval.metrics import MetricSpec, metric_specs, primary_metric

__all__ = [
    "CallableEvaluator", "Evaluator", "MetricSpec", "PerplexityEvaluator", "Results",
    "ZooEvaluator", "metric_specs", "primary_metric",
    "evaluate_recipe", "greedy_soup", "make_evaluator", "mean_metrics", "normalize_results",
    "scorer", "set_param", "sweep", "to_frame",
]


def __getattr__(name):  # lazy: keep `import wsviz.eval` cheap
    if name == "ZooEvaluator":
        from wsviz.eval.zoo import ZooEvaluator

        return ZooEvaluator
    if name == "PerplexityEvaluator":
        from wsviz.eval.perplexity import PerplexityEvaluator

        return PerplexityEvaluator
    if name == "CallableEvaluator":
        from wsviz.eval.user import CallableEvaluator

        return CallableEvaluator
    if name == "make_evaluator":
        from wsviz.eval.factory import make_evaluator

        return make_evaluator
    if name in ("evaluate_recipe", "sweep", "greedy_soup", "set_param", "scorer"):
        import importlib

        return getattr(importlib.import_module("wsviz.eval.live"), name)
    raise AttributeError(f"module 'wsviz.eval' has no attribute {name!r}")

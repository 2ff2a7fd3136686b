"""Recipe search: per-task Pareto fronts found automatically, scaled out on Dask.

>>> from wsviz.search import SearchSpace, Search, Objectives, InlineBackend, DaskBackend
>>> space = SearchSpace.load("space.yml", recipe, names=merger.names)
>>> with DaskBackend(EvalContext.for_zoo(zoo), n_workers=2) as backend:
...     result = Search(space, backend, storage="search.db", sampler="tpe").run(60)
>>> result.pareto()                  # non-dominated trials, per-task metrics, recipes

- :mod:`~wsviz.search.space` — which recipe parameters vary (global, per layer group, per
  model) and how a point becomes a :class:`~wsviz.recipes.Recipe` (mergekit filters);
- :mod:`~wsviz.search.objectives` — per-task metrics with the evaluator's directions,
  sparsity / size, the "no task below pre-trained" constraint;
- :mod:`~wsviz.search.engine` — the optuna ask/tell loop (TPE, NSGA-II, CMA-ES, GP, random,
  MAP) over a persistent study;
- :mod:`~wsviz.search.surrogate` — MAP's quadratic surrogates and predicted fronts;
- :mod:`~wsviz.search.context` — in-process and Dask backends, the picklable evaluation
  context workers open once;
- :mod:`~wsviz.search.storage` — SQLite / journal studies, locking, crash recovery.

Uses ``optuna`` (samplers, studies) and ``distributed`` (Dask), both wsviz dependencies.
"""

from __future__ import annotations

from wsviz.eval.pareto import dominates, pareto_mask
from wsviz.search.context import DaskBackend, EvalContext, InlineBackend
from wsviz.search.engine import SAMPLERS, Search, SearchResult, load_result, make_sampler
from wsviz.search.objectives import Objectives
from wsviz.search.space import Dimension, SearchSpace, SpaceError, tensor_filters
from wsviz.search.surrogate import Surrogate

__all__ = [
    "DaskBackend", "Dimension", "EvalContext", "InlineBackend", "Objectives", "SAMPLERS",
    "Search", "SearchResult", "SearchSpace", "SpaceError", "Surrogate", "dominates",
    "load_result", "make_sampler", "pareto_mask", "tensor_filters",
]

"""What a search optimises: the evaluator's per-task metrics (direction from the evaluator's
:class:`~wsviz.eval.metrics.MetricSpec`), optionally reduced to their mean / worst, plus
optional sparsity and size of the merged task vector, and constraints.

Written under ``objectives:`` / ``constraints:`` on the command line and in Python as::

    Objectives(metric="accuracy", over="tasks", sparsity=False, size=False,
               min_pretrained=True, tolerance=0.0)

``over``: ``"tasks"`` — one objective per task (the per-task Pareto front); ``"mean"`` —
the mean over tasks (one objective: any sampler, CMA-ES included); ``"mean_worst"`` — the
mean and the worst task. ``sparsity``: fraction of merged task-vector entries that are
exactly zero (maximise); ``size``: number of non-zero merged task-vector entries
(minimise). ``min_pretrained``: no task may be worse than the pre-trained base model's
score by more than ``tolerance`` (in the metric's units); optuna treats a constraint value
``<= 0`` as satisfied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wsviz.errors import WsvizError
from wsviz.eval.metrics import MetricSpec, infer_spec

OVER = ("tasks", "mean", "mean_worst")
SPARSITY = MetricSpec("sparsity", True, "fraction", "fraction of zero task-vector entries",
                      0.0, 1.0)
SIZE = MetricSpec("size", False, "params", "non-zero task-vector entries", 0.0, None)


@dataclass(frozen=True)
class Objective:
    """One optimised value: ``name`` (``"accuracy:digit"``, ``"accuracy:mean"``,
    ``"sparsity"``), its :class:`MetricSpec` and where it comes from (``task`` for a per-task
    metric, ``"*mean"``/``"*worst"`` for reductions, None for sparsity/size)."""

    name: str
    spec: MetricSpec
    task: str | None

    @property
    def direction(self) -> str:
        return self.spec.direction


@dataclass(frozen=True)
class Objectives:
    """See the module docstring. ``metric`` None = the evaluator's primary metric; ``tasks``
    None = every task the evaluator reports."""

    metric: str | None = None
    over: str = "tasks"
    tasks: tuple[str, ...] | None = None
    sparsity: bool = False
    size: bool = False
    min_pretrained: bool = False
    tolerance: float = 0.0

    @classmethod
    def from_dict(cls, obj: Mapping | None, cons: Mapping | None = None) -> Objectives:
        """From the ``objectives:`` and ``constraints:`` mappings of a space file."""
        obj = dict(obj or {})
        cons = dict(cons or {})
        bad = set(obj) - {"metric", "over", "tasks", "sparsity", "size"}
        if bad:
            raise WsvizError(f"objectives: unknown key(s) {sorted(bad)}; valid: metric, over, "
                             "tasks, sparsity, size")
        bad = set(cons) - {"min_pretrained", "tolerance"}
        if bad:
            raise WsvizError(f"constraints: unknown key(s) {sorted(bad)}; valid: "
                             "min_pretrained, tolerance")
        over = obj.get("over", "tasks")
        if over not in OVER:
            raise WsvizError(f"objectives.over must be one of {list(OVER)}, got {over!r}")
        tasks = obj.get("tasks")
        if tasks is not None and (not isinstance(tasks, (list, tuple)) or not tasks):
            raise WsvizError("objectives.tasks must be a non-empty list of task names")
        tol = cons.get("tolerance", 0.0)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
            raise WsvizError(f"constraints.tolerance must be a number >= 0, got {tol!r}")
        return cls(metric=obj.get("metric"), over=over,
                   tasks=tuple(str(t) for t in tasks) if tasks else None,
                   sparsity=bool(obj.get("sparsity", False)), size=bool(obj.get("size", False)),
                   min_pretrained=bool(cons.get("min_pretrained", False)),
                   tolerance=float(tol))

    def to_dict(self) -> dict:
        return {"metric": self.metric, "over": self.over,
                "tasks": list(self.tasks) if self.tasks else None,
                "sparsity": self.sparsity, "size": self.size,
                "min_pretrained": self.min_pretrained, "tolerance": self.tolerance}

    @property
    def needs_size(self) -> bool:
        return self.sparsity or self.size

    def resolve(self, specs: Mapping[str, MetricSpec], tasks: Sequence[str]) -> ResolvedObjectives:
        """Bind to what the evaluator reports: ``specs`` (:func:`~wsviz.eval.metrics.
        metric_specs`, primary first) and its ``tasks``. :class:`WsvizError` for a metric or
        task it does not report."""
        if self.metric is not None:
            spec = specs.get(self.metric)
            if spec is None:
                raise WsvizError(f"objectives.metric {self.metric!r}: the evaluator reports "
                                 f"{', '.join(specs) or 'no metric'}")
        else:
            if not specs:
                raise WsvizError("the evaluator reports no metric to optimise")
            spec = next(iter(specs.values()))
        tasks = list(tasks)
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in tasks]
            if unknown:
                raise WsvizError(f"objectives.tasks: unknown task(s) {unknown}; the evaluator "
                                 f"reports {tasks}")
            tasks = list(self.tasks)
        if not tasks:
            raise WsvizError("the evaluator reports no task")
        objs: list[Objective] = []
        if self.over == "tasks":
            objs += [Objective(f"{spec.name}:{t}", spec, t) for t in tasks]
        else:
            objs.append(Objective(f"{spec.name}:mean", spec, "*mean"))
            if self.over == "mean_worst":
                objs.append(Objective(f"{spec.name}:worst", spec, "*worst"))
        if self.sparsity:
            objs.append(Objective("sparsity", SPARSITY, None))
        if self.size:
            objs.append(Objective("size", SIZE, None))
        return ResolvedObjectives(self, spec, tasks, objs)


@dataclass(frozen=True)
class ResolvedObjectives:
    """:class:`Objectives` bound to an evaluator: the ``metric`` spec, the ``tasks`` and the
    ordered list of :class:`Objective` s (what optuna's ``directions`` follow)."""

    config: Objectives
    metric: MetricSpec
    tasks: list[str]
    objectives: list[Objective]

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def task_values(self, results: Mapping) -> dict[str, float]:
        """``{task: value of the metric}`` from ``{task: {metric: value}}`` results
        (:class:`WsvizError` when a task or the metric is missing)."""
        out = {}
        for t in self.tasks:
            ms = results.get(t)
            if not isinstance(ms, Mapping) or self.metric.name not in ms:
                raise WsvizError(f"the evaluator's result lacks {self.metric.name!r} for task "
                                 f"{t!r}")
            out[t] = float(ms[self.metric.name])
        return out

    def values(self, results: Mapping, sparsity: float | None = None,
               size: float | None = None) -> list[float]:
        """The objective values (in :attr:`names` order) of one evaluation."""
        tv = self.task_values(results)
        out = []
        for o in self.objectives:
            if o.task == "*mean":
                out.append(math.fsum(tv.values()) / len(tv))
            elif o.task == "*worst":
                out.append(self.metric.worst(tv.values()))
            elif o.task is not None:
                out.append(tv[o.task])
            elif o.name == "sparsity":
                out.append(float(sparsity))
            else:
                out.append(float(size))
        return out

    def constraints(self, results: Mapping, pretrained: Mapping | None) -> list[float]:
        """One value per task, ``<= 0`` when the task is no worse than the pre-trained
        score (within the tolerance); [] without the constraint."""
        if not self.config.min_pretrained or not pretrained:
            return []
        tv = self.task_values(results)
        pre = self.task_values(pretrained)
        tol = self.config.tolerance
        return [self.metric.score(pre[t]) - self.metric.score(tv[t]) - tol for t in self.tasks]


def metric_spec_of(name: str, specs: Mapping[str, MetricSpec]) -> MetricSpec:
    """``specs[name]`` or the inferred spec."""
    return specs.get(name) or infer_spec(name)

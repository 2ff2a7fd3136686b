"""The :class:`~wsviz.session.base.Workspace` on top of wsviz's public API, composed of one
mixin per job: analysis (:mod:`wsviz.session.analysis`), merging
(:mod:`wsviz.session.merging`), evaluation (:mod:`wsviz.session.evaluation`), pruning
(:mod:`wsviz.session.pruning`), export (:mod:`wsviz.session.export`) and search
(:mod:`wsviz.session.search`). This module holds the shared state they use.

Thread safety: a workspace is shared by every browser session of a server; lazily built
members are created under a lock and the merger / evaluator are used under ``_eval_lock``
(torch already runs one merge on all cores, so serialising loses nothing).
"""

from __future__ import annotations

import threading

from wsviz.session.analysis import AnalysisMixin
from wsviz.session.base import Workspace
from wsviz.session.evaluation import EvaluationMixin, _choose_metric
from wsviz.session.export import ExportMixin
from wsviz.session.merging import MergingMixin
from wsviz.session.pruning import InputNorms, PruningMixin
from wsviz.session.search import SearchMixin


class ApiWorkspace(AnalysisMixin, MergingMixin, EvaluationMixin, PruningMixin, ExportMixin,
                   SearchMixin, Workspace):
    """A model set (base + fine-tunes) with an optional evaluator.

    ``modelset``: :class:`wsviz.io.ModelSet`; ``evaluator``: an object with ``evaluate
    (weights) -> {task: {metric: value}}`` (and optionally ``names``, ``tasks``,
    ``references()``, ``metrics``), or None (no live metrics); ``metric``: which metric the
    tuners plot, ``"NAME"`` or ``"NAME:min|max"`` or a :class:`~wsviz.eval.MetricSpec`
    (default: the evaluator's primary metric, see :func:`wsviz.eval.metrics.primary_metric`;
    for an evaluator that declares none, the first metric it reports).
    """

    def __init__(self, modelset, evaluator=None, title: str = "model set", device=None,
                 metric=None, base_label: str = "base",
                 input_norms: InputNorms | None = None):
        from wsviz.eval.metrics import metric_specs

        self.ms = modelset
        self.evaluator = evaluator
        self.title = title
        self.device = device
        self.metric_spec = _choose_metric(evaluator, metric)
        self.metric = self.metric_spec.name
        # nothing declared, nothing chosen: follow the first metric the evaluator reports
        self._metric_auto = metric is None and not metric_specs(evaluator)
        self.base_label = base_label
        self.labels = list(modelset.labels)
        self.tasks = list(getattr(evaluator, "tasks", None) or [])
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()
        self._refs_lock = threading.Lock()
        self._analysis = None
        self._run = None
        self._merger = None
        self._refs = None
        self.reference_results: dict[str, dict] | None = None
        self._taskmaps: dict = {}
        self._groups = None
        self._input_norms = input_norms
        #: Wanda calibration file (``--calib``), written into exported wanda prune recipes
        self.calib: str | None = None
        self._norms: dict = {}
        self._merged_cache = None
        self._plan_cache = None

    @property
    def can_evaluate(self) -> bool:
        return self.evaluator is not None


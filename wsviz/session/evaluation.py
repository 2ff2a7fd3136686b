"""The workspace's evaluation job: run the evaluator on merged weights (one clear
EvalError on failure), pick the plotted metric, and the pre-trained / individual reference
rows."""

from __future__ import annotations

from wsviz.errors import EvalError, WsvizError


class EvaluationMixin:
    """Evaluation methods of :class:`~wsviz.session.ApiWorkspace` (uses ``self.evaluator``,
    ``self.metric``, ``self._metric_auto``, ``self._refs``, the locks)."""

    def _metric_of(self, results: dict) -> dict[str, float]:
        from wsviz.eval.references import metric_of

        return metric_of(results, self.metric)

    def _results(self, weights) -> dict:
        """The evaluator's full ``{task: {metric: v}}`` for ``weights`` (EvalError on
        failure); the first results fix :attr:`tasks` and, for an evaluator that declares
        no metrics, :attr:`metric_spec`."""
        if self.evaluator is None:
            raise EvalError("no evaluator: start with --eval SPEC (zoo, ppl:text.txt, "
                            "mc:questions.jsonl, lm-eval:TASK, module:function) or --demo "
                            "to see live metrics")
        try:
            res = self.evaluator.evaluate(weights)
        except WsvizError:
            raise
        except Exception as exc:  # noqa: BLE001 - user evaluators may raise anything
            raise EvalError(f"the evaluator raised {type(exc).__name__}: {exc}") from None
        if not self.tasks:
            self.tasks = list(res)
        if self._metric_auto:
            from wsviz.eval.metrics import primary_metric

            self.metric_spec = primary_metric(self.evaluator, res)
            self.metric = self.metric_spec.name
            self._metric_auto = False
        return res

    def _evaluate_weights(self, weights) -> dict[str, float]:
        return self._metric_of(self._results(weights))

    def references(self) -> dict[str, dict[str, float]]:
        """Reference rows of :attr:`metric` (computed once, see
        :mod:`wsviz.eval.references`): ``pretrained`` (the base's weights), ``individual``
        (each task's own fine-tune, matched by name) and, when some task has no fine-tune of
        its own, one ``ft:<label>`` row per fine-tune. The evaluator's own ``references()``
        is used when it has one and :attr:`metric` is its primary metric; otherwise the base
        and every fine-tune are evaluated through the evaluator (one evaluation each)."""
        with self._refs_lock:
            if self._refs is None:
                self._refs = self._compute_references()
            return self._refs

    def _compute_references(self) -> dict[str, dict[str, float]]:
        from wsviz.eval.metrics import primary_metric
        from wsviz.eval.references import metric_of, reference_results, reference_rows

        if self.evaluator is None:
            return {"pretrained": {}, "individual": {}}
        own = getattr(self.evaluator, "references", None)
        if callable(own) and self.metric == primary_metric(self.evaluator).name:
            with self._eval_lock:
                r = own()
            return {k: metric_of(rows, self.metric) for k, rows in r.items()}

        def evaluate(weights):
            with self._eval_lock:
                return self._results(weights)

        names = getattr(self.evaluator, "names", None)
        per_model = reference_results(self.evaluator, self.ms, names=names, device=self.device,
                                      evaluate=evaluate)
        self.reference_results = {("pretrained" if k == "base" else k): v
                                  for k, v in per_model.items()}
        return reference_rows(per_model, self.metric, self.tasks or None)



def _choose_metric(evaluator, metric):
    """The :class:`MetricSpec` for ``metric`` (None / name / "name:min|max" / spec)."""
    from dataclasses import replace

    from wsviz.eval.metrics import MetricSpec, parse_metric, primary_metric

    if isinstance(metric, MetricSpec):
        return metric
    if not metric:
        return primary_metric(evaluator)
    name, higher = parse_metric(metric)
    spec = primary_metric(evaluator, name=name)
    if higher is not None and higher != spec.higher_is_better:
        spec = replace(spec, higher_is_better=higher)
    return spec



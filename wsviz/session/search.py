"""The workspace's search job: an in-process :class:`wsviz.search.Search` around a recipe,
its trials returned with the recipe and the merge tuner's state that shows it."""

from __future__ import annotations

import pandas as pd

from wsviz.errors import EvalError, WsvizError
from wsviz.session.tuner import tuner_state


class SearchMixin:
    """Search methods of :class:`~wsviz.session.ApiWorkspace`."""

    # -- search -----------------------------------------------------------------------------
    @property
    def can_search(self) -> bool:
        if self.evaluator is None:
            return False
        try:
            import optuna  # noqa: F401
        except ImportError:
            return False
        return True

    def search(self, recipe, space: dict, n_trials: int, sampler: str = "tpe",
               on_start=None, on_trial=None, should_stop=None, storage=None):
        """In-process :class:`wsviz.search.Search` on this workspace's merger and evaluator
        (serialised with live evaluations by ``_eval_lock``); see the base class."""
        if self.evaluator is None:
            raise EvalError("no evaluator: a search needs live metrics (--eval or --demo)")
        try:
            from wsviz.search import InlineBackend, Search, SearchSpace
        except ImportError:
            raise WsvizError("recipe search needs optuna: pip install optuna cmaes distributed") \
                from None
        from wsviz.recipes import Recipe

        backend = InlineBackend(self.merger(), self.evaluator, lock=self._eval_lock)
        probe = backend.probe()
        sp = SearchSpace.from_dict(space, recipe, probe["names"], probe["all_names"])
        search = Search(sp, backend, storage=storage, sampler=sampler, probe=probe,
                        study_name="wsviz-ui")
        methods = self.merge_methods()

        def row(r: dict) -> dict:
            r = dict(r)
            rd = r.get("recipe")
            r["recipe"] = Recipe.from_dict(rd) if rd else None
            r["tuner_state"] = tuner_state(r["recipe"], methods, self.labels) if rd else None
            return r

        try:
            search.open()
            if on_start is not None:
                ro = search.resolved
                on_start({"objectives": ro.names, "directions": ro.directions,
                          "tasks": ro.tasks, "metric": ro.metric,
                          "dims": sp.names, "sampler": sampler})
            res = search.run(n_trials, on_trial=(lambda r: on_trial(row(r))) if on_trial
                             else None, should_stop=should_stop)
        finally:
            search.close()
        df = res.frame()
        if len(df):
            df = pd.DataFrame([row(r) for r in df.to_dict("records")])
        return df


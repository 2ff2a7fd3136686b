"""The search loop: optuna ask → recipe → backend (in-process or Dask) → tell.

>>> search = Search(space, backend, Objectives(over="tasks"), storage="s.db", sampler="tpe")
>>> result = search.run(n_trials=60)          # resumes if s.db already holds the study
>>> result.frame()                             # one row per trial; pareto / feasible columns
>>> result.recipe(result.best().number)        # the Recipe of a trial

Samplers (optuna's): ``tpe`` (multi-objective TPE), ``nsga2``, ``cmaes`` (one objective:
use ``over: mean``; CMA-ES over the per-layer-group coefficients is evolutionary merging),
``gp`` (Gaussian-process Bayesian optimisation), ``random``, and ``map`` (quadratic
surrogates fitted on a Latin-hypercube design, then the predicted Pareto points are
evaluated to confirm; see :mod:`wsviz.search.surrogate`).

The loop keeps one trial in flight per backend slot (Dask worker thread) and tells each
result as it arrives, so samplers that learn from history (TPE's constant liar, NSGA-II's
generations) see every finished trial. Every completed trial stores its recipe, per-task
results, time and worker as trial user attributes; the study stores the space, objectives
and the pre-trained scores, so a resumed or inspected study needs nothing else.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wsviz.errors import WsvizError
from wsviz.eval.pareto import pareto_mask
from wsviz.search.objectives import Objectives, ResolvedObjectives
from wsviz.search.space import SearchSpace
from wsviz.search.storage import open_storage, recover_stale

SAMPLERS = ("tpe", "nsga2", "cmaes", "gp", "random", "map")
MAX_CONSECUTIVE_FAILURES = 10

TrialCallback = Callable[[dict], None]
"""``on_trial(row)``: called after each finished trial with its :meth:`SearchResult.row`."""


def make_sampler(name: str, n_objectives: int, seed: int | None, constraints=None):
    """The optuna sampler ``name`` (see the module docstring). :class:`WsvizError` when it
    cannot serve this search (CMA-ES with several objectives or constraints)."""
    import optuna

    s = optuna.samplers
    if name == "tpe":
        return s.TPESampler(seed=seed, multivariate=True, constraints_func=constraints,
                            n_startup_trials=10)
    if name == "nsga2":
        return s.NSGAIISampler(seed=seed, constraints_func=constraints, population_size=20)
    if name == "cmaes":
        if n_objectives > 1:
            raise WsvizError(f"the cmaes sampler optimises one objective, this search has "
                             f"{n_objectives}; set objectives: {{over: mean}} or use tpe / "
                             "nsga2 / gp")
        if constraints is not None:
            raise WsvizError("the cmaes sampler does not handle constraints; use tpe, nsga2 or "
                             "gp, or drop constraints.min_pretrained")
        return s.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return s.GPSampler(seed=seed, constraints_func=constraints)
    if name in ("random", "map"):
        return s.RandomSampler(seed=seed)
    raise WsvizError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


class Search:
    """A (resumable) recipe search; see the module docstring.

    ``space``: :class:`SearchSpace`; ``backend``: :class:`~wsviz.search.context.
    InlineBackend` / :class:`~wsviz.search.context.DaskBackend`; ``objectives``:
    :class:`Objectives` (default: the space file's ``objectives``/``constraints``, else one
    objective per task); ``storage``: see :func:`wsviz.search.storage.open_storage`;
    ``map_design``: size of MAP's design (default ``(d+1)(d+2)/2 + 4``); ``probe``: the
    backend's :meth:`probe` answer when the caller already has it (saves one evaluation).
    """

    def __init__(self, space: SearchSpace, backend, objectives: Objectives | None = None,
                 storage=None, study_name: str = "wsviz-search", sampler: str = "tpe",
                 seed: int | None = 0, map_design: int | None = None,
                 probe: dict | None = None):
        if sampler not in SAMPLERS:
            raise WsvizError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if sampler == "map" and not all(d.numeric for d in space.dims):
            bad = [d.name for d in space.dims if not d.numeric]
            raise WsvizError(f"the map sampler fits surrogates over numeric dimensions; "
                             f"{bad} are categorical")
        self.space = space
        self.backend = backend
        self.objectives = objectives or Objectives.from_dict(space.spec.get("objectives"),
                                                             space.spec.get("constraints"))
        self.storage_arg = storage
        self.study_name = study_name
        self.sampler_name = sampler
        self.seed = seed
        self.map_design = map_design
        self.probe: dict | None = probe
        self.resolved: ResolvedObjectives | None = None
        self.study = None
        self.storage_text = ""
        self.recovered: list[int] = []
        self.evaluated = 0
        self._lock = None

    # ------------------------------------------------------------------------------------
    def open(self):
        """Probe the evaluator, open (or resume) the study; returns the optuna study."""
        import optuna

        if self.study is not None:
            return self.study
        if self.probe is None:
            self.probe = self.backend.probe()
        self.resolved = self.objectives.resolve(self.probe["specs"], self.probe["tasks"])
        ro = self.resolved
        meta = {"space": self.space.spec, "recipe": self.space.recipe.to_dict(),
                "dims": self.space.names, "objectives": ro.names, "directions": ro.directions,
                "metric": ro.metric.name, "higher_is_better": ro.metric.higher_is_better,
                "unit": ro.metric.unit, "tasks": ro.tasks, "sampler": self.sampler_name,
                "pretrained": self.probe["pretrained"], "config": self.objectives.to_dict()}
        storage, self._lock, self.storage_text = open_storage(self.storage_arg)
        try:
            constraints = None
            if self.objectives.min_pretrained:
                n = len(ro.tasks)

                def constraints(ft, n=n):
                    return ft.user_attrs.get("constraints") or [0.0] * n

            sampler = make_sampler(self.sampler_name, len(ro.names), self.seed, constraints)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(storage=storage, study_name=self.study_name,
                                        directions=ro.directions, sampler=sampler,
                                        load_if_exists=True)
            n_old = len(study.get_trials(deepcopy=False))
            if n_old and self.seed is not None:
                # a resumed seeded sampler would replay the first run's random draws:
                # continue its stream from where the study is instead
                study.sampler = make_sampler(self.sampler_name, len(ro.names),
                                             self.seed + n_old, constraints)
            old = study.user_attrs.get("wsviz")
            if old is None:
                study.set_user_attr("wsviz", meta)
            else:
                for key in ("recipe", "dims", "objectives", "directions", "sampler"):
                    if old.get(key) != meta[key]:
                        what = ("a different starting recipe" if key == "recipe" else
                                f"different {key} ({old.get(key)} vs now {meta[key]})")
                        raise WsvizError(
                            f"study {self.study_name!r} in {self.storage_text} was made with "
                            f"{what}; use another --study name or --storage file to start a "
                            "new search")
            self.recovered = recover_stale(study)
        except BaseException:
            self.close()
            raise
        self.study = study
        return study

    def close(self) -> None:
        """Release the study's lock (the backend is closed by its owner)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------------
    def run(self, n_trials: int, progress: bool | Callable[[int, int], None] = False,
            on_trial: TrialCallback | None = None, should_stop: Callable[[], bool] | None = None,
            ) -> SearchResult:
        """Run until the study holds ``n_trials`` complete trials (a resumed study counts
        the trials it already has). ``progress``: True for a tqdm bar or a callable
        ``(done, total)``; ``should_stop()``: polled between trials — in-flight trials still
        finish and are recorded. For ``sampler="map"``, ``n_trials`` = design + confirmation
        points. Raises :class:`WsvizError` after ``MAX_CONSECUTIVE_FAILURES`` failed trials
        in a row (with the last error)."""
        from optuna.trial import TrialState

        if not isinstance(n_trials, int) or n_trials < 1:
            raise WsvizError(f"--trials must be a positive integer, got {n_trials!r}")
        study = self.open()
        bar = None
        done0 = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_trials, initial=min(done0, n_trials), desc="search",
                       unit="trial")
        self._bar, self._progress, self._total = bar, progress, n_trials
        try:
            if self.sampler_name == "map":
                self._run_map(n_trials, on_trial, should_stop)
            else:
                self._loop(lambda done, inflight: done + inflight < n_trials, on_trial,
                           should_stop)
        finally:
            if bar is not None:
                bar.close()
        return self.result()

    def result(self) -> SearchResult:
        return SearchResult(self.study, self.space, self.resolved, self.probe)

    # ------------------------------------------------------------------------------------
    def _complete_count(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def _waiting(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _loop(self, more: Callable[[int, int], bool], on_trial, should_stop) -> None:
        """Ask/submit while ``more(complete, in_flight)``; tell results as they arrive."""
        from optuna.trial import TrialState

        study = self.study
        dists = self.space.distributions()
        want_size = self.objectives.needs_size
        inflight: dict[cf.Future, object] = {}
        fails = 0
        last_error = ""
        done = self._complete_count()
        stop = False
        while True:
            stop = stop or bool(should_stop and should_stop())
            while not stop and len(inflight) < self.backend.slots and more(done, len(inflight)):
                trial = study.ask(dists)
                try:
                    recipe = self.space.recipe_for(trial.params, validate=False)
                except WsvizError as e:
                    trial.set_user_attr("error", str(e))
                    study.tell(trial, state=TrialState.FAIL)
                    fails, last_error = fails + 1, str(e)
                    self._check_fails(fails, last_error)
                    continue
                rd = recipe.to_dict()
                trial.set_user_attr("recipe", rd)
                trial.set_user_attr("t_submit", time.time())
                inflight[self.backend.submit(rd, want_size)] = trial
            if not inflight:
                break
            finished, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for f in finished:
                trial = inflight.pop(f)
                out = f.result()
                ok = self._tell(trial, out)
                self.evaluated += 1
                if ok:
                    fails = 0
                    done += 1
                    if self._bar is not None:
                        self._bar.update(1)
                    elif callable(self._progress):
                        self._progress(done, self._total)
                else:
                    fails, last_error = fails + 1, out.get("error", "")
                if on_trial is not None:
                    on_trial(self.result().row(study.get_trials(deepcopy=False)[trial.number]))
            if fails:
                try:
                    self._check_fails(fails, last_error)
                except WsvizError:
                    for f in inflight:  # record what is still running before giving up
                        self._tell(inflight[f], f.result())
                    raise

    def _check_fails(self, fails: int, last_error: str) -> None:
        if fails >= MAX_CONSECUTIVE_FAILURES:
            raise WsvizError(f"{fails} trials failed in a row; last error: {last_error}")

    def _tell(self, trial, out: dict) -> bool:
        """Record one evaluation; True when the trial completed."""
        from optuna.trial import TrialState

        for k in ("seconds", "worker"):
            if k in out:
                trial.set_user_attr(k, out[k])
        if "error" in out:
            trial.set_user_attr("error", out["error"])
            self.study.tell(trial, state=TrialState.FAIL)
            return False
        res = out["results"]
        try:
            values = self.resolved.values(res, out.get("sparsity"), out.get("size"))
            cons = self.resolved.constraints(res, self.probe["pretrained"])
        except WsvizError as e:
            trial.set_user_attr("error", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            return False
        trial.set_user_attr("results", res)
        for k in ("sparsity", "size"):
            if k in out:
                trial.set_user_attr(k, out[k])
        if cons:
            trial.set_user_attr("constraints", cons)
        if any(not math.isfinite(v) for v in values):
            trial.set_user_attr("error", f"non-finite objective values {values}")
            self.study.tell(trial, state=TrialState.FAIL)
            return False
        self.study.tell(trial, values)
        return True

    # -- MAP ---------------------------------------------------------------------------------
    def _phase_trials(self, phase: str):
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get("phase") == phase]

    def _run_map(self, n_trials: int, on_trial, should_stop) -> None:
        from wsviz.search import surrogate as sg

        dims = self.space.dims
        d = len(dims)
        n_design = self.map_design or sg.n_terms(d) + 4
        if n_design >= n_trials:
            raise WsvizError(f"map: {n_trials} trials leave no confirmation point after a "
                             f"design of {n_design}; raise --trials or lower --map-design")
        if not self._phase_trials("design"):
            for i, u in enumerate(sg.design(n_design, d, seed=self.seed or 0)):
                self.study.enqueue_trial({dm.name: dm.from_unit(x) for dm, x in zip(dims, u)},
                                         user_attrs={"phase": "design", "index": i})
        self._loop(lambda done, inflight: self._waiting() > 0, on_trial, should_stop)
        if should_stop and should_stop():
            return
        fit = self.fit_surrogate()
        if fit is None:
            raise WsvizError("map: fewer than 3 design points completed; nothing to fit")
        if not self._phase_trials("confirm"):
            sur, x, y = fit
            pts = sg.confirm_points(sur, d, n_trials - n_design, y, seed=self.seed or 0)
            pred = sur.predict(pts)
            for i, (u, p) in enumerate(zip(pts, pred)):
                self.study.enqueue_trial(
                    {dm.name: dm.from_unit(x) for dm, x in zip(dims, u)},
                    user_attrs={"phase": "confirm", "index": i, "predicted": p.tolist()})
        self._loop(lambda done, inflight: self._waiting() > 0, on_trial, should_stop)

    def fit_surrogate(self):
        """Fit MAP's surrogates on the completed design trials; stores them in the study
        (``user_attrs["wsviz_map"]``) and returns ``(Surrogate, x_unit, y)`` (None when fewer
        than 3 design trials completed)."""
        from optuna.trial import TrialState

        from wsviz.search.surrogate import Surrogate

        rows = [t for t in self._phase_trials("design") if t.state == TrialState.COMPLETE]
        if len(rows) < 3:
            return None
        x = np.array([[dm.to_unit(t.params[dm.name]) for dm in self.space.dims] for t in rows])
        y = np.array([t.values for t in rows])
        sur = Surrogate.fit(x, y, self.resolved.directions)
        self.study.set_user_attr("wsviz_map", {**sur.to_dict(), "n_design": len(rows)})
        return sur, x, y


@dataclass
class SearchResult:
    """A study's trials as tables, fronts and recipes (also for a study re-opened later with
    :func:`load_result`)."""

    study: object
    space: SearchSpace | None
    objectives: ResolvedObjectives | None
    probe: dict | None

    @property
    def meta(self) -> dict:
        return dict(self.study.user_attrs.get("wsviz") or {})

    @property
    def objective_names(self) -> list[str]:
        return list(self.meta.get("objectives") or [])

    @property
    def directions(self) -> list[str]:
        return list(self.meta.get("directions") or [])

    @property
    def tasks(self) -> list[str]:
        return list(self.meta.get("tasks") or [])

    def row(self, t) -> dict:
        """One trial as a flat dict: ``number, state, phase, seconds, worker, feasible``, the
        objective values by name, ``task:<task>`` metric values, ``mean`` / ``worst`` of the
        metric over tasks, ``predicted:<objective>`` for MAP confirmations, ``recipe``
        (dict), ``error``."""
        meta = self.meta
        metric = meta.get("metric", "")
        hib = meta.get("higher_is_better", True)
        ua = t.user_attrs
        row = {"number": t.number, "state": t.state.name, "phase": ua.get("phase", "search"),
               "seconds": ua.get("seconds", math.nan), "worker": ua.get("worker", ""),
               "error": ua.get("error", ""), "recipe": ua.get("recipe"),
               "retry_of": ua.get("retry_of", -1)}
        cons = ua.get("constraints") or []
        row["feasible"] = all(c <= 0 for c in cons)
        vals = t.values if t.values is not None else [math.nan] * len(self.objective_names)
        for n, v in zip(self.objective_names, vals):
            row[n] = v
        res = ua.get("results") or {}
        tv = [res[k][metric] for k in self.tasks if k in res and metric in res[k]]
        for k in self.tasks:
            row[f"task:{k}"] = res.get(k, {}).get(metric, math.nan)
        row["mean"] = float(np.mean(tv)) if tv else math.nan
        row["worst"] = (min(tv) if hib else max(tv)) if tv else math.nan
        for n, p in zip(self.objective_names, ua.get("predicted") or []):
            row[f"predicted:{n}"] = p
        for k in ("sparsity", "size"):
            if k in ua:
                row[k] = ua[k]
        for name, v in t.params.items():
            row[f"param:{name}"] = v
        return row

    def frame(self, complete_only: bool = False) -> pd.DataFrame:
        """One row per trial (:meth:`row`), plus ``pareto`` (non-dominated among the feasible
        complete trials in the study's objectives)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if complete_only:
            trials = [t for t in trials if t.state == TrialState.COMPLETE]
        df = pd.DataFrame([self.row(t) for t in trials])
        if not len(df):
            return pd.DataFrame(columns=["number", "state", "pareto", *self.objective_names])
        ok = (df["state"] == "COMPLETE").to_numpy() & df["feasible"].to_numpy(dtype=bool)
        vals = df[self.objective_names].to_numpy(dtype=float)
        df["pareto"] = pareto_mask(vals, self.directions, ok)
        return df

    def pareto(self) -> pd.DataFrame:
        """The Pareto-optimal feasible trials, best mean first."""
        df = self.frame()
        if not len(df):
            return df
        asc = not self.meta.get("higher_is_better", True)
        return df[df["pareto"]].sort_values("mean", ascending=asc)

    def best(self, by: str = "mean") -> dict | None:
        """The feasible complete trial best on ``by`` (``"mean"``, ``"worst"`` or an
        objective / ``task:<name>`` column), in the metric's direction; None when none."""
        df = self.frame(complete_only=True)
        if not len(df):
            return None
        df = df[df["feasible"]]
        if not len(df) or by not in df:
            return None
        hib = self.meta.get("higher_is_better", True)
        if by in self.objective_names:
            hib = self.directions[self.objective_names.index(by)] == "maximize"
        i = df[by].idxmax() if hib else df[by].idxmin()
        return df.loc[i].to_dict()

    def recipe(self, number: int):
        """The :class:`~wsviz.recipes.Recipe` trial ``number`` evaluated."""
        from wsviz.recipes import Recipe

        rd = self.study.trials[number].user_attrs.get("recipe")
        if rd is None:
            raise WsvizError(f"trial {number} has no recipe (it failed before merging)")
        return Recipe.from_dict(rd)

    def surrogate(self):
        """MAP's fitted :class:`~wsviz.search.surrogate.Surrogate` (None without MAP)."""
        from wsviz.search.surrogate import Surrogate

        d = self.study.user_attrs.get("wsviz_map")
        return None if d is None else Surrogate.from_dict(d)


def load_result(storage, study_name: str = "wsviz-search") -> SearchResult:
    """Re-open a stored study read-only as a :class:`SearchResult` (no lock taken)."""
    import optuna

    st, lock, text = open_storage(storage)
    if lock is not None:
        lock.release()
    try:
        study = optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        raise WsvizError(f"no study {study_name!r} in {text}") from None
    return SearchResult(study, None, None, None)

"""What the dashboards need from wsviz, in one small interface.

:class:`Workspace` is the only thing ui/ components talk to. It is implemented by
:class:`wsviz.session.ApiWorkspace` on top of wsviz's public API (io, analysis, recipes,
eval, zoo); tests may substitute a tiny fake. Every method returns plain Python / numpy /
pandas objects (:mod:`wsviz.session.views`), so views never do tensor math.

A workspace is read-only and shared between sessions (its caches are thread-safe);
per-session state (selected layer, current recipe, history) lives in the components.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsviz.eval.metrics import KNOWN, MetricSpec
from wsviz.session.views import DEFAULT_EXPORT_DIR, LayerDetailView, MethodView, Progress


class Workspace:
    """Abstract interface; see module docstring. All methods may raise WsvizError."""

    title: str = "wsviz"
    labels: list[str]
    tasks: list[str]

    #: False when no evaluator was given: the tuners then build recipes (for export) but
    #: show no live metrics.
    can_evaluate: bool = True

    #: The metric :meth:`evaluate_recipe` returns per task (name, direction, unit); views
    #: label axes, pick "best"/"worst" and orient Pareto fronts by it.
    metric_spec: MetricSpec = KNOWN["accuracy"]

    _export_root: Path | None = None

    @property
    def export_root(self) -> Path:
        """The only directory the dashboard writes into (``--export-root`` at launch; by
        default ``wsviz-exports`` in the working directory), resolved."""
        from wsviz.io.outputs import resolved

        return self._export_root or resolved(Path.cwd() / DEFAULT_EXPORT_DIR)

    @export_root.setter
    def export_root(self, path) -> None:
        from wsviz.io.outputs import resolved

        self._export_root = resolved(path) if path is not None else None

    # -- analysis ----------------------------------------------------------------------------
    def layers(self) -> list[str]:
        """Aligned tensor names in model order."""
        raise NotImplementedError

    def layer_groups(self) -> dict[str, str]:
        """``{layer: group}`` (group = the layer-group name used by schedules / filters)."""
        raise NotImplementedError

    def analysis_table(self, progress: Progress | None = None) -> pd.DataFrame:
        """Tidy table ``layer, block, kind, group, model, metric, value, note`` (may be slow the
        first time; cached)."""
        raise NotImplementedError

    def detail(self, layer: str) -> LayerDetailView:
        raise NotImplementedError

    def task_map(self, group: str | None) -> tuple[list[str], np.ndarray]:
        """(labels, X[n_models, d]) task vectors for the whole model (group None) or one group."""
        raise NotImplementedError

    def cosine_matrix(self) -> pd.DataFrame:
        """Whole-model task-vector cosine similarity, models x models."""
        raise NotImplementedError

    # -- merging / pruning ------------------------------------------------------------------
    def merge_methods(self) -> dict[str, MethodView]:
        raise NotImplementedError

    def prune_methods(self) -> dict[str, MethodView]:
        raise NotImplementedError

    def make_recipe(self, method: str, params: dict, model_params: dict[str, dict]) -> Any:
        """Build and validate a recipe (RecipeError naming the bad parameter)."""
        raise NotImplementedError

    def evaluate_recipe(self, recipe) -> dict[str, float]:
        """Per-task value of :attr:`metric_spec` for the merged model."""
        raise NotImplementedError

    def merge_anatomy(self, recipe, progress: Progress | None = None) -> pd.DataFrame:
        """"Why this merge" (no evaluator needed): the tidy per-tensor table of
        :func:`wsviz.analysis.anatomy.recipe_anatomy` (``layer, order, block, kind, model,
        kept, elected_away, cos, task_norm, merged_norm, mass, kept_mass, elected_mass,
        dot``). WsvizError when this workspace or method cannot give it."""
        from wsviz.errors import WsvizError

        raise WsvizError("this workspace cannot show the merge anatomy")

    def evaluate_prune(self, target: str, method: str, params: dict, merge=None
                       ) -> dict[str, float]:
        """Per-task metric of ``target`` (a model label, ``"base"``, or ``"current merge"``
        with ``merge`` the merge tuner's recipe) pruned by ``method`` / ``params``."""
        raise NotImplementedError

    def prune_mask(self, layer: str, target: str, method: str, params: dict, merge=None
                   ) -> np.ndarray | None:
        """Boolean keep-mask of one layer (True = keep), or None when the layer is not
        pruned (1-D tensors, embeddings, excluded ones)."""
        raise NotImplementedError

    def prune_recipe_text(self, method: str, params: dict, fmt: str = "yaml") -> str:
        """The prune recipe as YAML (for ``wsviz prune --recipe``) or JSON; RecipeError for
        bad parameters."""
        raise NotImplementedError

    def write_pruned(self, target: str, method: str, params: dict, outdir: str, force: bool,
                     merge=None, progress: Progress | None = None) -> str:
        """Write the pruned ``target`` as an HF directory ``outdir`` inside
        :attr:`export_root` (same refusal rules as :meth:`write_merged`); returns its path."""
        raise NotImplementedError

    def references(self) -> dict[str, dict[str, float]]:
        """Reference rows of :attr:`metric_spec`, ``{row: {task: v}}``: ``"pretrained"`` (the
        base), ``"individual"`` (each task's own fine-tune; may be empty) and, when some task
        has no fine-tune of its own, one ``"ft:<label>"`` row per fine-tune (see
        :mod:`wsviz.eval.references`). May be slow the first time (views fetch it off the
        event loop)."""
        raise NotImplementedError

    def sweep(self, make: Callable[[float], Any], values, progress: Progress | None = None
              ) -> pd.DataFrame:
        """Evaluate ``make(v)`` for each v: tidy DataFrame ``value, task, metric``."""
        rows = []
        values = list(values)
        for i, v in enumerate(values):
            metrics = self.evaluate_recipe(make(v))
            rows += [{"value": float(v), "task": t, "metric": m} for t, m in metrics.items()]
            if progress:
                progress((i + 1) / len(values), f"{i + 1}/{len(values)}")
        return pd.DataFrame(rows, columns=["value", "task", "metric"])

    # -- search -----------------------------------------------------------------------------
    #: False when this workspace cannot run recipe searches (the Search panel says so).
    can_search: bool = False

    def search(self, recipe, space: dict, n_trials: int, sampler: str = "tpe",
               on_start: Callable[[dict], None] | None = None,
               on_trial: Callable[[dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None, storage=None) -> pd.DataFrame:
        """Search ``space`` (a :mod:`wsviz.search.space` mapping) around ``recipe``.

        ``on_start(info)`` once: ``objectives``, ``directions``, ``tasks``, ``metric``
        (a MetricSpec); ``on_trial(row)`` per finished trial: ``number``, ``state``,
        ``phase``, ``mean``, ``worst``, ``task:<task>`` values, objective values,
        ``predicted:<objective>`` (MAP), ``feasible``; ``recipe`` (what
        :meth:`recipe_yaml` takes) and ``tuner_state`` (a merge-tuner state, or None when
        the tuner cannot show the recipe). Returns all trials as a DataFrame of such rows."""
        from wsviz.errors import WsvizError

        raise WsvizError("this workspace cannot run recipe searches")

    # -- export -----------------------------------------------------------------------------
    def recipe_yaml(self, recipe) -> tuple[str | None, str | None]:
        """(mergekit YAML text, None) or (None, reason it cannot be expressed)."""
        raise NotImplementedError

    def recipe_json(self, recipe) -> str:
        raise NotImplementedError

    def input_files(self) -> list[Path]:
        """Paths of the served models (an export may never be, contain or lie in one)."""
        return []

    def write_merged(self, recipe, outdir: str, force: bool, progress: Progress | None = None
                     ) -> str:
        """Write the merged model as an HF directory ``outdir`` (inside :attr:`export_root`);
        returns its path. Refuses to overwrite unless ``force``, and refuses any path that
        is, contains or lies inside a served model."""
        raise NotImplementedError

"""The UI-free session layer: a model set, its caches and evaluator, and the jobs run on them
(analyse, merge, prune, evaluate, export, search). The Panel components (:mod:`wsviz.ui`),
the notebooks and the CLI commands all call it; it never imports panel.

===========================  =================================================================
:mod:`~wsviz.session.views`  dataclasses the UI renders (ParamView, MethodView, LayerDetailView)
:mod:`~wsviz.session.base`   the :class:`Workspace` interface the UI talks to
``workspace``                :class:`ApiWorkspace`, composed of one mixin per job:
``analysis`` / ``merging``   tables and layer views / recipes, merger, Fishers
``evaluation`` / ``pruning`` live metrics and references / prune recipes and plans
``export`` / ``search``      YAML / JSON / HF directories / recipe search
``tuner``                    :func:`tuner_state`: a recipe as the merge tuner's values
``pipeline``                 :func:`merge_prune_to_dir`: merge -> prune -> write (CLI and UI)
``open``                     :func:`open_workspace`, :func:`demo_workspace`, :func:`load_evaluator`
``args``                     command-line arguments shared by ``wsviz serve`` and the app
``param_grid``               round slider grids and typed-value checks (pure Python)
===========================  =================================================================

Names are imported lazily, so ``wsviz.session.args`` stays import-light (no torch).
"""

from __future__ import annotations

import importlib

_HOMES = {
    "ApiWorkspace": "workspace", "Workspace": "base",
    "LayerDetailView": "views", "MethodView": "views", "ParamView": "views",
    "Progress": "views", "MERGE_TARGET": "views", "DEFAULT_EXPORT_DIR": "views",
    "tuner_state": "tuner", "demo_workspace": "open", "open_workspace": "open",
    "load_evaluator": "open", "merge_prune_to_dir": "pipeline",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'wsviz.session' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wsviz.session.{home}"), name)

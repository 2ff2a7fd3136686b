"""Argument parsing and workspace creation shared by ``wsviz serve`` and
``panel serve apps/wsviz_app.py --args ...``."""

from __future__ import annotations

import argparse
import importlib
import threading

from wsviz.commands._model_args import add_model_args, eval_options
from wsviz.errors import WsvizError
from wsviz.ui.workspace import Workspace

_CACHE: dict[tuple, Workspace] = {}
_LOCK = threading.Lock()


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wsviz_app.py", description="wsviz dashboard")
    add_model_args(p)
    return p.parse_args(argv)


def workspace_from_args(ns: argparse.Namespace) -> Workspace:
    """The (process-wide cached) workspace the arguments describe; WsvizError if none."""
    key = (bool(ns.demo), tuple(ns.paths), ns.eval, ns.device, ns.workspace,
           getattr(ns, "metric", None), tuple(sorted(eval_options(ns).items())))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        ws = _make(ns)
        _CACHE[key] = ws
        return ws


def _make(ns: argparse.Namespace) -> Workspace:
    if ns.workspace:
        mod, _, attr = ns.workspace.partition(":")
        if not attr:
            raise WsvizError(f"--workspace {ns.workspace!r}: write it as module:callable")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise WsvizError(f"--workspace {ns.workspace!r} cannot be imported: {exc}") from None
        return factory()
    from wsviz.ui import backend

    if ns.demo:
        if ns.paths:
            raise WsvizError("give either --demo or checkpoint paths, not both")
        if ns.eval not in (None, "zoo"):
            raise WsvizError("--demo uses the zoo's own evaluator; drop --eval (or serve your "
                             "checkpoints: BASE FT [FT...] --eval SPEC)")
        return backend.demo_workspace(device=ns.device, metric=getattr(ns, "metric", None))
    if len(ns.paths) < 2:
        raise WsvizError("give a BASE checkpoint and at least one fine-tuned checkpoint "
                         "(or --demo for the built-in zoo)")
    return backend.open_workspace(ns.paths[0], ns.paths[1:], eval_spec=ns.eval,
                                  device=ns.device, metric=getattr(ns, "metric", None),
                                  **eval_options(ns))

"""Argument parsing and workspace creation shared by ``wsviz serve`` and
``panel serve apps/wsviz_app.py --args ...``."""

from __future__ import annotations

import argparse
import importlib
import threading
from pathlib import Path

from wsviz.errors import WsvizError
from wsviz.session.args import add_model_args, eval_options
from wsviz.session.base import Workspace
from wsviz.session.views import DEFAULT_EXPORT_DIR

_CACHE: dict[tuple, Workspace] = {}
_LOCK = threading.Lock()


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wsviz_app.py", description="wsviz dashboard")
    add_model_args(p)
    return p.parse_args(argv)


def workspace_from_args(ns: argparse.Namespace) -> Workspace:
    """The (process-wide cached) workspace the arguments describe, its :attr:`export_root`
    set from ``--export-root`` (default ``./wsviz-exports``); WsvizError if none, or if the
    export root is or lies inside a served model."""
    key = (bool(ns.demo), tuple(ns.paths), ns.eval, ns.device, ns.workspace,
           getattr(ns, "metric", None), tuple(sorted(eval_options(ns).items())),
           getattr(ns, "calib", None))
    with _LOCK:
        ws = _CACHE.get(key)
        if ws is None:
            ws = _make(ns)
            _CACHE[key] = ws
        root = getattr(ns, "export_root", None)
        ws.export_root = root if root else Path.cwd() / DEFAULT_EXPORT_DIR
        _check_export_root(ws)
        return ws


def _check_export_root(ws: Workspace) -> None:
    from wsviz.io.outputs import resolved

    root = ws.export_root
    for f in ws.input_files():
        r = resolved(f)
        if root == r or root.is_relative_to(r):
            raise WsvizError(f"--export-root {root} is or lies inside the served model {f}; "
                             "choose a folder outside the models")
    if root.exists() and not root.is_dir():
        raise WsvizError(f"--export-root {root} is not a directory; choose a folder")


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
    from wsviz.session.open import demo_workspace, open_workspace

    if ns.demo:
        if ns.paths:
            raise WsvizError("give either --demo or checkpoint paths, not both")
        if ns.eval not in (None, "zoo"):
            raise WsvizError("--demo uses the zoo's own evaluator; drop --eval (or serve your "
                             "checkpoints: BASE FT [FT...] --eval SPEC)")
        if getattr(ns, "calib", None):
            raise WsvizError("--demo calibrates Wanda on the zoo's own images; drop --calib")
        return demo_workspace(device=ns.device, metric=getattr(ns, "metric", None))
    if len(ns.paths) < 2:
        raise WsvizError("give a BASE checkpoint and at least one fine-tuned checkpoint "
                         "(or --demo for the built-in zoo)")
    return open_workspace(ns.paths[0], ns.paths[1:], eval_spec=ns.eval,
                                  device=ns.device, metric=getattr(ns, "metric", None),
                                  calib=getattr(ns, "calib", None), **eval_options(ns))

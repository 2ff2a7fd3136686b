"""Named evaluators that packages above :mod:`wsviz.eval` provide (``--eval NAME``).

A package registers a factory under a bare name when it is imported (the demo zoo registers
``"zoo"`` in :mod:`wsviz.zoo`), so ``wsviz.eval`` never imports its providers and the data
flow stays one-directional (eval <- zoo). :func:`wsviz.eval.make_evaluator` looks bare names
up here; :func:`wsviz.session.load_evaluator` imports the built-in providers first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from wsviz.errors import EvalError

__all__ = ["EvaluatorEntry", "evaluator_entry", "register_evaluator", "registered_evaluators"]

EvaluatorFactory = Callable[..., object]
"""``factory(modelset=None, device=None) -> evaluator`` (an object with ``evaluate(weights)
-> {task: {metric: value}}``)."""


@dataclass(frozen=True)
class EvaluatorEntry:
    """One registered evaluator: its ``name``, ``factory`` and a one-line ``doc``."""

    name: str
    factory: EvaluatorFactory
    doc: str = ""


_REGISTRY: dict[str, EvaluatorEntry] = {}
_LOCK = threading.Lock()


def register_evaluator(name: str, factory: EvaluatorFactory, doc: str = "") -> None:
    """Make ``--eval name`` build ``factory(modelset=..., device=...)``. ``name`` is a bare
    word (no ``:``, ``/`` or ``.``, which would read as a spec or a path); registering a
    name again replaces the entry (re-imports are harmless). EvalError for a bad name."""
    if not name or any(c in name for c in ":/\\.") or not callable(factory):
        raise EvalError(f"evaluator registry: {name!r} must be a bare word (no ':', '/', '.') "
                        "with a callable factory")
    with _LOCK:
        _REGISTRY[name] = EvaluatorEntry(name, factory, doc)


def evaluator_entry(name: str) -> EvaluatorEntry | None:
    """The entry registered under ``name``, or None."""
    with _LOCK:
        return _REGISTRY.get(name)


def registered_evaluators() -> list[str]:
    """The registered names, sorted."""
    with _LOCK:
        return sorted(_REGISTRY)

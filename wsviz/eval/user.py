"""A user's own evaluation function, given as ``"module:function"`` or ``"path/to/file.py:function"``.

The function is called with the merged weights (``{name: Tensor}``) and returns a number, a
``{metric: number}`` mapping or a ``{task: {metric: number}}`` mapping. If it raises or returns
anything else, :class:`wsviz.errors.EvalError` carries its message — the UI shows it and the
session continues. Optional attributes of the function:

- ``function.names`` — list of tensor names: restricts what gets merged for it;
- ``function.metrics`` — the metrics it reports, primary first, as
  :class:`wsviz.eval.metrics.MetricSpec` or ``"name:min"`` / ``"name:max"`` strings
  (``["val_loss:min", "acc:max"]``). Undeclared metrics are inferred from their names
  (``loss``, ``perplexity``, ``error`` ... lower is better; others higher); ``--metric
  NAME:min|max`` on the command line declares one from outside.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from wsviz.errors import EvalError
from wsviz.eval.base import Results, normalize_results
from wsviz.eval.metrics import as_specs


def load_callable(spec: str):
    """Import ``"module:function"`` (or ``"file.py:function"``); :class:`EvalError` naming
    the spec if it cannot be imported or is not callable."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EvalError(f"evaluator {spec!r}: write it as module:function or file.py:function")
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise EvalError(f"evaluator {spec!r}: write it as module:function or file.py:function")
    try:
        if mod_name.endswith(".py") or "/" in mod_name or "\\" in mod_name:
            path = Path(mod_name).expanduser().resolve()
            if not path.is_file():
                raise EvalError(f"evaluator {spec!r}: file {path} does not exist")
            name = f"wsviz_user_eval_{abs(hash(str(path)))}"
            ispec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(ispec)
            sys.modules[name] = module
            ispec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except EvalError:
        raise
    except Exception as e:  # noqa: BLE001 - any import-time failure is the user's
        raise EvalError(f"evaluator {spec!r} cannot be imported: {type(e).__name__}: {e}") \
            from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise EvalError(f"evaluator {spec!r}: module {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise EvalError(f"evaluator {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


class CallableEvaluator:
    """Wrap a user callable (or a ``"module:function"`` spec) as an :class:`Evaluator`.

    ``task``: task name used when the function returns a number or ``{metric: number}``;
    ``metrics``: declared metrics (default: ``fn.metrics`` if the function has it, see the
    module docstring). ``evaluate`` raises :class:`EvalError` with the function's own message when it raises,
    and names the offending value when it returns a non-number.
    """

    def __init__(self, fn, task: str = "user", metrics=None):
        if isinstance(fn, str):
            self.spec = fn
            fn = load_callable(fn)
        else:
            if not callable(fn):
                raise EvalError(f"evaluator {fn!r} is not callable")
            self.spec = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
        self.fn = fn
        self.task = task
        names = getattr(fn, "names", None)
        self.names: list[str] | None = list(names) if names is not None else None
        self.tasks: list[str] = []
        declared = metrics if metrics is not None else getattr(fn, "metrics", None)
        try:
            self.metrics = list(as_specs(declared).values())
        except EvalError as e:
            raise EvalError(f"evaluator {self.spec}: {e}") from None

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> Results:
        """Call the function on ``weights`` and validate what it returns."""
        try:
            out = self.fn(weights)
        except Exception as e:  # noqa: BLE001 - report any user failure as EvalError
            msg = str(e) or "(no message)"
            raise EvalError(f"evaluator {self.spec} raised {type(e).__name__}: {msg}") from e
        res = normalize_results(out, f"evaluator {self.spec}", default_task=self.task)
        self.tasks = list(res)
        return res

    def __repr__(self) -> str:
        return f"CallableEvaluator({self.spec!r})"

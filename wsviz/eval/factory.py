"""One entry point for evaluator specs given on the command line (``--eval SPEC``)."""

from __future__ import annotations

from pathlib import Path

from wsviz.errors import EvalError


def make_evaluator(spec: str, modelset=None, device=None, model_dir=None):
    """Evaluator for ``spec``:

    - ``"zoo"`` — :class:`ZooEvaluator` of the demo zoo (built on first use);
    - ``"module:function"`` / ``"file.py:function"`` — :class:`CallableEvaluator`;
    - a path to a text file — :class:`PerplexityEvaluator` of ``model_dir`` (default: the
      base model's directory of ``modelset``) on that text.

    Raises :class:`EvalError` naming the spec when it is none of these.
    """
    if not spec or not isinstance(spec, str):
        raise EvalError(f"evaluator spec {spec!r}: give 'zoo', module:function or a text file")
    if spec == "zoo":
        from wsviz.eval.zoo import ZooEvaluator

        return ZooEvaluator(device=device)
    p = Path(spec).expanduser()
    if p.exists() and not p.is_dir():
        from wsviz.eval.perplexity import PerplexityEvaluator, _base_dir

        if model_dir is None:
            if modelset is None:
                raise EvalError(f"perplexity on {spec}: no model directory (pass model_dir or a "
                                "model set whose base is an HF directory)")
            model_dir = _base_dir(modelset)

        return PerplexityEvaluator(model_dir, p, device=device)
    if ":" in spec:
        from wsviz.eval.user import CallableEvaluator

        return CallableEvaluator(spec)
    raise EvalError(f"evaluator spec {spec!r}: no such file, and not module:function; give "
                    "'zoo', module:function, file.py:function or a UTF-8 text file")

"""One entry point for evaluator specs given on the command line (``--eval SPEC``).

=============================  ==========================================================
``NAME``                       an evaluator registered under a bare name
                               (:mod:`wsviz.eval.registry`; ``zoo``: the demo zoo's per-task
                               accuracy, registered when :mod:`wsviz.zoo` is imported)
``ppl:FILE`` or ``FILE``       causal-LM perplexity on a UTF-8 text (:class:`PerplexityEvaluator`)
``mc:FILE.jsonl``              multiple-choice log-likelihood accuracy
                               (:class:`~wsviz.eval.multiple_choice.MultipleChoiceEvaluator`)
``lm-eval:TASK[,TASK]``        lm-evaluation-harness tasks
                               (:class:`~wsviz.eval.lm_harness.LMEvalEvaluator`)
``module:function``            a user function (:class:`CallableEvaluator`); also
                               ``path/to/file.py:function``
=============================  ==========================================================

The LLM evaluators run the base model's HF directory (``model_dir``, default: the model set's
base) with the merged weights swapped in; ``tokenizer`` points at a tokenizer elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from wsviz.errors import EvalError
from wsviz.eval.registry import evaluator_entry, registered_evaluators

PREFIXES = {"ppl": "ppl", "perplexity": "ppl", "mc": "mc", "lm-eval": "lm-eval",
            "lm_eval": "lm-eval", "lmeval": "lm-eval"}

SPEC_HELP = ("'zoo', ppl:TEXT_FILE (or a text file), mc:FILE.jsonl, lm-eval:TASK[,TASK], "
             "module:function or file.py:function")


def make_evaluator(spec: str, modelset=None, device=None, model_dir=None, tokenizer=None,
                   lm_eval_include=None, lm_eval_limit=None, metric: str | None = None,
                   max_tokens: int | None = None, window: int | None = None,
                   stride: int | None = None):
    """The evaluator for ``spec`` (see the module docstring).

    ``modelset``: gives the default ``model_dir`` (its base's directory) of the LLM
    evaluators; ``tokenizer``: an HF tokenizer directory or tokenizer.json for them;
    ``lm_eval_include``: directory of lm-eval task YAMLs; ``lm_eval_limit``: documents per
    lm-eval task; ``metric``: ``"NAME"`` or ``"NAME:min|max"`` made the evaluator's primary
    metric (:func:`wsviz.eval.metrics.declare_metric`); ``max_tokens``, ``window``,
    ``stride``: perplexity's cap on the tokens read (None: the whole file), its window (None:
    the model's context) and stride (None: the window) — see :class:`PerplexityEvaluator`.
    Raises :class:`EvalError` naming the spec when it is none of these or cannot be built.
    """
    ppl = {"max_tokens": max_tokens, "context": window, "stride": stride}
    ev = _make(spec, modelset, device, model_dir, tokenizer, lm_eval_include, lm_eval_limit,
               ppl)
    if metric:
        from wsviz.eval.metrics import declare_metric

        declare_metric(ev, metric)
    return ev


def _llm_dir(kind: str, spec: str, modelset, model_dir):
    if model_dir is not None:
        return model_dir
    if modelset is None:
        raise EvalError(f"{kind} evaluator {spec!r}: no model directory (pass model_dir or a "
                        "model set whose base is an HF directory)")
    from wsviz.eval.causal_lm import model_dir_of

    return model_dir_of(modelset)


def _make(spec, modelset, device, model_dir, tokenizer, lm_eval_include, lm_eval_limit,
          ppl: dict):
    if not spec or not isinstance(spec, str):
        raise EvalError(f"evaluator spec {spec!r}: give {SPEC_HELP}")
    entry = evaluator_entry(spec)
    if entry is not None:
        return entry.factory(modelset=modelset, device=device)
    head, sep, rest = spec.partition(":")
    kind = PREFIXES.get(head.lower()) if sep else None
    if kind == "lm-eval":
        from wsviz.eval.lm_harness import LMEvalEvaluator

        return LMEvalEvaluator(_llm_dir("lm-eval", spec, modelset, model_dir), rest,
                               include=lm_eval_include, limit=lm_eval_limit,
                               tokenizer=tokenizer, device=device)
    if kind in ("ppl", "mc"):
        path = Path(rest).expanduser()
        if not path.is_file():
            what = "text file" if kind == "ppl" else "JSONL file"
            raise EvalError(f"evaluator {spec!r}: {what} {path} does not exist")
        if kind == "mc":
            from wsviz.eval.multiple_choice import MultipleChoiceEvaluator

            return MultipleChoiceEvaluator(_llm_dir("multiple-choice", spec, modelset,
                                                    model_dir), path, tokenizer=tokenizer,
                                           device=device)
        spec = str(path)
    p = Path(spec).expanduser()
    if p.exists() and not p.is_dir():
        from wsviz.eval.perplexity import PerplexityEvaluator

        return PerplexityEvaluator(_llm_dir("perplexity", spec, modelset, model_dir), p,
                                   device=device, tokenizer=tokenizer, **ppl)
    if ":" in spec:
        from wsviz.eval.user import CallableEvaluator

        return CallableEvaluator(spec)
    names = registered_evaluators()
    known = f" or a registered name ({', '.join(names)})" if names else ""
    hint = (" ('zoo' is registered by importing wsviz.zoo)" if spec == "zoo" and not names
            else "")
    raise EvalError(f"evaluator spec {spec!r}: no such file, not module:function{known}{hint}; "
                    f"give {SPEC_HELP}")

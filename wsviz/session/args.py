"""Model-set arguments shared by ``wsviz serve``, ``wsviz evaluate`` and ``apps/wsviz_app.py``
(import-light: parsing the command line must not import panel or torch)."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model-set arguments (shared by the app script and ``wsviz serve``)."""
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="BASE then one or more fine-tuned checkpoints (HF dir, .safetensors, "
                        ".bin, PEFT adapter dir)")
    p.add_argument("--demo", action="store_true",
                   help="use the built-in demo zoo (a small Llama over digit tokens; built on first "
                   "use)")
    p.add_argument("--eval", dest="eval", default=None, metavar="SPEC",
                   help="evaluator for live metrics: 'zoo', ppl:TEXT_FILE (causal-LM "
                        "perplexity; a bare text file works too), mc:FILE.jsonl (multiple-"
                        "choice log-likelihood accuracy), lm-eval:TASK[,TASK] (lm-evaluation-"
                        "harness) or module:function (called with the merged state dict, "
                        "returns {task: {metric: value}})")
    add_eval_options(p)
    p.add_argument("--calib", default=None, metavar="FILE",
                   help="Wanda calibration input for the prune tuner (transformers models): "
                        "a .pt tensor of token ids [batch, seq] or a .txt file, as for "
                        "`wsviz prune --calib`")
    p.add_argument("--device", default=None, help="torch device for analysis and merging")
    p.add_argument("--export-root", default=None, metavar="DIR",
                   help="the only folder the dashboard writes merged or pruned weights into (default: "
                        "./wsviz-exports); names typed in the browser are resolved inside it")
    p.add_argument("--workspace", default=None, metavar="MODULE:CALLABLE",
                   help="advanced: a callable returning a wsviz.session.Workspace")


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Options of the evaluators (shared by serve, the app script and ``wsviz evaluate``)."""
    p.add_argument("--metric", default=None, metavar="NAME[:min|max]",
                   help="metric to plot and compare (default: the evaluator's first); :min "
                        "or :max says whether lower or higher is better (e.g. score:min for "
                        "a user function whose score is a loss)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer directory or tokenizer.json for the LLM evaluators (ppl:, "
                        "mc:, lm-eval:) when the base model's directory has none")
    p.add_argument("--lm-eval-include", dest="lm_eval_include", default=None, metavar="DIR",
                   help="directory of lm-eval task YAMLs (local tasks; work offline when "
                        "their data is local)")
    p.add_argument("--lm-eval-limit", dest="lm_eval_limit", default=None, type=float,
                   metavar="N", help="evaluate only the first N documents of each lm-eval "
                   "task (a fraction when < 1): faster live metrics")
    p.add_argument("--max-tokens", dest="max_tokens", default=None, type=int, metavar="N",
                   help="ppl: score only the text's first N tokens [the whole file]")
    p.add_argument("--window", default=None, type=int, metavar="N",
                   help="ppl: tokens per sliding window [the model's context]")
    p.add_argument("--stride", default=None, type=int, metavar="N",
                   help="ppl: tokens between window starts; < window gives each scored token "
                        "window - stride tokens of extra context [the window]")


def eval_options(ns: argparse.Namespace) -> dict:
    """The evaluator keyword arguments of :func:`wsviz.eval.make_evaluator` from ``ns``."""
    limit = getattr(ns, "lm_eval_limit", None)
    if limit is not None and limit >= 1:
        limit = int(limit)
    return {"tokenizer": getattr(ns, "tokenizer", None),
            "lm_eval_include": getattr(ns, "lm_eval_include", None),
            "lm_eval_limit": limit,
            **{k: getattr(ns, k, None) for k in ("max_tokens", "window", "stride")}}

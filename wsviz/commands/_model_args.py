"""Model-set arguments shared by ``wsviz serve`` and ``apps/wsviz_app.py`` (import-light:
parsing the command line must not import panel or torch)."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model-set arguments (shared by the app script and ``wsviz serve``)."""
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="BASE then one or more fine-tuned checkpoints (HF dir, .safetensors, "
                        ".bin, PEFT adapter dir)")
    p.add_argument("--demo", action="store_true",
                   help="use the built-in demo zoo (digits encoders; built on first use)")
    p.add_argument("--eval", dest="eval", default=None, metavar="SPEC",
                   help="evaluator for live metrics: 'module:function' (called with the merged "
                        "state dict, returns {task: metric}) or a text file for causal-LM "
                        "perplexity")
    p.add_argument("--device", default=None, help="torch device for analysis and merging")
    p.add_argument("--export-root", default=None, metavar="DIR",
                   help="the only folder the dashboard writes merged weights into (default: "
                        "./wsviz-exports); names typed in the browser are resolved inside it")
    p.add_argument("--workspace", default=None, metavar="MODULE:CALLABLE",
                   help="advanced: a callable returning a wsviz.ui.Workspace")

"""Search fixtures: the tiny Llama family as a model set with a perplexity evaluator
(lower is better), in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoints import build_llama_set


def _lm_set(root, dtype):
    from tests.eval.conftest import save_char_tokenizer

    s = build_llama_set(root)
    if dtype is not torch.float32:
        for i, p in enumerate([s.base, *s.fts]):
            m = s.base_model if i == 0 else s.ft_models[i - 1]
            import copy

            copy.deepcopy(m).to(dtype).save_pretrained(p)
    save_char_tokenizer(s.base)
    text = root / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 3, encoding="utf-8")
    return s, text


@pytest.fixture(scope="session")
def lm_set(tmp_path_factory):
    """(LlamaSet with a tokenizer in its base dir, a text file) — fp32."""
    return _lm_set(tmp_path_factory.mktemp("lm_set"), torch.float32)


@pytest.fixture(scope="session")
def lm_set_bf16(tmp_path_factory):
    """The same family saved in bf16."""
    return _lm_set(tmp_path_factory.mktemp("lm_set_bf16"), torch.bfloat16)


def lm_recipe(s, method="ties"):
    from wsviz.recipes import Recipe

    labels = [str(p) for p in s.fts]
    mp = {"weight": 1.0, "density": 0.5} if method != "task_arithmetic" else {"weight": 1.0}
    return Recipe(method, base=str(s.base), models=[{"model": m, "params": dict(mp)}
                                                   for m in labels], params={"lambda": 1.0})


def lm_context(s, text, device=None):
    from wsviz.search import EvalContext

    labels = tuple(str(p) for p in s.fts)
    return EvalContext(base=str(s.base), models=labels, labels=labels, evaluator=str(text),
                       device=device)

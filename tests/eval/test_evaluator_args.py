"""The LLM evaluators share one argument rule: ``cls(model_dir, data)`` or
``cls(data, modelset=ms)``; anything else is one EvalError naming both call forms."""

from __future__ import annotations

import pytest

from wsviz.errors import EvalError
from wsviz.eval.causal_lm import model_and_data
from wsviz.eval.multiple_choice import MultipleChoiceEvaluator
from wsviz.eval.perplexity import PerplexityEvaluator


class _Base:
    path = None


class _MemorySet:
    base = _Base()


def test_model_and_data_call_forms(tmp_path):
    class DiskSet:
        class base:  # noqa: N801 - mimics ModelSet.base
            path = tmp_path / "model.safetensors"

    assert model_and_data("E", "a file", "f", "dir", "data.txt", None) == ("dir", "data.txt")
    assert model_and_data("E", "a file", "f", "data.txt", None, DiskSet()) == (tmp_path,
                                                                              "data.txt")


@pytest.mark.parametrize("cls, what, arg", [
    (PerplexityEvaluator, "a text file", "text_file"),
    (MultipleChoiceEvaluator, "a JSONL file", "path")])
def test_missing_model_or_data(cls, what, arg):
    name = cls.__name__
    with pytest.raises(EvalError, match=rf"{name} needs a model directory and {what} "
                                        rf"\({name}\(model_dir, {arg}\) or {name}\({arg}, "
                                        r"modelset=ms\)\)"):
        cls("only-a-model-dir")
    with pytest.raises(EvalError, match="the model set's base is not a checkpoint on disk"):
        cls("data.txt", modelset=_MemorySet())

"""Evaluation fixtures: a tiny causal LM with an offline char tokenizer and a text file."""

from __future__ import annotations

import pytest

from tests.checkpoints import CHARS, save_char_tokenizer  # noqa: F401 - re-exported


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    """A tiny random Llama (vocab 128) saved with a char-level tokenizer."""
    from tests.checkpoints import make_llama

    out = tmp_path_factory.mktemp("lm")
    model = make_llama(seed=3)
    model.save_pretrained(str(out))
    save_char_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "sample.txt"
    p.write_text("the quick brown fox jumps over the lazy dog.\n" * 30, encoding="utf-8")
    return p

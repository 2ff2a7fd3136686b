"""Evaluation fixtures: a tiny causal LM with an offline char tokenizer and a text file."""

from __future__ import annotations

import pytest

CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"


def save_char_tokenizer(out):
    """A character-level tokenizer built offline (``tokenizers`` WordLevel over single
    characters), saved as a ``PreTrainedTokenizerFast`` into ``out``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>")
    fast.save_pretrained(str(out))
    return fast


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

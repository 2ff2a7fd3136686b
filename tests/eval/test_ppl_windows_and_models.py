"""Perplexity over the whole file with a sliding window (issue 19.3), ``wsviz evaluate`` on
model directories (19.4) and counts printed as counts (19.8), on a multi-block bf16 Llama
family with a char tokenizer kept apart."""

from __future__ import annotations

import math

import pytest
import torch

from tests.checkpoints import CHARS
from wsviz.cli import main
from wsviz.errors import EvalError
from wsviz.eval import PerplexityEvaluator
from wsviz.eval.perplexity import sliding_windows


@pytest.fixture(scope="module")
def long_text(tmp_path_factory):
    """~5,000 characters (= tokens with the char tokenizer): more than the old 4,096 cap."""
    g = torch.Generator().manual_seed(0)
    words = ["".join(CHARS[int(i)] for i in torch.randint(0, 26, (int(n),), generator=g))
             for n in torch.randint(1, 8, (900,), generator=g)]
    p = tmp_path_factory.mktemp("long") / "long.txt"
    p.write_text(" ".join(words) + ".\n", encoding="utf-8")
    return p


def guide_perplexity(model_dir, tokenizer, text: str, window: int, stride: int,
                     max_tokens=None):
    """The transformers perplexity guide's loop (labels -100 outside the new targets), with
    the loss weighted by the targets each window really predicts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt").input_ids[:, :max_tokens]
    seq_len = ids.size(1)
    nll, n, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + window, seq_len)
        trg_len = end - prev_end
        x = ids[:, begin:end]
        y = x.clone()
        y[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(x, labels=y).loss
        k = int((y[:, 1:] != -100).sum())
        nll += float(loss) * k
        n += k
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll / n), n, seq_len


def test_sliding_windows_cover_each_token_once():
    for n, c, s in ((10, 4, 4), (10, 4, 2), (9, 4, 3), (5, 8, 8), (100, 16, 5)):
        seen = []
        for a, b, k in sliding_windows(n, c, s):
            assert b - a <= c and k <= b - a - 1
            seen += list(range(b - k, b))
        assert len(seen) == len(set(seen)) and max(seen) == n - 1
        if s < c:
            assert seen == list(range(1, n))


@pytest.mark.parametrize("stride", [64, 40])
def test_whole_file_equals_the_guide_loop(llama_set_bf16, char_tokenizer, long_text, stride):
    text = long_text.read_text()
    ev = PerplexityEvaluator(llama_set_bf16.base, long_text, tokenizer=char_tokenizer,
                             stride=stride, batch_size=16)
    assert ev.context == 64 == ev.lm.max_length  # default window: the model's context
    res = ev.evaluate({})["long"]
    ppl, n, seq_len = guide_perplexity(llama_set_bf16.base, char_tokenizer, text, 64, stride)
    assert seq_len > 4096 and ev.file_tokens == seq_len
    assert res["tokens"] == n  # the whole file
    if stride < 64:
        assert n == seq_len - 1
    assert res["perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert f"the whole file; {n:,} tokens scored" in ev.description
    assert f"window(s) of 64 tokens, stride {stride}" in ev.description


def test_max_tokens_caps_and_is_said(llama_set_bf16, char_tokenizer, long_text):
    ev = PerplexityEvaluator(llama_set_bf16.base, long_text, tokenizer=char_tokenizer,
                             max_tokens=500, stride=32)
    ppl, n, _ = guide_perplexity(llama_set_bf16.base, char_tokenizer, long_text.read_text(),
                                 64, 32, max_tokens=500)
    res = ev.evaluate({})["long"]
    assert res["tokens"] == n == 499 and res["perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert "the first 500 of its" in ev.description
    for bad in ({"max_tokens": 0}, {"stride": -1}, {"context": 1.5}):
        with pytest.raises(EvalError, match="must be a positive integer"):
            PerplexityEvaluator(llama_set_bf16.base, long_text, tokenizer=char_tokenizer,
                                **bad)


def test_evaluate_model_directories(llama_set_bf16, char_tokenizer, ppl_text, capsys):
    s = llama_set_bf16
    opts = ["--eval", f"ppl:{ppl_text}", "--tokenizer", str(char_tokenizer), "--stride", "48"]
    assert main(["evaluate", str(s.fts[0]), *opts]) == 0
    out = capsys.readouterr().out
    ev = PerplexityEvaluator(s.fts[0], ppl_text, tokenizer=char_tokenizer, stride=48)
    want = ev.evaluate({})["story"]
    assert "# perplexity on story: the whole file;" in out and "stride 48" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("story")).split()
    assert float(row[1]) == pytest.approx(want["perplexity"], abs=1e-4)
    assert row[3] == str(int(want["tokens"]))  # a count: an integer
    assert "tokens ↑" not in out and "tokens: higher" not in out and ".0000" not in row[3]
    # several directories: a table, one row per model
    assert main(["evaluate", str(s.base), *map(str, s.fts), *opts]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(ln for ln in lines if ln.startswith("model"))
    assert "story perplexity ↓" in head and head.rstrip().endswith("story tokens")
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.split()
            and ln.split()[0] in map(str, [s.base, *s.fts])}
    assert len(rows) == 4
    assert float(rows[str(s.fts[0])][1]) == pytest.approx(want["perplexity"], abs=1e-4)
    assert len({r[1] for r in rows.values()}) == 4  # every model has its own perplexity
    # refusals: one clear line each
    assert main(["evaluate", str(s.base), "--tokenizer", str(char_tokenizer)]) == 2
    assert "--eval" in capsys.readouterr().err
    assert main(["evaluate", str(s.base), str(ppl_text), *opts]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["evaluate", str(s.base), "--sweep", "lambda=0,1", *opts]) == 2
    assert "drop --demo, --sweep" in capsys.readouterr().err


def test_batches_hold_a_bounded_number_of_tokens(llama_set_bf16, char_tokenizer, long_text,
                                                 monkeypatch):
    """Long windows are batched fewer at a time (fp32 logits stay bounded); same result."""
    import wsviz.eval.perplexity as ppl

    ev = PerplexityEvaluator(llama_set_bf16.base, long_text, tokenizer=char_tokenizer,
                             max_tokens=1000, batch_size=8)
    want = ev.evaluate({})["long"]["perplexity"]
    monkeypatch.setattr(ppl, "BATCH_TOKENS", 128)
    assert max(x.shape[0] * x.shape[1] for x, _ in ev._batches()) == 128
    assert ev.evaluate({})["long"]["perplexity"] == pytest.approx(want, rel=1e-6)

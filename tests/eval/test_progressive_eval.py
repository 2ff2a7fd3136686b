"""Progressive evaluation: partial estimates batch by batch, an exact final, cancelling."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F

from wsviz.eval import CallableEvaluator, PerplexityEvaluator
from wsviz.eval.progressive import (
    EvalCancelled,
    Partial,
    evaluate_iter,
    evaluate_progressive,
    mean_se,
)


def _ft_weights(llama_set_bf16):
    return {k: v for k, v in llama_set_bf16.ft_models[0].state_dict().items()}


def _old_perplexity(ev, weights):
    """The pre-streaming ``PerplexityEvaluator.evaluate`` loop, verbatim in its arithmetic."""
    params = ev.lm.params(weights)
    total = 0.0
    for batch, scored in ev._batches():
        logits = ev.lm.logits(params, batch.to(ev.device))[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                              batch[:, 1:].reshape(-1), reduction="none")
        total += float(nll[scored.reshape(-1)].double().sum())
    loss = total / ev.n_tokens
    return math.exp(loss), loss


@pytest.fixture(scope="module")
def ppl_ev(llama_set_bf16, char_tokenizer, ppl_text):
    return PerplexityEvaluator(llama_set_bf16.base, ppl_text, tokenizer=char_tokenizer,
                               context=16, batch_size=2)


def test_perplexity_partials_then_exact_final(ppl_ev, llama_set_bf16):
    w = _ft_weights(llama_set_bf16)
    parts = list(evaluate_iter(ppl_ev, w))
    n_batches = len(list(ppl_ev._batches()))
    assert n_batches >= 4 and len(parts) == n_batches
    assert [p.final for p in parts] == [False] * (n_batches - 1) + [True]
    assert [p.batch for p in parts] == list(range(1, n_batches + 1))
    dones = [p.done for p in parts]
    assert dones == sorted(dones) and 0 < dones[0] < 1 and dones[-1] == 1.0
    task = ppl_ev.tasks[0]
    full = ppl_ev.evaluate(w)
    assert parts[-1].results == full  # bit for bit, every float
    ppl, loss = _old_perplexity(ppl_ev, w)
    assert full[task]["perplexity"] == ppl and full[task]["loss"] == loss
    assert full[task]["tokens"] == ppl_ev.n_tokens
    # running estimates: finite, with finite standard errors once two tokens are in
    for p in parts[:-1]:
        r, s = p.results[task], p.se[task]
        assert r["tokens"] < ppl_ev.n_tokens
        assert math.isfinite(r["perplexity"]) and 0 < s["loss"] < math.inf
        assert s["perplexity"] == pytest.approx(r["perplexity"] * s["loss"])  # delta method
    assert parts[-1].se[task]["loss"] == 0.0  # the whole text: the value is exact
    # the SE shrinks as tokens come in (finite-population corrected)
    assert parts[-2].se[task]["loss"] < parts[0].se[task]["loss"]


def test_perplexity_running_estimate_is_the_prefix_mean(ppl_ev):
    """A partial's loss is the mean NLL of exactly the tokens scored so far."""
    task = ppl_ev.tasks[0]
    params = ppl_ev.lm.params({})
    nlls = []
    for batch, scored in ppl_ev._batches():
        logits = ppl_ev.lm.logits(params, batch)[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                              batch[:, 1:].reshape(-1), reduction="none")
        nlls.append(nll[scored.reshape(-1)].double())
    for k, p in enumerate(evaluate_iter(ppl_ev, {})):
        seen = torch.cat(nlls[:k + 1])
        assert p.results[task]["tokens"] == len(seen)
        assert p.results[task]["loss"] == pytest.approx(float(seen.mean()), rel=1e-12)


class _CountingEvent:
    """A cancel callable that turns true after ``after`` checks, counting checks."""

    def __init__(self, after: int):
        self.after, self.checks = after, 0

    def __call__(self) -> bool:
        self.checks += 1
        return self.checks > self.after


def test_cancel_stops_at_the_next_batch(ppl_ev, monkeypatch):
    runs = []
    orig = ppl_ev.lm.logits
    monkeypatch.setattr(ppl_ev.lm, "logits", lambda p, x: runs.append(1) or orig(p, x))
    cancel = _CountingEvent(after=2)
    got = []
    with pytest.raises(EvalCancelled, match="before batch 3"):
        for p in evaluate_iter(ppl_ev, {}, cancel=cancel):
            got.append(p)
    assert len(runs) == 2 and len(got) == 2 and not any(p.final for p in got)
    # a threading.Event set while consuming: the very next batch does not run
    ev_set = threading.Event()
    runs.clear()
    with pytest.raises(EvalCancelled):
        for _ in evaluate_iter(ppl_ev, {}, cancel=ev_set):
            ev_set.set()
    assert len(runs) == 1
    # an Event set before the start: nothing runs
    runs.clear()
    with pytest.raises(EvalCancelled, match="before batch 1"):
        next(evaluate_iter(ppl_ev, {}, cancel=ev_set))
    assert runs == []


def test_zoo_partials_then_exact_final(zoo):
    ev = zoo.evaluator()
    ev.batch_size = 150  # 597 test images: 4 batches
    w = zoo.weights("digit")
    parts = list(evaluate_iter(ev, w))
    assert len(parts) == 4 and [p.final for p in parts] == [False, False, False, True]
    assert [round(p.done * ev.n) for p in parts] == [150, 300, 450, 597]
    full = ev.evaluate(w)
    assert parts[-1].results == full
    assert full["digit"]["normalized_accuracy"] == 1.0  # references go the same way
    for t in zoo.tasks:
        first = parts[0]
        assert 0 <= first.results[t]["accuracy"] <= 1
        assert math.isfinite(first.se[t]["loss"]) and first.se[t]["accuracy"] >= 0
        assert parts[-1].se[t] == {"accuracy": 0.0, "loss": 0.0, "normalized_accuracy": 0.0}
        # 150 images: the SE of a proportion, corrected for the 597-image split
        a = first.results[t]["accuracy"]
        fpc = (ev.n - 150) / (ev.n - 1)
        assert first.se[t]["accuracy"] == pytest.approx(
            math.sqrt(a * (1 - a) / 149 * fpc), rel=1e-9)
    # the batch size does not change what is measured beyond float rounding of the forward pass
    one = zoo.evaluator()
    one.batch_size = 10_000
    whole = one.evaluate(w)
    for t in zoo.tasks:
        assert whole[t]["accuracy"] == pytest.approx(full[t]["accuracy"], abs=2.01 / ev.n)
        assert whole[t]["loss"] == pytest.approx(full[t]["loss"], rel=1e-4)


def test_zoo_cancel(zoo):
    ev = zoo.evaluator()
    ev.batch_size = 200
    cancel = _CountingEvent(after=1)
    got = []
    with pytest.raises(EvalCancelled):
        for p in evaluate_iter(ev, zoo.weights("base"), cancel=cancel):
            got.append(p)
    assert len(got) == 1 and cancel.checks == 2


def test_generic_fallback_for_a_user_callable():
    calls = []

    def score(weights):
        calls.append(1)
        return {"acc": 0.75}

    ev = CallableEvaluator(score, task="mine")
    parts = list(evaluate_iter(ev, {"a": torch.zeros(2)}))
    assert len(parts) == 1 and isinstance(parts[0], Partial)
    p = parts[0]
    assert p.final and p.done == 1.0 and p.results == {"mine": {"acc": 0.75}}
    assert math.isnan(p.se["mine"]["acc"])
    seen = []
    assert evaluate_progressive(ev, {}, on_partial=seen.append) == {"mine": {"acc": 0.75}}
    assert len(seen) == 1
    stop = threading.Event()
    stop.set()
    with pytest.raises(EvalCancelled):
        list(evaluate_iter(ev, {}, cancel=stop))
    assert len(calls) == 2  # the cancelled one never called the function


def test_mean_se():
    xs = [0.5, 1.5, 2.0, 4.0]
    n, pop = len(xs), 10
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    got = mean_se(sum(xs), sum(x * x for x in xs), n, pop)
    assert got == pytest.approx(math.sqrt(var / n * (pop - n) / (pop - 1)), rel=1e-12)
    assert mean_se(1.0, 1.0, 1, pop) != mean_se(1.0, 1.0, 1, pop)  # NaN: one value
    assert mean_se(10.0, 30.0, pop, pop) == 0.0


def test_cli_progress_bar_on_a_terminal(llama_set_bf16, char_tokenizer, ppl_text, capsys,
                                        monkeypatch):
    """``wsviz evaluate`` draws the running estimate ± SE on stderr when it is a terminal;
    stdout is the same as with ``--no-progress``."""
    import sys

    from wsviz.cli import main

    opts = ["evaluate", str(llama_set_bf16.fts[0]), "--eval", f"ppl:{ppl_text}",
            "--tokenizer", str(char_tokenizer), "--stride", "8"]
    assert main([*opts, "--no-progress"]) == 0
    plain = capsys.readouterr()
    assert "±" not in plain.err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(opts) == 0
    barred = capsys.readouterr()
    assert barred.out == plain.out
    assert "story perplexity" in barred.err and "±" in barred.err and "%|" in barred.err


@pytest.mark.parametrize("context,stride,batch", [(16, 16, 2), (16, 5, 3), (64, 7, 100)])
def test_batch_count_matches_the_batches(llama_set_bf16, char_tokenizer, ppl_text, context,
                                         stride, batch):
    ev = PerplexityEvaluator(llama_set_bf16.base, ppl_text, tokenizer=char_tokenizer,
                             context=context, stride=stride, batch_size=batch)
    assert ev._n_batches() == len(list(ev._batches()))

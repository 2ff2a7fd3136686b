"""The LLM evaluators: multiple-choice log-likelihood (checked by hand and against lm-eval-harness
itself), lm-eval tasks from a local YAML, the tokenizer option, and the install messages."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from tests.checkpoints import write_lm_eval_task, write_mc_jsonl
from wsviz.errors import EvalError
from wsviz.eval import make_evaluator
from wsviz.eval.lm_harness import LMEvalEvaluator, metric_key
from wsviz.eval.multiple_choice import MultipleChoiceEvaluator


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory):
    return write_mc_jsonl(tmp_path_factory.mktemp("mc") / "quiz.jsonl", n=10)


@pytest.fixture(scope="module")
def mc(lm_dir, mc_file):
    return MultipleChoiceEvaluator(lm_dir, mc_file, batch_size=7)


def _perturbed(lm_dir, scale=0.3):
    from safetensors.torch import load_file

    sd = load_file(str(lm_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def test_mc_loglikelihood_matches_hand_computation(mc, lm_dir):
    """Choice log-likelihood = sum of log p(choice token | everything before), by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(lm_dir)).eval()
    tok = mc.lm.tokenizer
    q = mc.questions[0]
    lls = mc.loglikelihoods({})
    for j, choice in enumerate(q["choices"]):
        ctx = tok.encode(q["context"])
        cont = tok.encode(q["context"] + " " + choice)[len(ctx):]
        ids = torch.tensor(ctx + cont)
        with torch.no_grad():
            logp = F.log_softmax(model(ids[None]).logits[0, :-1].float(), -1)
        want = float(logp[len(ctx) - 1:].gather(-1, ids[len(ctx):, None]).sum())
        assert lls[j] == pytest.approx(want, abs=1e-4)
    res = mc.evaluate({})
    assert list(res) == ["quiz"] and set(res["quiz"]) == {"accuracy", "acc_norm"}
    # accuracy from the log-likelihoods, as defined
    hits, pos = 0, 0
    for q in mc.questions:
        ll = lls[pos:pos + len(q["choices"])]
        pos += len(q["choices"])
        hits += max(range(len(ll)), key=ll.__getitem__) == q["answer"]
    assert res["quiz"]["accuracy"] == pytest.approx(hits / len(mc.questions))
    assert [s.name for s in mc.metrics] == ["accuracy", "acc_norm"]


def test_mc_and_lm_eval_agree_on_base_and_merged_weights(mc, lm_dir, mc_file, tmp_path):
    """lm-eval-harness on a local task YAML over the same JSONL scores exactly as wsviz's
    multiple-choice evaluator, for the directory's weights and for swapped-in ones; the
    swap is undone after each evaluation."""
    tasks = write_lm_eval_task(tmp_path / "tasks", "quiz_task", mc_file)
    le = LMEvalEvaluator(lm_dir, "quiz_task", include=tasks, batch_size=4)
    assert le.tasks == ["quiz_task"]
    assert [(s.name, s.higher_is_better, s.unit) for s in le.metrics] == [
        ("acc", True, "fraction"), ("acc_norm", True, "fraction")]
    other = _perturbed(lm_dir)
    for weights in ({}, other):
        a = mc.evaluate(weights)["quiz"]
        b = le.evaluate(weights)["quiz_task"]
        assert b == {"acc": a["accuracy"], "acc_norm": a["acc_norm"]}
    assert mc.evaluate(other) != mc.evaluate({})  # the weights really matter
    assert le.evaluate({}) == {"quiz_task": {"acc": mc.evaluate({})["quiz"]["accuracy"],
                                             "acc_norm": mc.evaluate({})["quiz"]["acc_norm"]}}
    ref = dict(le.lm.model.named_parameters())["model.norm.weight"]
    assert torch.equal(ref.data, le.lm.model.state_dict()["model.norm.weight"])


def test_lm_eval_errors(lm_dir, tmp_path, mc_file):
    tasks = write_lm_eval_task(tmp_path / "tasks", "quiz_task", mc_file)
    with pytest.raises(EvalError, match="unknown lm-eval task.*no_such_task"):
        LMEvalEvaluator(lm_dir, "no_such_task", include=tasks)
    with pytest.raises(EvalError, match="does not exist"):
        LMEvalEvaluator(lm_dir, "quiz_task", include=tmp_path / "missing")
    with pytest.raises(EvalError, match="at least one task"):
        LMEvalEvaluator(lm_dir, " , ", include=tasks)
    bad = write_lm_eval_task(tmp_path / "bad", "broken_task", tmp_path / "nope.jsonl")
    with pytest.raises(EvalError, match="could not load.*offline"):
        LMEvalEvaluator(lm_dir, "broken_task", include=bad)
    assert metric_key("acc,none") == "acc" and metric_key("acc_stderr,none") is None
    assert metric_key("alias") is None and metric_key("exact_match,strict") == "exact_match,strict"


def test_mc_bad_files(lm_dir, tmp_path):
    cases = {
        "notjson.jsonl": ("{oops", "line 1|:1: not a JSON"),
        "missing.jsonl": ('{"context": "a", "choices": ["b", "c"]}', "missing field.*answer"),
        "range.jsonl": ('{"context": "a", "choices": ["b", "c"], "answer": 5}', "answer 5"),
        "one.jsonl": ('{"context": "a", "choices": ["b"], "answer": 0}', "at least 2"),
        "empty.jsonl": ("\n\n", "no questions"),
    }
    for name, (text, msg) in cases.items():
        p = tmp_path / name
        p.write_text(text + "\n")
        with pytest.raises(EvalError, match=msg):
            MultipleChoiceEvaluator(lm_dir, p)
    with pytest.raises(EvalError, match="does not exist"):
        MultipleChoiceEvaluator(lm_dir, tmp_path / "absent.jsonl")
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"context": "a", "choices": ["b", "c"], "answer": "c"}\n')
    ev = MultipleChoiceEvaluator(lm_dir, ok)  # the answer given as the choice text
    assert ev.questions[0]["answer"] == 1
    with pytest.raises(EvalError, match="not a parameter"):
        ev.evaluate({"encoder.weight": torch.zeros(2)})
    with pytest.raises(EvalError, match="shape"):
        ev.evaluate({"lm_head.weight": torch.zeros(3, 3)})


def test_tokenizer_elsewhere_and_specs(llama_set, char_tokenizer, ppl_text, tmp_path,
                                       mc_file):
    """The llama_set checkpoints carry no tokenizer: --tokenizer points at one elsewhere
    (a directory or its tokenizer.json); without it the error names the option."""
    from wsviz.eval import PerplexityEvaluator
    from wsviz.io import ModelSet

    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts])
    with pytest.raises(EvalError, match="--tokenizer"):
        make_evaluator(f"ppl:{ppl_text}", ms)
    ev = make_evaluator(f"ppl:{ppl_text}", ms, tokenizer=char_tokenizer)
    assert isinstance(ev, PerplexityEvaluator) and ev.model_dir == llama_set.base
    ev2 = make_evaluator(str(ppl_text), ms, tokenizer=char_tokenizer / "tokenizer.json")
    assert ev2.evaluate({}) == ev.evaluate({})
    mc = make_evaluator(f"mc:{mc_file}", ms, tokenizer=char_tokenizer)
    assert isinstance(mc, MultipleChoiceEvaluator) and mc.tasks == ["quiz"]
    tasks = write_lm_eval_task(tmp_path / "t", "quiz_task", mc_file)
    le = make_evaluator("lm-eval:quiz_task", ms, tokenizer=char_tokenizer,
                        lm_eval_include=tasks, lm_eval_limit=4)
    assert isinstance(le, LMEvalEvaluator) and le.limit == 4
    with pytest.raises(EvalError, match="tokenizer .*does not exist"):
        make_evaluator(f"ppl:{ppl_text}", ms, tokenizer=tmp_path / "nope")
    with pytest.raises(EvalError, match="JSONL file .* does not exist"):
        make_evaluator(f"mc:{tmp_path / 'x.jsonl'}", ms)
    with pytest.raises(EvalError, match="no model directory"):
        make_evaluator(f"mc:{mc_file}")
    # --metric declares the primary metric (with a direction) on any evaluator
    ev3 = make_evaluator(f"ppl:{ppl_text}", ms, tokenizer=char_tokenizer, metric="loss")
    assert ev3.metrics[0].name == "loss" and not ev3.metrics[0].higher_is_better


def test_missing_packages_give_install_commands(lm_dir, ppl_text, monkeypatch, mc_file):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(EvalError, match=r"pip install 'wsviz\[lm-eval\]'"):
        LMEvalEvaluator(lm_dir, "x")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(EvalError, match=r"perplexity needs the 'transformers'.*wsviz\[llm\]"):
        make_evaluator(f"ppl:{ppl_text}", model_dir=lm_dir)
    with pytest.raises(EvalError, match=r"transformers.*wsviz\[llm\]"):
        MultipleChoiceEvaluator(lm_dir, mc_file)

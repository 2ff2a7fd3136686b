"""CallableEvaluator (user functions) and PerplexityEvaluator (HF causal LMs)."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsviz.errors import EvalError
from wsviz.eval import CallableEvaluator, PerplexityEvaluator


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("wsviz_test_user_eval")

    def good(weights):
        return {"t1": {"score": torch.tensor(0.5), "n": 3}, "t2": {"score": np.float32(0.25)}}

    def flat(weights):
        return {"acc": 0.75, "loss": np.array(1.5)}

    def scalar(weights):
        return len(weights)

    def boom(weights):
        raise ValueError("my metric exploded")

    def text(weights):
        return "great"

    def nested_bad(weights):
        return {"t1": {"score": "high"}}

    def bool_(weights):
        return {"ok": True}

    for f in (good, flat, scalar, boom, text, nested_bad, bool_):
        setattr(mod, f.__name__, f)
    mod.not_callable = 3
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def test_callable_results(user_module):
    w = {"a": torch.zeros(2)}
    assert CallableEvaluator(f"{user_module}:good").evaluate(w) == {
        "t1": {"score": 0.5, "n": 3.0}, "t2": {"score": 0.25}}
    ev = CallableEvaluator(f"{user_module}:flat", task="mine")
    assert ev.evaluate(w) == {"mine": {"acc": 0.75, "loss": 1.5}}
    assert ev.tasks == ["mine"]
    assert CallableEvaluator(f"{user_module}:scalar").evaluate(w) == {"user": {"score": 1.0}}
    assert CallableEvaluator(lambda w: 2.0).evaluate(w) == {"user": {"score": 2.0}}


def test_callable_errors_keep_message(user_module):
    w = {}
    with pytest.raises(EvalError, match="ValueError: my metric exploded"):
        CallableEvaluator(f"{user_module}:boom").evaluate(w)
    with pytest.raises(EvalError, match="str 'great'"):
        CallableEvaluator(f"{user_module}:text").evaluate(w)
    with pytest.raises(EvalError, match="t1/score"):
        CallableEvaluator(f"{user_module}:nested_bad").evaluate(w)
    with pytest.raises(EvalError, match="bool"):
        CallableEvaluator(f"{user_module}:bool_").evaluate(w)
    # the evaluator stays usable after a failure ("the session continues")
    ev = CallableEvaluator(f"{user_module}:boom")
    for _ in range(2):
        with pytest.raises(EvalError):
            ev.evaluate(w)


def test_callable_spec_errors(user_module, tmp_path):
    with pytest.raises(EvalError, match="module:function"):
        CallableEvaluator("no_colon_here")
    with pytest.raises(EvalError, match="cannot be imported"):
        CallableEvaluator("wsviz_no_such_module_xyz:f")
    with pytest.raises(EvalError, match="no attribute"):
        CallableEvaluator(f"{user_module}:missing")
    with pytest.raises(EvalError, match="not callable"):
        CallableEvaluator(f"{user_module}:not_callable")
    with pytest.raises(EvalError, match="does not exist"):
        CallableEvaluator(f"{tmp_path}/nope.py:f")


def test_callable_from_file(tmp_path):
    f = tmp_path / "my_eval.py"
    f.write_text("names = None\ndef score(w):\n    return {'task': {'norm': float(sum(t.sum() "
                 "for t in w.values()))}}\n")
    ev = CallableEvaluator(f"{f}:score")
    assert ev.evaluate({"x": torch.ones(3)}) == {"task": {"norm": 3.0}}
    f2 = tmp_path / "broken.py"
    f2.write_text("raise RuntimeError('import-time failure')\n")
    with pytest.raises(EvalError, match="import-time failure"):
        CallableEvaluator(f"{f2}:score")


def _hand_ppl(model_dir, text, context, model=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), context):
            w = ids[i:i + context]
            if len(w) < 2:
                continue
            logits = model(w[None]).logits[0, :-1]
            total += float(F.cross_entropy(logits, w[1:], reduction="sum"))
            n += len(w) - 1
    return math.exp(total / n), n, model


@pytest.fixture(scope="module")
def hand_ppl(lm_dir, text_file):
    return _hand_ppl(lm_dir, text_file.read_text(), 48)


def test_perplexity_matches_hand_computation(lm_dir, text_file, hand_ppl):
    ev = PerplexityEvaluator(lm_dir, text_file, context=48, batch_size=4)
    assert ev.tasks == ["sample"]
    from safetensors.torch import load_file

    weights = load_file(str(lm_dir / "model.safetensors"))
    res = ev.evaluate(weights)["sample"]
    ppl, n, _ = hand_ppl
    assert res["tokens"] == n
    assert res["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert res["loss"] == pytest.approx(math.log(ppl), rel=1e-4)
    assert ev.evaluate({})["sample"]["perplexity"] == pytest.approx(ppl, rel=1e-4)


def test_perplexity_uses_given_weights(lm_dir, text_file, tmp_path, hand_ppl):
    import copy

    other = copy.deepcopy(hand_ppl[2])  # the lm_dir model, loaded by hand_ppl
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ev = PerplexityEvaluator(lm_dir, text_file, context=48)
    sd = {k: v for k, v in other.state_dict().items()}
    got = ev.evaluate(sd)["sample"]["perplexity"]
    ref, _, _ = _hand_ppl(lm_dir, text_file.read_text(), 48, model=other)
    assert ref != pytest.approx(hand_ppl[0], rel=1e-3)  # a different model really
    assert got == pytest.approx(ref, rel=1e-4)
    # partial weights: only one tensor swapped; the model itself is never modified
    name = "model.layers.0.mlp.down_proj.weight"
    ev.evaluate({name: torch.zeros_like(sd[name])})
    base = ev.evaluate({})["sample"]["perplexity"]
    assert base == pytest.approx(hand_ppl[0], rel=1e-4)


def test_perplexity_bad_input(lm_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(EvalError, match="empty"):
        PerplexityEvaluator(lm_dir, empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(EvalError, match="not UTF-8.*offset 3"):
        PerplexityEvaluator(lm_dir, latin)
    with pytest.raises(EvalError, match="does not exist"):
        PerplexityEvaluator(lm_dir, tmp_path / "missing.txt")
    one = tmp_path / "one.txt"
    one.write_text("a")
    with pytest.raises(EvalError, match="fewer than 2 tokens"):
        PerplexityEvaluator(lm_dir, one)
    nodir = tmp_path / "notamodel"
    nodir.mkdir()
    good = tmp_path / "good.txt"
    good.write_text("hello there")
    with pytest.raises(EvalError, match="tokenizer|causal LM"):
        PerplexityEvaluator(nodir, good)


def test_perplexity_bad_weights(lm_dir, text_file):
    ev = PerplexityEvaluator(lm_dir, text_file, context=48)
    with pytest.raises(EvalError, match="not a parameter"):
        ev.evaluate({"encoder.layers.0.weight": torch.zeros(2)})
    with pytest.raises(EvalError, match="shape"):
        ev.evaluate({"lm_head.weight": torch.zeros(3, 3)})


def test_make_evaluator(lm_dir, text_file, user_module, tmp_path):
    from wsviz.eval import make_evaluator
    from wsviz.io import ModelSet

    assert isinstance(make_evaluator(f"{user_module}:flat"), CallableEvaluator)
    ms = ModelSet.open(str(lm_dir), [str(lm_dir)], labels=["same"])
    ev = make_evaluator(str(text_file), modelset=ms)
    assert isinstance(ev, PerplexityEvaluator) and ev.model_dir == lm_dir
    ev2 = PerplexityEvaluator(text_file, modelset=ms)  # the call form wsviz.ui uses
    assert ev2.model_dir == lm_dir and ev2.tasks == ["sample"]
    with pytest.raises(EvalError, match="needs a model directory"):
        PerplexityEvaluator(text_file)
    with pytest.raises(EvalError, match="no such file"):
        make_evaluator(str(tmp_path / "missing.txt"))
    with pytest.raises(EvalError, match="no model directory"):
        make_evaluator(str(text_file))


def test_callable_declares_metrics(tmp_path):
    from wsviz.eval.metrics import primary_metric

    f = tmp_path / "declared.py"
    f.write_text("def score(w):\n    return {'val_loss': 0.7, 'acc': 0.6}\n"
                 "score.metrics = ['val_loss:min', 'acc']\n"
                 "def bad(w):\n    return 1.0\nbad.metrics = [3]\n")
    ev = CallableEvaluator(f"{f}:score")
    assert [(s.name, s.higher_is_better) for s in ev.metrics] == [("val_loss", False),
                                                                  ("acc", True)]
    assert primary_metric(ev).name == "val_loss"
    assert CallableEvaluator(lambda w: 1.0, metrics="score:min").metrics[0].higher_is_better \
        is False
    with pytest.raises(EvalError, match="declared.py:bad.*MetricSpec"):
        CallableEvaluator(f"{f}:bad")

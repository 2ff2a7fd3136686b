"""Pre-trained / individual references for any evaluator (wsviz.eval.references)."""

from __future__ import annotations

import pytest

from wsviz.errors import EvalError
from wsviz.eval.references import match_tasks, metric_of, reference_results, reference_rows


def test_match_tasks_by_name():
    assert match_tasks(["digit", "parity"], ["parity", "digit"]) == {
        "digit": "digit", "parity": "parity"}
    # case / punctuation, then a unique label containing the task
    assert match_tasks(["arc_easy", "HellaSwag"], ["llama-ft-arc-easy", "hellaswag"]) == {
        "arc_easy": "llama-ft-arc-easy", "HellaSwag": "hellaswag"}
    assert match_tasks(["story"], ["ft0", "ft1"]) == {}
    # ambiguous containment matches nothing; a label serves one task only
    assert match_tasks(["arc"], ["arc-a", "arc-b"]) == {}
    assert match_tasks(["a", "A"], ["a"]) == {"a": "a"}


def test_reference_rows_matched_and_unmatched():
    per = {"base": {"t1": {"acc": 0.5, "loss": 2.0}, "t2": {"acc": 0.4, "loss": 2.5}},
           "t1": {"t1": {"acc": 0.9, "loss": 0.5}, "t2": {"acc": 0.3, "loss": 3.0}},
           "t2": {"t1": {"acc": 0.2, "loss": 3.5}, "t2": {"acc": 0.8, "loss": 0.7}}}
    rows = reference_rows(per, "loss")
    assert rows == {"pretrained": {"t1": 2.0, "t2": 2.5}, "individual": {"t1": 0.5, "t2": 0.7}}
    # fine-tunes that are not the tasks' own: each becomes its own row
    per2 = {"base": {"story": {"ppl": 40.0}}, "ft0": {"story": {"ppl": 30.0}},
            "ft1": {"story": {"ppl": 50.0}}}
    assert reference_rows(per2, "ppl") == {"pretrained": {"story": 40.0}, "individual": {},
                                           "ft:ft0": {"story": 30.0}, "ft:ft1": {"story": 50.0}}
    with pytest.raises(EvalError, match=r"reports \['ppl'\], not 'acc'"):
        reference_rows(per2, "acc")
    assert metric_of({"a": {"x": 1.0}, "b": {"y": 2.0}}, "y") == {"b": 2.0}


def test_generic_references_equal_the_zoo_evaluators_own(zoo):
    """Evaluating the base and each fine-tune through evaluate() gives the zoo evaluator's own
    pre-trained / individual accuracies (the zoo's fine-tunes are named after its tasks)."""
    ev = zoo.evaluator(n_samples=200)
    own = ev.references()
    rows = reference_rows(reference_results(ev, zoo.modelset()), "accuracy")
    assert set(rows) == {"pretrained", "individual"}
    for kind in ("pretrained", "individual"):
        assert rows[kind] == pytest.approx(own[kind])
    loss = reference_rows(reference_results(ev, zoo.modelset()), "loss")
    assert all(loss["individual"][t] < loss["pretrained"][t] for t in zoo.tasks if t != "rot90")


def test_perplexity_references_on_llama_family(llama_set, char_tokenizer, ppl_text):
    """One text, three fine-tunes named ft0..ft2: a pre-trained row and one row per fine-tune,
    each equal to the evaluator run on that checkpoint's own weights."""
    from safetensors.torch import load_file

    from wsviz.eval import PerplexityEvaluator
    from wsviz.io import ModelSet

    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts])
    ev = PerplexityEvaluator(llama_set.base, ppl_text, tokenizer=char_tokenizer, context=32)
    rows = reference_rows(reference_results(ev, ms), "perplexity")
    assert list(rows) == ["pretrained", "individual", "ft:ft0", "ft:ft1", "ft:ft2"]
    assert rows["individual"] == {}
    assert rows["pretrained"]["story"] == pytest.approx(ev.evaluate({})["story"]["perplexity"])
    sd = load_file(str(llama_set.fts[1] / "model.safetensors"))
    assert rows["ft:ft1"]["story"] == pytest.approx(ev.evaluate(sd)["story"]["perplexity"])
    assert rows["ft:ft1"]["story"] != pytest.approx(rows["pretrained"]["story"], rel=1e-6)

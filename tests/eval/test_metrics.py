"""Metric declarations: direction, inference from names, formatting."""

import math

import pytest

from wsviz.errors import EvalError
from wsviz.eval.metrics import KNOWN, MetricSpec, infer_spec, metric_specs, primary_metric


def test_direction_and_best_worst():
    ppl = KNOWN["perplexity"]
    assert not ppl.higher_is_better and ppl.direction == "minimize"
    assert ppl.better(10.0, 12.0) and not ppl.better(12.0, 10.0)
    assert ppl.best([12.0, 10.0, math.nan]) == 10.0 and ppl.worst([12.0, 10.0]) == 12.0
    acc = KNOWN["accuracy"]
    assert acc.best([0.5, 0.9]) == 0.9 and acc.worst([0.5, 0.9]) == 0.5
    assert acc.score(0.3) == 0.3 and ppl.score(3.0) == -3.0
    assert math.isnan(acc.best([math.nan]))


def test_infer_from_names():
    assert not infer_spec("val_loss").higher_is_better
    assert not infer_spec("eval_perplexity").higher_is_better
    assert infer_spec("acc,none").unit == "fraction"
    assert infer_spec("bleu").higher_is_better


def test_format():
    assert KNOWN["accuracy"].format(0.873) == "87.3 %"
    assert KNOWN["perplexity"].format(203201.0) == "203201"
    assert KNOWN["loss"].format(1.23456) == "1.23 nats"
    assert KNOWN["accuracy"].format(math.nan) == "–"


def test_declared_first_then_inferred():
    class Ev:
        metrics = [MetricSpec("score", False, "", "lower is better here")]

    specs = metric_specs(Ev(), {"t": {"score": 1.0, "accuracy": 0.5}})
    assert list(specs) == ["score", "accuracy"] and not specs["score"].higher_is_better
    assert primary_metric(Ev()).name == "score"
    assert primary_metric(object()).name == "accuracy"
    assert primary_metric(Ev(), name="perplexity").higher_is_better is False


def test_bad_declaration():
    class Ev:
        metrics = [42]

    with pytest.raises(EvalError, match="MetricSpec"):
        metric_specs(Ev())

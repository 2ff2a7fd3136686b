"""Metric declarations: direction, inference from names, formatting."""

import math

import numpy as np
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
    assert KNOWN["loss"].format(1.23456) == "1.235 nats"
    assert KNOWN["perplexity"].format(127.345) == "127.3"
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


def test_parse_and_declare_metric():
    from wsviz.eval.metrics import declare_metric, metric_spec, parse_metric

    assert parse_metric("score:min") == ("score", False)
    assert parse_metric("val_acc:max") == ("val_acc", True)
    assert parse_metric("perplexity") == ("perplexity", None)
    for bad in (":min", "score:down", ""):
        with pytest.raises(EvalError, match="metric"):
            parse_metric(bad)
    assert metric_spec("acc:min").higher_is_better is False
    assert metric_spec("acc:min").unit == "fraction"  # unit kept from the known metric

    class Ev:
        metrics = ["accuracy", MetricSpec("tokens", True, "", "tokens scored")]

    ev = Ev()
    assert declare_metric(ev, "tokens").doc == "tokens scored"  # own declaration kept
    assert [s.name for s in ev.metrics] == ["tokens", "accuracy"]
    declare_metric(ev, "score:min")
    assert primary_metric(ev).name == "score" and not primary_metric(ev).higher_is_better
    assert len(ev.metrics) == 3


def test_normalized_and_pareto_follow_direction():
    from wsviz.eval.pareto import pareto_mask

    acc, ppl = KNOWN["accuracy"], KNOWN["perplexity"]
    assert acc.normalized(0.45, 0.9) == pytest.approx(0.5)
    assert ppl.normalized(20.0, 10.0) == pytest.approx(0.5)  # twice the fine-tune's ppl
    assert math.isnan(acc.normalized(0.5, 0.0))
    avg, worst = [10.0, 12.0, 9.0, 11.0], [14.0, 13.0, 15.0, 16.0]
    # lower is better: (9, 15) best mean, (12, 13) best worst, (10, 14) between, (11, 16) not
    pts = list(zip(avg, worst))
    assert pareto_mask(pts, [ppl.direction] * 2).tolist() == [True, True, True, False]
    assert pareto_mask(pts, [acc.direction] * 2).tolist() == [False, True, False, True]
    assert pareto_mask([[1.0, 1.0], [math.nan, 2.0]], ["maximize"] * 2).tolist() == [True, False]
    assert pareto_mask(np.zeros((0, 2)), ["maximize"] * 2).tolist() == []
    assert ppl.labelled("mean perplexity") == "mean perplexity (lower is better)"
    assert acc.arrow == "↑" and ppl.arrow == "↓"

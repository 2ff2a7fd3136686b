"""The search loop in-process: directions from the evaluator (perplexity is minimised),
persistence and resume, constraints, MAP's surrogates, sampler rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.search.conftest import lm_context, lm_recipe
from wsviz.errors import WsvizError
from wsviz.eval import evaluate_recipe
from wsviz.eval.metrics import MetricSpec
from wsviz.search import InlineBackend, Objectives, Search, SearchSpace, load_result, pareto_mask

SPACE = {"params": {"lambda": {"low": 0.0, "high": 2.0},
                    "density": {"low": 0.2, "high": 1.0, "groups": ["attn", "mlp"]}}}


@pytest.fixture(scope="module")
def lm_open(lm_set):
    s, text = lm_set
    return lm_context(s, text).open()


def _space(s, oc, d=SPACE, method="ties"):
    return SearchSpace.from_dict(d, lm_recipe(s, method), oc.merger.names,
                                 oc.merger.modelset.names)


def test_pareto_mask_follows_directions():
    v = np.array([[0.9, 10.0], [0.8, 5.0], [0.7, 6.0], [0.9, 12.0], [np.nan, 1.0]])
    assert pareto_mask(v, ["maximize", "minimize"]).tolist() == [True, True, False, False,
                                                                 False]
    assert pareto_mask(v, ["minimize", "maximize"]).tolist() == [False, False, True, True,
                                                                 False]
    assert pareto_mask(v, ["maximize", "minimize"], [False, True, True, True, True]).tolist() \
        == [False, True, False, True, False]


def test_perplexity_is_minimised_and_study_resumes(lm_set, lm_open, tmp_path):
    s, _ = lm_set
    oc = lm_open
    db = tmp_path / "ppl.db"
    space = _space(s, oc)
    search = Search(space, InlineBackend(oc.merger, oc.evaluator), storage=db, sampler="tpe")
    try:
        res = search.run(6)
    finally:
        search.close()
    assert search.resolved.names == ["perplexity:text"]
    assert search.resolved.directions == ["minimize"]
    df = res.frame()
    assert (df.state == "COMPLETE").sum() == 6
    best = res.best()
    assert best["perplexity:text"] == df["perplexity:text"].min()
    assert df.loc[df.pareto, "number"].tolist() == [best["number"]]
    # each trial's stored recipe reproduces its measured value
    rec = res.recipe(int(best["number"]))
    again = evaluate_recipe(rec, oc.evaluator, oc.merger)["text"]["perplexity"]
    assert again == pytest.approx(best["perplexity:text"], rel=1e-6)
    # resume: 3 more trials are evaluated, none of the first 6 again
    search2 = Search(space, InlineBackend(oc.merger, oc.evaluator), storage=db, sampler="tpe")
    try:
        res2 = search2.run(9)
    finally:
        search2.close()
    assert search2.evaluated == 3
    df2 = res2.frame()
    assert len(df2) == 9
    params = df2.filter(like="param:").round(12).astype(str).agg("|".join, axis=1)
    assert params.is_unique  # the resumed seeded sampler does not replay its first draws
    # a different space on the same study is refused
    other = _space(s, oc, {"params": {"lambda": {"low": 0.0, "high": 2.0}}})
    with pytest.raises(WsvizError, match="different dims"):
        Search(other, InlineBackend(oc.merger, oc.evaluator), storage=db).open()
    ta = _space(s, oc, method="task_arithmetic")  # same dims, another starting recipe
    with pytest.raises(WsvizError, match="a different starting recipe"):
        Search(ta, InlineBackend(oc.merger, oc.evaluator), storage=db).open()
    assert load_result(db).frame().shape[0] == 9


def test_bf16_checkpoints_and_min_pretrained_constraint(lm_set_bf16):
    s, text = lm_set_bf16
    oc = lm_context(s, text).open()
    assert oc.merger.modelset.info(oc.merger.names[0]).dtype == torch.bfloat16
    space = _space(s, oc, {"params": {"lambda": {"low": 0.0, "high": 3.0}},
                           "constraints": {"min_pretrained": True}}, "task_arithmetic")
    search = Search(space, InlineBackend(oc.merger, oc.evaluator), sampler="tpe")
    res = search.run(6)
    pre = search.probe["pretrained"]["text"]["perplexity"]
    df = res.frame()
    assert len(df) == 6 and df.state.eq("COMPLETE").all()
    # feasible <=> no worse than the pre-trained (base) perplexity
    assert (df.feasible == (df["perplexity:text"] <= pre)).all()
    assert not df.loc[~df.feasible, "pareto"].any()
    best = res.best()
    if best is not None:
        assert best["perplexity:text"] <= pre


class QuadraticEvaluator:
    """Per task j: sqdist = ||merged - fine-tune_j||² over all tensors: with task arithmetic
    (merged = base + λ Σ w_i τ_i) an exact quadratic in the weights w."""

    def __init__(self, merger):
        self.merger = merger
        self.names = None
        self.tasks = list(merger.labels)
        self.metrics = [MetricSpec("sqdist", False)]

    def evaluate(self, weights):
        out = {}
        for j, t in enumerate(self.tasks):
            tot = 0.0
            for n, w in weights.items():
                ft = self.merger.base(n) + self.merger.deltas(n)[j]
                tot += float((w.double() - ft.double()).pow(2).sum())
            out[t] = {"sqdist": tot}
        return out


def test_map_surrogates_predict_an_exact_quadratic(lm_set, lm_open):
    s, _ = lm_set
    oc = lm_open
    ev = QuadraticEvaluator(oc.merger)
    space = _space(s, oc, {"params": {"weight": {"low": 0.0, "high": 1.5, "per_model": True}}},
                   "task_arithmetic")
    search = Search(space, InlineBackend(oc.merger, ev), sampler="map", map_design=12)
    res = search.run(16)
    df = res.frame()
    assert (df.phase == "design").sum() == 12
    conf = df[df.phase == "confirm"]
    assert 1 <= len(conf) <= 4 and conf.state.eq("COMPLETE").all()
    sur = res.surrogate()
    assert sur.r2_loo.min() > 0.999
    for _, r in conf.iterrows():
        for o in res.objective_names:
            assert r[f"predicted:{o}"] == pytest.approx(r[o], rel=1e-3)
    # confirmation points lie on the measured front (the surrogates are exact here)
    assert df.loc[df.phase == "confirm", "pareto"].all()
    # each task's optimum is its own fine-tune: weight 1 for it, 0 for the others
    assert all(math.isfinite(v) for v in conf["mean"])


def test_sampler_rules(lm_set, lm_open):
    s, _ = lm_set
    oc = lm_open
    space = _space(s, oc)
    b = InlineBackend(oc.merger, oc.evaluator)
    with pytest.raises(WsvizError, match="cmaes sampler optimises one objective"):
        Search(space, b, Objectives(over="mean_worst"), sampler="cmaes").open()
    res = Search(space, b, Objectives(over="mean"), sampler="cmaes").run(4)
    assert len(res.frame()) == 4
    with pytest.raises(WsvizError, match="unknown sampler"):
        Search(space, b, sampler="bayes")
    cat = _space(s, oc, {"params": {"rescale": {"choices": [True, False]}}})
    with pytest.raises(WsvizError, match="categorical"):
        Search(cat, b, sampler="map")
    with pytest.raises(WsvizError, match="objectives.metric 'accuracy'"):
        Search(space, b, Objectives(metric="accuracy")).open()


def test_journal_storage_resumes_and_a_second_search_is_refused(lm_set, lm_open, tmp_path):
    s, _ = lm_set
    oc = lm_open
    space = _space(s, oc, {"params": {"lambda": {"low": 0.0, "high": 2.0}}})
    log = tmp_path / "study.log"
    first = Search(space, InlineBackend(oc.merger, oc.evaluator), storage=log, sampler="random")
    try:
        first.run(3)
        with pytest.raises(WsvizError, match="another wsviz search is running"):
            Search(space, InlineBackend(oc.merger, oc.evaluator), storage=log).open()
    finally:
        first.close()
    again = Search(space, InlineBackend(oc.merger, oc.evaluator), storage=log, sampler="random")
    try:
        res = again.run(5)
    finally:
        again.close()
    assert again.evaluated == 2 and len(res.frame()) == 5
    with pytest.raises(WsvizError, match="use a .db/.sqlite file"):
        Search(space, InlineBackend(oc.merger, oc.evaluator), storage=tmp_path / "x.txt").open()

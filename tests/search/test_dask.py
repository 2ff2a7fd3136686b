"""Evaluations on a Dask LocalCluster with 2 worker processes (bound to 127.0.0.1, always
closed): both workers take trials and give the same numbers as an in-process evaluation."""

from __future__ import annotations

import pytest

from tests.search.conftest import lm_context, lm_recipe
from wsviz.eval import evaluate_recipe
from wsviz.search import DaskBackend, Search, SearchSpace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_local_cluster_two_workers_match_in_process(lm_set):
    s, text = lm_set
    ctx = lm_context(s, text)
    oc = ctx.open()
    space = SearchSpace.from_dict(
        {"params": {"lambda": {"low": 0.2, "high": 2.0},
                    "density": {"low": 0.2, "high": 1.0, "groups": ["depth:2"]}},
         "objectives": {"sparsity": True}},
        lm_recipe(s, "ties"), oc.merger.names, oc.merger.modelset.names)
    with DaskBackend(ctx, n_workers=2) as backend:
        client = backend.client
        assert len(client.nthreads()) == 2
        assert backend.slots == 4  # two trials in flight per worker
        assert all(a.startswith("tcp://127.0.0.1:") for a in client.nthreads())
        res = Search(space, backend, sampler="random", seed=3).run(8)
    assert client.status == "closed"
    df = res.frame()
    assert len(df) == 8 and df.state.eq("COMPLETE").all()
    assert set(df.worker) == {"0", "1"}
    assert res.objective_names == ["perplexity:text", "sparsity"]
    for _, row in df.iterrows():
        rec = res.recipe(int(row.number))
        ppl = evaluate_recipe(rec, oc.evaluator, oc.merger)["text"]["perplexity"]
        assert row["perplexity:text"] == pytest.approx(ppl, rel=1e-5)
        assert 0.0 <= row["sparsity"] < 1.0

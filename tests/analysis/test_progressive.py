"""Progressive analysis (AnalysisRun): partial tables, equality with the one-pass analysis,
priorities, resuming a killed run from the cache."""

import math
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from wsviz.analysis import AnalysisRun, AnalysisSettings, analyze
from wsviz.analysis.engine import table_from_rows
from wsviz.analysis.tensor import SPECTRAL_FAMILIES, analyze_tensor, load_deltas, merge_dtype
from wsviz.io import ModelSet

SPECTRAL_PREFIXES = ("alpha", "stable_rank", "spectral_norm", "intruders", "subspace_overlap",
                     "delta_alpha", "effective_rank")


def one_pass_table(ms, settings):
    """The table the one-pass (pre-progressive) engine produced: every family of one tensor
    at once, tensors in model order."""
    rows = []
    for name in ms.names:
        if not ms.info(name).dtype.is_floating_point:
            continue
        base, deltas = load_deltas(ms, name, "cpu")
        rows += analyze_tensor(name, ms.layer(name), base, deltas, ms.labels, settings,
                               trim_dtype=merge_dtype(ms, name)).rows
    return table_from_rows(rows)


#: metrics from float32 singular vectors (intruders, subspaces): thread counts change the
#: LAPACK blocking, so they agree to float32 round-off over the singular gaps; all others to the WeightWatcher
#: parity tolerance (1e-9)
FLOAT32_METRICS = ("intruder_min_cos", "subspace_overlap")


def assert_same_values(a: pd.DataFrame, b: pd.DataFrame, rel=1e-9):
    assert list(a[["layer", "model", "metric"]].itertuples(index=False)) == \
        list(b[["layer", "model", "metric"]].itertuples(index=False))
    for x, y, m in zip(a["value"], b["value"], a["metric"]):
        if math.isnan(x) or math.isnan(y):
            assert math.isnan(x) and math.isnan(y), m
        else:
            if m in FLOAT32_METRICS:  # cosines in [0, 1]
                assert x == pytest.approx(y, abs=1e-4), m
            else:
                assert x == pytest.approx(y, rel=rel, abs=1e-12), m
    assert list(a["note"]) == list(b["note"])


@pytest.fixture(scope="module")
def streamed(llama_ms, tmp_path_factory):
    """A two-worker run on a fresh cache, with the partial table taken at the 'cheap' event
    and every event recorded."""
    run = AnalysisRun(llama_ms, device="cpu", workers=2,
                      cache_dir=tmp_path_factory.mktemp("prog"))
    seen = {"events": [], "cheap_table": None}

    def listen(e):
        seen["events"].append(e)
        if e.kind == "cheap":
            seen["cheap_table"] = run.partial_table()
            seen["pending"] = run.pending_metrics()

    run.subscribe(listen)
    res = run.start().result(timeout=1800)
    return run, res, seen


def test_partial_tables_precede_final_and_match_it(streamed):
    run, res, seen = streamed
    kinds = [e.kind for e in seen["events"]]
    assert kinds[-1] == "done" and "cheap" in kinds
    # the cheap table arrived before any spectral job finished (all cheap jobs queue first)
    i_cheap = kinds.index("cheap")
    assert all(e.stage == "cheap" for e in seen["events"][:i_cheap] if e.kind == "job")
    assert any(e.stage == "spectral" for e in seen["events"][i_cheap:] if e.kind == "job")
    part = seen["cheap_table"]
    assert set(seen["pending"]) == set(SPECTRAL_FAMILIES)
    assert not part.metric.str.startswith(SPECTRAL_PREFIXES).any()
    assert {"delta_fro", "delta_rel", "delta_cosine", "sign_conflict", "mask_iou"} <= \
        set(part.metric)
    assert set(part.layer) == set(res.layers)
    # every cheap value equals the final one exactly
    final = res.table.set_index(["layer", "model", "metric"])
    joined = part.set_index(["layer", "model", "metric"]).join(final, rsuffix="_final")
    assert len(joined) == len(part) and joined["value_final"].notna().sum() == \
        joined["value"].notna().sum()
    pd.testing.assert_series_equal(joined["value"], joined["value_final"], check_names=False)
    assert run.pending_metrics() == [] and run.done == run.total
    assert len(res.table) > len(part)


def test_final_equals_one_pass_analysis(streamed, llama_ms):
    _, res, _ = streamed
    ref = one_pass_table(llama_ms, AnalysisSettings())
    assert_same_values(res.table, ref)


def test_priority_moves_a_layer_to_the_front(llama_ms, tmp_path):
    settings = AnalysisSettings(families=("deltas", "spectra"))
    run = AnalysisRun(llama_ms, device="cpu", workers=1, settings=settings,
                      cache_dir=tmp_path)
    last = run.todo[-1]
    order = []

    def listen(e):
        if e.kind == "job":
            order.append((e.name, e.stage))
            if len(order) == 1:
                assert run.prioritize(last)
                assert run.queue_order()[:2] == [(last, "cheap"), (last, "spectral")]

    run.subscribe(listen)
    run.run()
    assert order[0] == (run.todo[0], "cheap")
    assert order[1:3] == [(last, "cheap"), (last, "spectral")]
    # without the priority the last tensor's jobs would be last of their stages
    assert len(order) == run.total and len(set(order)) == run.total
    assert not run.prioritize(last)  # nothing pending any more


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    from wsviz.analysis import AnalysisRun
    from wsviz.io import ModelSet
    ms = ModelSet.open(sys.argv[1], sys.argv[2:5], labels=["a", "b", "c"])
    run = AnalysisRun(ms, device="cpu", workers=1, cache_dir=sys.argv[5])
    def listen(e):
        if e.kind == "job" and e.done == int(sys.argv[6]):
            os._exit(9)  # killed: no clean-up, no final table
    run.subscribe(listen)
    run.run()
""")


def test_killed_run_resumes_from_cache(llama_set, llama_ms, tmp_path):
    cache = tmp_path / "cache"
    argv = [sys.executable, "-c", KILL_SCRIPT, str(llama_set.base),
            *map(str, llama_set.fts), str(cache), "7"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert p.returncode == 9, p.stderr
    parts = list(cache.glob("analysis/*/parts/*.pt"))
    assert len(parts) == 7
    assert not list(cache.glob("analysis/*/meta.json"))
    run = AnalysisRun(llama_ms, device="cpu", workers=2, cache_dir=cache)
    computed = []
    run.subscribe(lambda e: computed.append(e) if e.kind == "job" else None)
    res = run.run()
    assert run.resumed == 7
    assert len(computed) == run.total - 7 and computed[0].done == 8
    assert not list(cache.glob("analysis/*/parts/*.pt"))  # parts dropped once complete
    assert_same_values(res.table, one_pass_table(llama_ms, AnalysisSettings()))
    again = analyze(llama_ms, device="cpu", cache_dir=cache, progress=False)
    assert again.from_cache


def test_cancel_keeps_parts_and_result_says_so(llama_ms, tmp_path):
    from wsviz.errors import WsvizError

    run = AnalysisRun(llama_ms, device="cpu", workers=1, cache_dir=tmp_path,
                      settings=AnalysisSettings(families=("deltas",)))
    run.subscribe(lambda e: run.cancel() if e.kind == "job" and e.done == 2 else None)
    run.start()
    with pytest.raises(WsvizError, match="cancelled"):
        run.result(timeout=600)
    assert run.done == 2 and len(list(tmp_path.glob("analysis/*/parts/*.pt"))) == 2


def test_bf16_family_two_workers_equal_one(llama_set_bf16, tmp_path):
    ms = ModelSet.open(llama_set_bf16.base, llama_set_bf16.fts)
    one = AnalysisRun(ms, device="cpu", workers=1, use_cache=False).run()
    two = AnalysisRun(ms, device="cpu", workers=2, use_cache=False).run()
    assert_same_values(two.table, one.table)


def test_shared_gram_vectors_match_direct_svd(streamed, llama_ms):
    """Intruders and subspace overlaps from the shared float64 Gram eigen-decompositions equal
    those of the direct (float32 SVD) path of :mod:`wsviz.compute.subspace`."""
    from wsviz.compute import subspace as U

    _, res, _ = streamed
    t = res.table.set_index(["layer", "model", "metric"])["value"]
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
                 "model.layers.2.mlp.up_proj.weight"]:
        base, deltas = load_deltas(llama_ms, name, "cpu")
        for i, lab in enumerate(llama_ms.labels):
            r = U.intruder_dimensions(base, base + deltas[i], 10, 0.5)
            assert t[(name, lab, "intruders")] == r.count
            assert t[(name, lab, "intruder_min_cos")] == pytest.approx(
                float(r.max_cos.min()), abs=1e-4)
        ua = U.left_singular_vectors(deltas[0], 10)[0]
        ub = U.left_singular_vectors(deltas[1], 10)[0]
        ref = U.subspace_overlap(ua, ub)
        a, b = llama_ms.labels[:2]
        assert t[(name, f"{a}|{b}", "subspace_overlap")] == pytest.approx(ref, abs=1e-4)

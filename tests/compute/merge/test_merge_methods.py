"""Merge methods against mergekit's in-memory ``merge_tensors`` and PEFT's merge_utils on
random tensors of several shapes (1-D, 2-D, 3-D), including the random methods with a
matched generator (exact masks)."""

from __future__ import annotations

import pytest
import torch

from wsviz.compute.merge import METHODS
from wsviz.compute.merge import sparsify as sp

mk_api = pytest.importorskip("mergekit.merge_methods")

SHAPES = [(37,), (24, 40), (3, 8, 10)]


def _data(shape, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = base + 0.05 * torch.randn((n, *shape), generator=g)
    return base, models


def _mk(method, base, models, params, seed=None):
    tensors = [*models.unbind(0), base]
    if seed is not None:
        torch.manual_seed(seed)
    return mk_api.merge_tensors(tensors, method, parameters=params, base_index=len(models))


def _ours(method, base, models, params, seed=None):
    spec = METHODS[method]
    full = {p.name: p.default for p in spec.params if not p.required}
    n = models.shape[0]
    for p in spec.params:
        if p.scope == "model":
            v = params.get(p.name, full.get(p.name))
            full[p.name] = list(v) if isinstance(v, (list, tuple)) else [v] * n
        elif p.name in params:
            full[p.name] = params[p.name]
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return spec.fn(base, models, full, generator=g)


CASES = [
    ("task_arithmetic", {"weight": [1.0, -0.5, 0.3], "lambda": 0.8}),
    ("task_arithmetic", {"weight": [0.2, 0.5, 0.3], "normalize": True}),
    ("ties", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 1.0]}),
    ("ties", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.01, 0.7], "rescale": True,
              "normalize": False, "lambda": 1.3}),
    ("breadcrumbs", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 0.9],
                     "gamma": [0.01, 0.1, 0.0]}),
    ("breadcrumbs_ties", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 0.9],
                          "rescale": True}),
    ("dare_linear", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 1.0, 0.6]}),
    ("dare_ties", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 0.6], "rescale": False}),
    ("della", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 0.6], "epsilon": 0.1}),
    ("della_linear", {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 1.0],
                      "epsilon": [0.1, 0.2, 0.1]}),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method,params", CASES)
def test_gta_methods_equal_mergekit(method, params, shape):
    base, models = _data(shape)
    seed = 1234 if METHODS[method].random else None
    ref = _mk(method, base, models, params, seed)
    got = _ours(method, base, models, params, seed)
    assert (got - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_slerp_model_stock_equal_mergekit(shape):
    base, models = _data(shape)
    tensors = [*models.unbind(0)]
    ref = mk_api.merge_tensors(tensors, "linear", parameters={"weight": [1.0, 2.0, 0.5]})
    got = METHODS["linear"].fn(None, models, {"weight": [1.0, 2.0, 0.5], "normalize": True})
    assert (got - ref).abs().max() <= 1e-6
    for t in (0.0, 0.3, 1.0):
        ref = mk_api.merge_tensors([base, models[0]], "slerp", parameters={"t": t},
                                   base_index=0)
        got = METHODS["slerp"].fn(base, models[:1], {"t": t})
        assert (got - ref).abs().max() <= 1e-6
    for fw in (False, True):
        ref = mk_api.merge_tensors([base, *tensors], "model_stock",
                                   parameters={"filter_wise": fw}, base_index=0)
        got = METHODS["model_stock"].fn(base, models, {"filter_wise": fw})
        assert (got - ref).abs().max() <= 1e-6


def test_cached_ranks_reused_and_equal():
    base, models = _data((50, 20))
    cache = {}
    p = {"weight": [1.0, 1.0, 1.0], "density": [0.2, 0.4, 0.6], "normalize": True,
         "rescale": False, "lambda": 1.0, "int8_mask": False}
    a = METHODS["ties"].fn(base, models, p, cache=cache)
    assert "ranks" in cache and "deltas" in cache
    b = METHODS["ties"].fn(base, None, p, cache=cache)
    assert torch.equal(a, b)


def test_magnitude_keeps_exact_count():
    d = torch.randn(2, 1000)
    out = sp.magnitude(d, [0.25, 0.001])
    assert (out[0] != 0).sum() == 250 and (out[1] != 0).sum() == 1
    # kept entries are the largest in magnitude
    assert out[0].abs()[out[0] != 0].min() >= d[0].abs()[out[0] == 0].max()


def test_peft_agreement():
    from peft.utils import merge_utils as mu

    base, models = _data((30, 16), n=3, seed=5)
    deltas = list((models - base).unbind(0))
    w = torch.tensor([0.7, -0.2, 1.1])
    # task arithmetic: identical
    ref = mu.task_arithmetic(deltas, w)
    got = _ours("task_arithmetic", base, models, {"weight": w.tolist()}) - base
    assert (got - ref).abs().max() <= 1e-6
    # TIES with equal weights 1: identical (PEFT elects on unweighted deltas and divides by
    # the count, mergekit elects on weighted deltas and divides by the kept weight sum)
    ref = mu.ties(deltas, torch.ones(3), density=0.3)
    got = _ours("ties", base, models, {"weight": [1.0] * 3, "density": [0.3] * 3}) - base
    assert (got - ref).abs().max() <= 1e-6
    # equal weights c != 1: PEFT's result is c times mergekit's (documented difference)
    ref = mu.ties(deltas, torch.full((3,), 0.5), density=0.3)
    assert (0.5 * got - ref).abs().max() <= 1e-6


def test_della_epsilon_rule():
    base, models = _data((10, 10))
    with pytest.raises(ValueError, match="epsilon"):
        _ours("della", base, models, {"weight": [1.0] * 3, "density": [0.9] * 3,
                                      "epsilon": 0.2})


def test_device_honoured():
    base, models = _data((8, 8))
    out = METHODS["ties"].fn(base.to("cpu"), models.to("cpu"),
                             {"weight": [1.0] * 3, "density": [0.5] * 3, "normalize": True,
                              "rescale": False, "lambda": 1.0})
    assert out.device.type == "cpu" and out.dtype == torch.float32


def test_topk_keep_equals_mergekit_argsort_even_with_ties():
    g = torch.Generator().manual_seed(3)
    for x in (torch.randint(0, 5, (400,), generator=g).float(),  # many ties
              torch.randint(0, 50, (600_000,), generator=g).float(),  # ties, sampled path
              torch.randn(600_000, generator=g).abs()):  # unique, sampled path
        r = sp.magnitude_ranks(x[None])[0]
        n = x.numel()
        for k in (0, 1, 7, n // 5, n // 2, n - 1, n):
            ref = torch.zeros(n, dtype=torch.bool)
            ref[torch.argsort(x, descending=True)[:k]] = True  # mergekit's selection
            assert torch.equal(sp.topk_keep(x, k), ref)
            assert torch.equal(r < k, ref)


def test_one_shot_and_cached_ties_agree():
    base, models = _data((64, 33))
    p = {"weight": [1.0, 0.4, 0.8], "density": [0.2, 0.5, 0.05], "normalize": True,
         "rescale": False, "lambda": 1.0, "int8_mask": False}
    one = METHODS["ties"].fn(base, models, p)
    cached = METHODS["ties"].fn(base, models, p, cache={})
    assert torch.equal(one, cached)

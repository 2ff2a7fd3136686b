"""Merge methods against mergekit's in-memory ``merge_tensors`` and PEFT's merge_utils on
random tensors of several shapes (1-D, 2-D, 3-D), including the random methods with a
matched generator (exact masks)."""

from __future__ import annotations

import pytest
import torch

from tests.compute.merge.driver import ours as _ours
from tests.peers import require_peer
from wsviz.compute import trim
from wsviz.compute.merge import METHODS
from wsviz.compute.merge import sparsify as sp

mk_api = require_peer("mergekit.merge_methods")

SHAPES = [(37,), (24, 40), (3, 8, 10)]
DTYPES = [torch.float32, torch.bfloat16]


def _data(shape, n=3, seed=0, dtype=torch.float32):
    """Base + n models; in bf16 the deltas are coarse (many equal magnitudes, ties at
    every trim threshold), as real bf16 fine-tunes are."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    models = base + 0.05 * torch.randn((n, *shape), generator=g)
    return base.to(dtype), models.to(dtype)


def _mk(method, base, models, params, seed=None):
    tensors = [*models.unbind(0), base]
    if seed is not None:
        torch.manual_seed(seed)
    return mk_api.merge_tensors(tensors, method, parameters=params, base_index=len(models))


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


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method,params", CASES)
def test_gta_methods_equal_mergekit(method, params, shape, dtype):
    """Bit-identical to mergekit's in-memory merge, fp32 and bf16 (computed in bf16)."""
    base, models = _data(shape, dtype=dtype)
    seed = 1234 if METHODS[method].random else None
    ref = _mk(method, base, models, params, seed)
    got = _ours(method, base, models, params, seed)
    assert got.dtype == ref.dtype == dtype
    assert torch.equal(got, ref), (got - ref).abs().max().item()
    if not METHODS[method].random:  # the cached-rank path (interactive re-merges) too
        assert torch.equal(_ours(method, base, models, params, cache={}), ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES + [(1100, 1000)])
def test_linear_slerp_model_stock_equal_mergekit(shape, dtype):
    """Bit-identical, including SLERP's chunked norms past 2^20 elements."""
    base, models = _data(shape, dtype=dtype)
    tensors = [*models.unbind(0)]
    ref = mk_api.merge_tensors(tensors, "linear", parameters={"weight": [1.0, 2.0, 0.5]})
    got = METHODS["linear"].fn(None, models, {"weight": [1.0, 2.0, 0.5], "normalize": True})
    assert got.dtype == dtype and torch.equal(got, ref)
    for t in (0.0, 0.3, 1.0):
        ref = mk_api.merge_tensors([base, models[0]], "slerp", parameters={"t": t},
                                   base_index=0)
        got = METHODS["slerp"].fn(base, models[:1], {"t": t})
        assert got.dtype == dtype and torch.equal(got, ref)
    for fw in (False, True):
        ref = mk_api.merge_tensors([base, *tensors], "model_stock",
                                   parameters={"filter_wise": fw}, base_index=0)
        got = METHODS["model_stock"].fn(base, models, {"filter_wise": fw})
        assert got.dtype == dtype and torch.equal(got, ref)


def test_ties_at_the_threshold_follow_mergekit():
    """Magnitudes tie at the cut (integers): which tied entries TIES and breadcrumbs keep
    is mergekit's sort order, on the O(n) selection path and on the cached-rank path."""
    g = torch.Generator().manual_seed(7)
    for shape in ((50,), (120, 100), (1, 30_001)):
        base = torch.zeros(shape)
        models = torch.randint(-6, 7, (3, *shape), generator=g).float() * 2**-8
        for method, params in (
                ("ties", {"weight": [1.0, 0.5, 0.8], "density": [0.2, 0.35, 0.6]}),
                ("breadcrumbs", {"weight": [1.0, 0.5, 0.8], "density": [0.2, 0.35, 0.6],
                                 "gamma": [0.05, 0.1, 0.3]}),
                ("breadcrumbs_ties", {"weight": [1.0, 0.5, 0.8], "density": [0.2, 0.3, 0.6],
                                      "gamma": 0.1})):
            for dt in DTYPES:
                b, m = base.to(dt), models.to(dt)
                ref = _mk(method, b, m, params)
                assert torch.equal(_ours(method, b, m, params), ref), (method, shape, dt)
                assert torch.equal(_ours(method, b, m, params, cache={}), ref)


def test_mergekit_dtype_argument_is_the_drivers_cast():
    """mergekit's ``dtype`` casts the inputs first: the driver's cast + fn equals it."""
    base, models = _data((40, 30))
    p = {"weight": [1.0, 0.5, 0.8], "density": [0.3, 0.5, 0.7]}
    ref = mk_api.merge_tensors([*models.unbind(0), base], "ties", parameters=p,
                               base_index=3, dtype=torch.bfloat16, out_dtype=torch.float32)
    got = _ours("ties", base.bfloat16(), models.bfloat16(), p).float()
    assert torch.equal(got, ref)
    # and it is not what computing in fp32 and casting at the end gives
    assert not torch.equal(_ours("ties", base, models, p).bfloat16().float(), ref)


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
              torch.randint(0, 50, (300_000,), generator=g).float(),  # ties, replayed sort
              torch.randn(300_000, generator=g).abs()):  # unique, sampled threshold
        r = sp.magnitude_ranks(x[None])[0]
        asc = sp.ascending_ranks(x[None])[0]
        n = x.numel()
        up = torch.sort(x).indices
        down = torch.argsort(x, descending=True)
        for k in (0, 1, 7, n // 5, n // 2, n - 1, n):
            ref = torch.zeros(n, dtype=torch.bool)
            ref[down[:k]] = True  # mergekit's selection
            assert torch.equal(sp.topk_keep(x, k), ref)
            assert torch.equal(r < k, ref)
            lo = k // 3  # breadcrumbs: a slice of the ascending sort
            ref = torch.zeros(n, dtype=torch.bool)
            ref[up[lo:k]] = True
            assert torch.equal(trim.keep_slice(x[None], [lo], [k])[0], ref)
            assert torch.equal((asc >= lo) & (asc < k), ref)


def test_one_shot_and_cached_ties_agree():
    base, models = _data((64, 33))
    p = {"weight": [1.0, 0.4, 0.8], "density": [0.2, 0.5, 0.05], "normalize": True,
         "rescale": False, "lambda": 1.0, "int8_mask": False}
    one = METHODS["ties"].fn(base, models, p)
    cached = METHODS["ties"].fn(base, models, p, cache={})
    assert torch.equal(one, cached)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_numba_kernel_equals_torch_ops(dtype):
    """The one-pass CPU kernel and the torch-op path give identical bits (2-4 models,
    trims by mask and by cached ranks, with and without sign election, λ, normalize)."""
    from wsviz.compute.merge import task_arithmetic as ta

    g = torch.Generator().manual_seed(11)
    for n, numel in ((2, 999), (4, 5000), (3, 300_000)):
        base = torch.randn(numel, generator=g).to(dtype)
        models = (base.float() + 0.01 * torch.randn(n, numel, generator=g)).to(dtype)
        for method, p in (
                ("ties", {"weight": [1.0, 0.3, 0.7, 0.5][:n], "density": 0.2}),
                ("ties", {"weight": [0.4, -0.3, 1.1, 0.2][:n], "density": 0.5,
                          "lambda": 1.7, "normalize": False}),
                ("task_arithmetic", {"weight": [0.5, 0.7, 0.1, 0.3][:n], "normalize": True}),
                ("breadcrumbs", {"weight": [1.0, 0.5, 0.8, 0.2][:n], "density": 0.3,
                                 "gamma": 0.05, "lambda": 0.6})):
            outs = []
            for use in (True, False):
                ta.USE_KERNEL = use
                try:
                    outs.append((_ours(method, base, models, p),
                                 _ours(method, base, models, p, cache={})))
                finally:
                    ta.USE_KERNEL = True
            assert torch.equal(outs[0][0], outs[1][0]), (method, n, numel)
            assert torch.equal(outs[0][1], outs[1][1]), (method, n, numel)


def test_introsort_replay_self_check():
    """The O(n) trim replays torch's CPU sort; its self-check (normally cached on disk)
    passes on this torch build, so the fast path is the one the other tests exercised."""
    from wsviz.compute import _introsort

    if not _introsort._self_check():
        pytest.skip("torch's CPU sort is not libstdc++'s introsort here: wsviz uses the "
                    "real sort (exact, slower)")
    assert _introsort.available()

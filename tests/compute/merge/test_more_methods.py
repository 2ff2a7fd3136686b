"""nuslerp, multislerp, karcher, sce, ram, ramplus_tl, arcee_fusion, nearswap, passthrough
against mergekit 0.1.5's in-memory ``merge_tensors`` on random tensors (1-D, 2-D, 3-D), in
float32 and bfloat16: the tensors must be equal (bf16: bit for bit, since both compute in
bf16), dtype included."""

from __future__ import annotations

import pytest
import torch

from tests.compute.merge.driver import ours as _ours
from tests.peers import require_peer
from wsviz.compute.merge import METHODS

mk_api = require_peer("mergekit.merge_methods")

SHAPES = [(37,), (24, 40), (3, 8, 10)]
DTYPES = [torch.float32, torch.bfloat16]


def _data(shape, dtype, n=3, seed=0, sparse=False):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    d = 0.05 * torch.randn((n, *shape), generator=g)
    if sparse:  # fine-tunes that touch overlapping subsets (RAM's unique / shared entries)
        d = d * (torch.rand((n, *shape), generator=g) < 0.5)
    return base.to(dtype), (base + d).to(dtype)


def _mk(method, base, models, params, *, with_base=True, seed=None):
    tensors = [*models.unbind(0)] + ([base] if with_base else [])
    if seed is not None:
        torch.manual_seed(seed)
    return mk_api.merge_tensors(tensors, method, parameters=params,
                                base_index=len(models) if with_base else None)


def _same(got, ref, dtype):
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if dtype == torch.bfloat16:
        assert torch.equal(got, ref), (got.float() - ref.float()).abs().max().item()
    else:
        assert (got - ref).abs().max().item() <= 1e-6


# (method, params, n models, base: "yes" / "no" / "input" (an input, as mergekit adds it))
CASES = [
    ("nuslerp", {"weight": [1.0, 0.6]}, 2, "no"),
    ("nuslerp", {"weight": [0.3, 0.7], "nuslerp_flatten": False}, 2, "yes"),
    ("nuslerp", {"weight": [1.0, 2.0], "nuslerp_flatten": False, "nuslerp_row_wise": True},
     2, "no"),
    ("nuslerp", {"weight": [1.0, -1.0]}, 2, "yes"),  # weights cancel: t = 0.5
    ("multislerp", {"weight": [1.0, 0.5, 0.8]}, 3, "no"),
    ("multislerp", {"weight": [0.2, 0.5, 0.3], "normalize_weights": False}, 3, "yes"),
    ("multislerp", {"weight": [1.0, 1.0], "eps": 1e-6}, 2, "yes"),
    ("karcher", {}, 3, "no"),
    ("karcher", {"max_iter": 3, "tol": 1e-3}, 2, "input"),
    ("sce", {}, 3, "yes"),
    ("sce", {"select_topk": 0.3}, 3, "yes"),
    ("sce", {"select_topk": 0.05, "int8_mask": True}, 2, "yes"),
    ("ram", {}, 3, "yes"),
    ("ram", {"epsilon": 0.02}, 3, "yes"),
    ("ramplus_tl", {}, 3, "yes"),
    ("ramplus_tl", {"r": 0.5, "alpha": 0.6, "epsilon": 0.01}, 3, "yes"),
    ("arcee_fusion", {}, 1, "yes"),
    ("nearswap", {"t": 0.03}, 1, "yes"),
    ("nearswap", {"t": 1e-4}, 1, "yes"),
    ("passthrough", {}, 1, "no"),
    ("passthrough", {"scale": [0.5]}, 1, "no"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method,params,n,base", CASES)
def test_method_equals_mergekit(method, params, n, base, shape, dtype):
    b, models = _data(shape, dtype, n=n, sparse=method.startswith("ram"))
    if base == "input":  # karcher takes no base: mergekit adds a given base as an input
        ref = _mk(method, b, models, params, with_base=True)
        got = _ours(method, None, torch.cat([models, b.unsqueeze(0)]), params)
    else:
        ref = _mk(method, b, models, params, with_base=base == "yes")
        got = _ours(method, b if base == "yes" else None, models, params)
    _same(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_arcee_fusion_samples_quantiles_of_large_tensors_like_mergekit(dtype):
    """Over 1 M entries mergekit takes the quantiles from a random sample (global RNG,
    seeded by --random-seed); a generator with the same seed draws the same sample."""
    b, models = _data((1024, 1000), dtype, n=1)
    ref = _mk("arcee_fusion", b, models, {}, seed=17)
    got = _ours("arcee_fusion", b, models, {}, seed=17)
    _same(got, ref, dtype)
    if dtype == torch.float32:  # the sample (so the threshold) really depends on the seed
        assert not torch.equal(_ours("arcee_fusion", b, models, {}, seed=18), got)


def test_results_use_the_tensors_they_are_given():
    """Structural checks: passthrough scales, nearswap at t=0 is the base, sce/ram with one
    model give that model back, karcher of one tensor is that tensor."""
    b, m = _data((6, 5), torch.float32, n=1)
    ours = lambda meth, p, base=b: _ours(meth, base, m, p)  # noqa: E731
    assert torch.equal(ours("passthrough", {"scale": [2.0]}, None), m[0] * 2)
    assert torch.equal(ours("nearswap", {"t": 0.0}), b)
    assert torch.allclose(ours("sce", {}), m[0], atol=1e-6)
    assert torch.allclose(ours("ram", {}), m[0], atol=1e-6)
    assert torch.equal(ours("karcher", {}, None), m[0])


def test_multislerp_refuses_cancelling_antipodal_inputs():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match="weights"):
        _ours("multislerp", None, x, {"weight": [1.0, 2.0, 1.0], "normalize_weights": False})


def test_cached_deltas_give_the_same_merge():
    """The in-memory merger passes only ``cache["deltas"]``: same result as the models."""
    b, models = _data((12, 9), torch.float32, n=3, sparse=True)
    cases = [("sce", {"select_topk": 0.5}), ("ramplus_tl", {}), ("multislerp",
             {"weight": [1.0, 0.5, 0.2]}), ("karcher", {})]
    for meth, p in cases:
        full = _ours(meth, b, models, p)
        spec = METHODS[meth]
        res = {q.name: q.default for q in spec.params if not q.required}
        res.update({k: v for k, v in p.items()})
        cached = spec.fn(b, None, res, cache={"deltas": models - b})
        assert torch.allclose(full, cached, atol=1e-6), meth

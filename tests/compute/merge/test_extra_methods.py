"""Methods beyond mergekit, each against its reference code's semantics: PEFT magnitude prune,
TSV-M, PCB-Merging and ComPEFT (whole-model ``scope: model`` and per-tensor), Fisher merging;
greedy soup is a search, not a registry method; ``needs`` are enforced by every engine."""

from __future__ import annotations

import pytest
import torch

from wsviz.compute.merge import METHODS
from wsviz.compute.merge.extra import compeft_compress, pcb_merge, tsv_merge
from wsviz.errors import RecipeError


def _params(name, n, **kw):
    spec = METHODS[name]
    p = spec.defaults()
    for q in spec.params:
        if q.scope == "model":
            p[q.name] = [kw.pop(q.name, p.get(q.name))] * n
    p.update(kw)
    return p


# -- reference formulations (from the papers' public code, re-derived: whole flat vectors) -----
def ref_pcb(flat: torch.Tensor, ratio: float, clamp: float) -> torch.Tensor:
    """PCB-Merging on task vectors flattened to ``[n, D]`` (the reference code's algorithm)."""
    n, d = flat.shape

    def clamp_rows(x, lo_ratio, hi_ratio):
        s = torch.sort(x, dim=1).values
        lo = s[:, int(d * lo_ratio)].unsqueeze(1)
        hi = s[:, int(d * (1 - hi_ratio) - 1)].unsqueeze(1)
        return torch.clamp(x, lo, hi)

    def minmax(x):
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        return (x - lo) / (hi - lo)

    a = clamp_rows(flat.abs(), clamp, clamp)
    score = torch.exp(n * minmax(a) ** 2) * torch.tanh(flat * flat.sum(0))
    scale = minmax(clamp_rows(score, 1 - ratio, 0))
    return (torch.sign(flat) * a * scale).sum(0) / scale.sum(0).clamp_min(1e-12)


def ref_compeft(tv: torch.Tensor, density: float, alpha: float) -> torch.Tensor:
    """ComPEFT of one flat task vector (top-k by kthvalue, ties kept; alpha · std · sign)."""
    d = tv.numel()
    k = d - int(d * density)
    mask = tv.abs() >= tv.abs().kthvalue(k).values
    return alpha * tv.std() * torch.sign(tv * mask)


def flat_deltas(ms, names):
    return torch.cat([ms.deltas(n).reshape(len(ms.labels), -1) for n in names], 1)


def unflatten(vec, ms, names):
    out, i = {}, 0
    for n in names:
        k = ms.info(n).numel
        out[n] = vec[i:i + k].reshape(ms.info(n).shape)
        i += k
    return out


@pytest.fixture(scope="module")
def llama_ms(llama_set):
    from wsviz.io import ModelSet

    return ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts],
                         labels=["a", "b", "c"])


@pytest.fixture(scope="module")
def merger(llama_ms):
    from wsviz.recipes import InMemoryMerger

    return InMemoryMerger(llama_ms)


# -- PEFT magnitude prune, TSV-M ---------------------------------------------------------------
def test_magnitude_prune_equals_peft():
    from peft.utils import merge_utils as mu

    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 30, generator=g)
    models = base + 0.1 * torch.randn(3, 20, 30, generator=g)
    w = [0.5, 1.0, -0.3]
    ref = mu.magnitude_prune(list((models - base).unbind(0)), torch.tensor(w), density=0.3)
    p = _params("magnitude_prune", 3, density=0.3)
    p["weight"] = w
    got = METHODS["magnitude_prune"].fn(base, models, p) - base
    assert (got - ref).abs().max() <= 1e-6


def test_tsv_exact_on_orthogonal_rank_one_tasks():
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    r, _ = torch.linalg.qr(torch.randn(12, 12))
    deltas = torch.stack([3.0 * (i + 1) * torch.outer(q[:, i], r[:, i]) for i in range(3)])
    merged = tsv_merge(deltas, rank_fraction=1 / 12)  # k = 1 per task
    assert torch.allclose(merged, deltas.sum(0), atol=1e-5)
    one = torch.randn(1, 9, 7)
    assert torch.allclose(tsv_merge(one, 1.0), one[0], atol=1e-5)
    v = torch.randn(3, 5)
    assert torch.allclose(tsv_merge(v), v.mean(0))


# -- PCB ---------------------------------------------------------------------------------------
def test_pcb_tensor_scope_is_the_reference_per_tensor():
    g = torch.Generator().manual_seed(2)
    d = torch.randn(3, 40, 25, generator=g)
    got = pcb_merge(d, density=0.3, clamp=0.01)
    torch.testing.assert_close(got, ref_pcb(d.reshape(3, -1), 0.3, 0.01).reshape(40, 25),
                               rtol=0, atol=1e-6)
    same = torch.randn(1, 40, 25, generator=g).repeat(3, 1, 1)  # identical tasks
    m = pcb_merge(same, density=0.3, clamp=0.0)
    kept = m != 0
    assert torch.allclose(m[kept], same[0][kept], atol=1e-5)
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.02)


def test_pcb_model_scope_matches_reference_on_the_flattened_model(llama_ms, merger, tmp_path,
                                                                  llama_set):
    from safetensors.torch import load_file

    from wsviz.recipes import Recipe, merge_to_dir

    names = merger.names
    ref_vec = ref_pcb(flat_deltas(llama_ms, names), 0.2, 1e-4)
    ref = unflatten(ref_vec, llama_ms, names)
    r = Recipe("pcb", base="base", models=["a", "b", "c"], params={"lambda": 1.0})
    got = merger.merge(r)
    for n in names:
        torch.testing.assert_close(got[n] - merger.base(n), ref[n], rtol=0, atol=1e-6)
    # the disk engine streams the same statistics from the checkpoints
    paths = {"base": str(llama_set.base), **dict(zip("abc", map(str, llama_set.fts)))}
    out = load_file(str(merge_to_dir(r.with_paths(paths), tmp_path / "o", progress=False)
                        / "model.safetensors"))
    assert max((out[n] - got[n]).abs().max().item() for n in names) <= 1e-6
    # per-tensor statistics are a different merge (what the option is for)
    t = merger.merge(Recipe("pcb", base="base", models=["a", "b", "c"],
                            params={"scope": "tensor"}))
    num = sum(float((t[n] - got[n]).square().sum()) for n in names)
    den = sum(float((got[n] - merger.base(n)).square().sum()) for n in names)
    assert (num / den) ** 0.5 > 0.02


# -- ComPEFT -----------------------------------------------------------------------------------
def test_compeft_tensor_scope_is_the_reference_per_tensor():
    d = torch.randn(2, 1000)
    c = compeft_compress(d, [0.1, 0.2], [1.0, 2.0])
    for i, (dens, a) in enumerate([(0.1, 1.0), (0.2, 2.0)]):
        torch.testing.assert_close(c[i], ref_compeft(d[i], dens, a), rtol=0, atol=1e-7)
        nz = c[i][c[i] != 0]
        assert nz.numel() == int(1000 * dens) + 1  # the reference's kthvalue keeps one more
        assert (torch.sign(nz) == torch.sign(d[i][c[i] != 0])).all()


def test_compeft_model_scope_matches_reference_on_the_flattened_model(llama_ms, merger):
    from wsviz.recipes import Recipe

    names = merger.names
    flat = flat_deltas(llama_ms, names)
    dens, alpha, lam = [0.1, 0.3, 0.2], [1.0, 2.0, 0.5], 0.7
    ref_vec = lam * sum(ref_compeft(flat[i], dens[i], alpha[i]) for i in range(3))
    ref = unflatten(ref_vec, llama_ms, names)
    r = Recipe("compeft", base="base", params={"lambda": lam}, models=[
        {"model": m, "params": {"density": dens[i], "alpha": alpha[i]}}
        for i, m in enumerate("abc")])
    got = merger.merge(r)
    for n in names:
        torch.testing.assert_close(got[n] - merger.base(n), ref[n], rtol=1e-5, atol=1e-7)
    # a subset of the models gets its own statistics
    sub = merger.merge(Recipe("compeft", base="base", models=["b"],
                              params={"density": 0.3, "alpha": 2.0}))
    ref_b = unflatten(ref_compeft(flat[1], 0.3, 2.0), llama_ms, names)
    n = names[5]
    torch.testing.assert_close(sub[n] - merger.base(n), ref_b[n], rtol=1e-5, atol=1e-7)


def test_model_scope_refuses_per_layer_density_and_direct_calls(merger):
    from wsviz.recipes import Recipe

    r = Recipe("compeft", base="base", models=["a", "b"], params={"density": [0.1, 0.5]})
    with pytest.raises(RecipeError, match="varies between tensors.*scope: tensor"):
        merger.merge(r)
    r.params["scope"] = "tensor"
    assert merger.merge(r)  # a gradient over layers is fine per tensor
    d = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="whole-model statistics"):
        METHODS["pcb"].fn(torch.zeros(5, 4), d, _params("pcb", 2))


# -- Fisher merging ----------------------------------------------------------------------------
def ref_fisher_merge(models, fishers, coeffs, floor, favor_target, norms):
    """Matena & Raffel's reference merge: coefficients / ‖F_i‖, floor (target only)."""
    cs = [c / z for c, z in zip(coeffs, norms)]
    lhs = rhs = 0
    for j, (x, f, c) in enumerate(zip(models, fishers, cs)):
        if not favor_target or j == 0:
            f = f.clamp_min(floor)
        lhs = lhs + c * f
        rhs = rhs + c * f * x
    return rhs / lhs


def test_fisher_merge_matches_reference_and_needs_fishers(merger):
    from wsviz.recipes import Recipe

    g = torch.Generator().manual_seed(4)
    fishers = {lab: {n: torch.rand(merger.base(n).shape, generator=g) ** 4
                     for n in merger.names} for lab in ("a", "b")}
    for n in merger.names[:3]:
        fishers["b"][n].zero_()  # parameters model b does not care about
    r = Recipe("fisher", params={"fisher_floor": 1e-6},
               models=[{"model": "a", "params": {"weight": 1.0}},
                       {"model": "b", "params": {"weight": 2.0}}])
    with pytest.raises(RecipeError, match="needs 'fisher'.*wsviz fisher"):
        merger.merge(r)  # never a silent uniform average
    with pytest.raises(ValueError, match="diagonal Fisher"):
        METHODS["fisher"].fn(None, torch.zeros(2, 3), _params("fisher", 2))
    merger.set_fisher(fishers)
    got = merger.merge(r)
    norms = [sum(float(f[n].double().square().sum()) for n in merger.names) ** 0.5
             for f in fishers.values()]
    for n in merger.names:
        models = [merger.base(n) + merger.deltas(n)[i] for i in range(2)]
        want = ref_fisher_merge(models, [fishers["a"][n], fishers["b"][n]], [1.0, 2.0], 1e-6,
                                True, norms)
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6)
    n0 = merger.names[0]  # F_b = 0 there: the target (first) model's value is kept
    torch.testing.assert_close(got[n0], merger.base(n0) + merger.deltas(n0)[0])
    with pytest.raises(RecipeError, match=r"no Fisher for model\(s\) \['c'\]"):
        merger.merge(Recipe("fisher", models=["a", "c"]))


@pytest.mark.parametrize("name", sorted(k for k, s in METHODS.items() if s.needs))
def test_needs_are_enforced_by_both_engines(name, llama_set, tmp_path):
    from wsviz.io import ModelSet
    from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir

    spec = METHODS[name]
    fts = [str(p) for p in llama_set.fts[:2]]
    r = Recipe(name, base=str(llama_set.base) if spec.needs_base else None, models=fts)
    need = spec.needs[0]
    with pytest.raises(RecipeError, match=f"needs '{need}'.*give"):
        merge_to_dir(r, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    ms = ModelSet.open(str(llama_set.base), fts, labels=fts)
    with pytest.raises(RecipeError, match=f"needs '{need}'.*give"):
        InMemoryMerger(ms).merge(Recipe.from_dict({**r.to_dict(), "base": "base"}
                                                  if spec.needs_base else r.to_dict()))


def test_greedy_soup_is_a_search_not_a_method():
    from wsviz.recipes import Recipe

    assert "greedy_soup" not in METHODS
    with pytest.raises(RecipeError, match="not a merge method but a search.*greedy_soup"):
        Recipe("greedy_soup", models=["a", "b"]).validate()


@pytest.mark.parametrize("name", ["pcb", "tsv", "compeft", "magnitude_prune"])
def test_extra_methods_inmemory_and_disk_agree(llama_set, tmp_path, name):
    from safetensors.torch import load_file

    from wsviz.io import ModelSet
    from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir

    fts = [str(p) for p in llama_set.fts]
    r = Recipe(name, base=str(llama_set.base), models=fts)
    out = load_file(str(merge_to_dir(r, tmp_path / "o", progress=False) / "model.safetensors"))
    ms = ModelSet.open(str(llama_set.base), fts, labels=fts)
    got = InMemoryMerger(ms).merge(Recipe.from_dict({**r.to_dict(), "base": "base"}))
    assert max((got[k] - out[k]).abs().max().item() for k in got) <= 1e-5


@pytest.mark.parametrize("name", ["pcb", "compeft"])
def test_whole_model_scope_on_bf16_checkpoints(llama_set, tmp_path, name):
    """bf16 inputs are merged in bf16 (mergekit's rule); the whole-model statistics see the
    same bf16 deltas in both engines, and equal the reference on the flattened bf16 deltas."""
    import copy

    from safetensors.torch import load_file

    from wsviz.io import ModelSet
    from wsviz.recipes import InMemoryMerger, Recipe, merge_to_dir

    dirs = []
    for i, m in enumerate([llama_set.base_model, *llama_set.ft_models[:2]]):
        copy.deepcopy(m).to(torch.bfloat16).save_pretrained(tmp_path / f"m{i}")
        dirs.append(str(tmp_path / f"m{i}"))
    r = Recipe(name, base=dirs[0], models=dirs[1:], params={"lambda": 1.0})
    out = load_file(str(merge_to_dir(r, tmp_path / "o", progress=False) / "model.safetensors"))
    ms = ModelSet.open(dirs[0], dirs[1:], labels=["a", "b"], dtype=None)
    mg = InMemoryMerger(ms)
    got = mg.merge(Recipe(name, base="base", models=["a", "b"], params={"lambda": 1.0}))
    n = "model.layers.1.mlp.down_proj.weight"
    assert got[n].dtype == out[n].dtype == torch.bfloat16
    assert max((got[k].float() - out[k].float()).abs().max().item() for k in got) == 0
    flat = torch.cat([mg.deltas(k).reshape(2, -1).float() for k in mg.names], 1)
    if name == "pcb":
        ref = ref_pcb(flat, 0.2, 1e-4)
    else:
        ref = ref_compeft(flat[0], 0.1, 1.0) + ref_compeft(flat[1], 0.1, 1.0)
    start = sum(mg.base(k).numel() for k in mg.names[:mg.names.index(n)])
    delta = ref[start:start + mg.base(n).numel()].view(mg.base(n).shape)
    want = mg.base(n).float() + delta.to(torch.bfloat16).float()  # reference, bf16 rounding
    tol = 2 ** -7 * float(want.abs().max())  # one bf16 ulp at the largest value
    assert (got[n].float() - want).abs().max().item() <= tol


def test_a_broken_extra_module_fails_loudly(monkeypatch):
    """An ImportError inside compute/merge/extra.py (here: a module it needs is unimportable)
    propagates from ``import wsviz.compute.merge`` instead of silently dropping 5 methods."""
    import importlib
    import sys

    import wsviz.compute.merge as merge_pkg

    saved = {k: v for k, v in sys.modules.items() if k.startswith("wsviz.compute.merge")}
    for k in saved:
        if k.endswith(".extra"):
            monkeypatch.delitem(sys.modules, k)
    monkeypatch.delattr(merge_pkg, "extra")  # else `from pkg import extra` finds it
    monkeypatch.setitem(sys.modules, "wsviz.compute.merge.whole_model", None)
    try:
        with pytest.raises(ImportError, match="whole_model"):
            importlib.reload(merge_pkg)
    finally:
        sys.modules.update(saved)
        importlib.reload(merge_pkg)
    assert {"pcb", "tsv", "fisher", "compeft", "magnitude_prune"} <= set(merge_pkg.METHODS)

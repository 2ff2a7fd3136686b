"""Methods beyond mergekit: PEFT magnitude prune, TSV-M, PCB, ComPEFT, Fisher, greedy soup."""

from __future__ import annotations

import pytest
import torch

from wsviz.compute.merge import METHODS
from wsviz.compute.merge.extra import (
    compeft_compress,
    diagonal_fisher,
    pcb_merge,
    tsv_merge,
)


def _params(name, n, **kw):
    spec = METHODS[name]
    p = spec.defaults()
    for q in spec.params:
        if q.scope == "model":
            p[q.name] = [kw.pop(q.name, p.get(q.name))] * n
    p.update(kw)
    return p


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
    # one task, full rank: reconstructs the task vector
    one = torch.randn(1, 9, 7)
    assert torch.allclose(tsv_merge(one, 1.0), one[0], atol=1e-5)
    # non-matrix tensors are averaged
    v = torch.randn(3, 5)
    assert torch.allclose(tsv_merge(v), v.mean(0))


def test_pcb_identical_tasks_and_density():
    d = torch.randn(1, 40, 25).repeat(3, 1, 1)
    m = pcb_merge(d, density=0.3, clamp=0.0)
    kept = m != 0
    assert torch.allclose(m[kept], d[0][kept], atol=1e-5)
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.02)


def test_compeft_is_ternary_with_exact_count():
    d = torch.randn(2, 1000)
    c = compeft_compress(d, [0.1, 0.2], [1.0, 2.0])
    for i, (k, a) in enumerate([(100, 1.0), (200, 2.0)]):
        nz = c[i][c[i] != 0]
        assert nz.numel() == k
        assert torch.allclose(nz.abs(), torch.full_like(nz, a * d[i].std(unbiased=False).item()))
        assert (torch.sign(nz) == torch.sign(d[i][c[i] != 0])).all()


def test_fisher_weighted_average():
    g = torch.Generator().manual_seed(1)
    models = torch.randn(2, 4, 3, generator=g)
    p = _params("fisher", 2)
    assert torch.allclose(METHODS["fisher"].fn(None, models, p), models.mean(0), atol=1e-6)
    f = torch.stack([torch.full((4, 3), 1e6), torch.full((4, 3), 1.0)])
    out = METHODS["fisher"].fn(None, models, p, cache={"fisher": f})
    assert torch.allclose(out, models[0], atol=1e-4)
    # diagonal Fisher of a linear layer with loss w.x: gradient is x, Fisher mean(x^2)
    lin = torch.nn.Linear(3, 1, bias=False)
    xs = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 0.0, 1.0]])]
    F = diagonal_fisher(lin, xs, lambda mod, x: mod(x).sum())
    assert torch.allclose(F["weight"], torch.tensor([[5.0, 2.0, 5.0]]))


def test_greedy_soup_and_inmemory_fisher(llama_set):
    from wsviz.io import ModelSet
    from wsviz.recipes import InMemoryMerger, Recipe, greedy_soup

    ms = ModelSet.open(str(llama_set.base), [str(p) for p in llama_set.fts],
                       labels=["a", "b", "c"])
    mg = InMemoryMerger(ms)
    target = {n: mg.base(n) + mg.deltas(n)[:2].mean(0) for n in mg.names}

    def score(t):  # best when the merge equals the average of a and b
        return -sum(((t[n] - target[n]) ** 2).sum().item() for n in mg.names)

    recipe, hist = greedy_soup(mg, score)
    assert sorted(recipe.labels) == ["a", "b"] and recipe.method == "linear"
    assert [h["accepted"] for h in hist].count(False) == 1
    assert "merge_method: linear" in recipe.to_mergekit_yaml()
    fr = Recipe("fisher", models=["a", "b"])
    with pytest.raises(Exception, match="set_fisher"):
        mg.merge(fr)
    mg.set_fisher({lab: {n: torch.ones_like(mg.base(n)) for n in mg.names}
                   for lab in mg.labels})
    got = mg.merge(fr)
    n = mg.names[3]
    assert torch.allclose(got[n], mg.base(n) + mg.deltas(n)[:2].mean(0), atol=1e-6)


@pytest.mark.parametrize("name", ["pcb", "tsv", "compeft", "magnitude_prune", "greedy_soup"])
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

"""The merge anatomy (wsviz.compute.merge.anatomy, wsviz.analysis.anatomy) against the merge
code itself: TIES norms/cosines equal the merged tensors, kept mass equals the trim's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsviz.analysis.anatomy import anatomy_summary, depth_order, recipe_anatomy
from wsviz.compute import trim
from wsviz.compute.merge import METHODS
from wsviz.compute.merge.anatomy import tensor_anatomy
from wsviz.compute.merge.task_arithmetic import sign_consensus
from wsviz.recipes import InMemoryMerger, Recipe


def _stack(seed=0, n=3, shape=(16, 24), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    deltas = (0.05 * torch.randn((n, *shape), generator=g)).to(dtype)
    return base, deltas


def _cos(a, b):
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_anatomy_matches_registry_merge_and_trim(dtype):
    base, deltas = _stack(dtype=dtype)
    n = deltas.shape[0]
    params = {"weight": [1.0, 0.5, -0.3], "density": [0.2, 0.5, 0.9], "normalize": True,
              "rescale": False, "lambda": 1.0, "int8_mask": False}
    a = tensor_anatomy(deltas, params, sparsification="magnitude", consensus="sum", base=base)
    # the registry's TIES (its fused / one-pass kernel path) on the same task vectors
    merged = METHODS["ties"].fn(base, None, params, cache={"deltas": deltas})
    true_delta = merged.double() - base.double()
    tol = 1e-6 if dtype == torch.float32 else 1e-3  # summation order of the fused path
    assert a.merged_norm == pytest.approx(float(true_delta.norm()), rel=tol)
    for i in range(n):
        assert float(a.cos[i]) == pytest.approx(_cos(true_delta, deltas[i]), abs=tol)
    # kept mass = the mass trim.keep_top keeps (the shared trim rule)
    keep = trim.keep_top(deltas, [trim.keep_count(d, deltas[0].numel()) for d in
                                  params["density"]])
    absd = deltas.reshape(n, -1).double().abs()
    want = (absd * keep).sum(1) / absd.sum(1)
    np.testing.assert_allclose(a.kept.numpy(), want.numpy(), rtol=1e-12)
    assert 0 < float(a.kept[0]) < float(a.kept[1]) < float(a.kept[2]) < 1
    # elected-away mass: kept entries whose weighted sign loses the election
    w = torch.tensor(params["weight"], dtype=dtype).view(n, 1)
    wd = deltas.reshape(n, -1) * keep * w
    lost = keep & ~sign_consensus(wd)
    np.testing.assert_allclose(a.elected_away.numpy(),
                               ((absd * lost).sum(1) / absd.sum(1)).numpy(), rtol=1e-12)
    assert float(a.elected_away.sum()) > 0


def test_linear_family_discards_nothing_by_election():
    base, deltas = _stack(1)
    a = tensor_anatomy(deltas, {"weight": [1.0, 1.0, 1.0], "lambda": 0.5},
                       sparsification=None, consensus=None, base=base)
    assert torch.equal(a.elected_away, torch.zeros(3, dtype=torch.float64))
    np.testing.assert_allclose(a.kept.numpy(), 1.0)
    mixed = 0.5 * deltas.sum(0)
    assert a.merged_norm == pytest.approx(float(((base + mixed).double() - base.double())
                                                .norm()), rel=1e-12)


def test_outside_family_gives_cosines_only():
    base, deltas = _stack(2)
    merged = base + deltas.mean(0)
    a = tensor_anatomy(deltas, base=base, merged=merged)
    assert torch.isnan(a.kept).all() and torch.isnan(a.elected_away).all()
    assert float(a.cos[0]) == pytest.approx(_cos(merged - base, deltas[0]), abs=1e-9)


def _ms(path_set):
    from wsviz.io import ModelSet

    return ModelSet.open(str(path_set.base), [str(p) for p in path_set.fts])


@pytest.fixture(scope="module")
def bf16_set(tmp_path_factory):
    from tests.checkpoints import build_llama_set_bf16

    return _ms(build_llama_set_bf16(tmp_path_factory.mktemp("anat_bf16"), n_ft=2))


def test_recipe_anatomy_bf16_llama_matches_in_memory_merge(bf16_set):
    ms = bf16_set
    recipe = Recipe(method="ties", base="base",
                    models=[{"model": lab, "params": {"weight": w, "density": d}}
                            for lab, w, d in zip(ms.labels, [1.0, 0.6], [0.3, 0.6])],
                    params={"lambda": 1.0})
    df = recipe_anatomy(ms, recipe)
    names = [n for n in ms.names if ms.info(n).dtype.is_floating_point]
    assert set(df["layer"]) == set(names) and len(df) == 2 * len(names)
    assert list(dict.fromkeys(df["layer"])) == depth_order(names)
    merged = InMemoryMerger(ms).merge(recipe)
    mg = InMemoryMerger(ms)
    for name in names[:: max(1, len(names) // 6)]:
        base = mg.base(name)
        assert base.dtype == torch.bfloat16  # merged in bf16, as mergekit would
        true_delta = merged[name].double() - base.double()
        rows = df[df["layer"] == name].set_index("model")
        assert rows["merged_norm"].iloc[0] == pytest.approx(float(true_delta.norm()),
                                                           rel=1e-6, abs=1e-12)
        d = mg.deltas(name)
        for i, lab in enumerate(ms.labels):
            if float(d[i].double().norm()) > 0 and float(true_delta.norm()) > 0:
                assert rows.loc[lab, "cos"] == pytest.approx(_cos(true_delta, d[i]), abs=1e-6)
    two_d = df[df["layer"].map(lambda n: len(ms.info(n).shape) == 2)]
    per_model = two_d.groupby("model")["kept"]
    assert per_model.max()[ms.labels[0]] < 1  # density 0.3 trims every matrix
    assert per_model.mean()[ms.labels[0]] < per_model.mean()[ms.labels[1]]
    summ = anatomy_summary(df).set_index("model")
    assert 0 < summ.loc[ms.labels[0], "kept"] < summ.loc[ms.labels[1], "kept"] < 1
    # task_arithmetic: no election, nothing elected away
    ta = Recipe(method="task_arithmetic", base="base",
                models=[{"model": lab, "params": {"weight": 1.0}} for lab in ms.labels],
                params={"lambda": 0.5})
    t = recipe_anatomy(ms, ta)
    assert (t["elected_away"] == 0).all() and (t["kept"].dropna() == 1).all()


def test_recipe_anatomy_on_demo_zoo_per_model_density(zoo):
    ms = zoo.modelset()
    labels = ms.labels
    dens = [0.1 if i == 0 else 0.8 for i in range(len(labels))]
    recipe = Recipe(method="ties", base="base",
                    models=[{"model": lab, "params": {"weight": 1.0, "density": d}}
                            for lab, d in zip(labels, dens)], params={})
    df = recipe_anatomy(ms, recipe)
    summ = anatomy_summary(df).set_index("model")
    assert summ.loc[labels[0], "kept"] < summ.loc[labels[1], "kept"]
    assert (summ["elected_away"] > 0).all() and (summ["cos"] > 0).all()
    # methods outside the task-arithmetic family (sce) still give cosines and norms
    d2 = recipe_anatomy(ms, Recipe(method="sce", base="base", models=list(labels), params={}))
    assert d2["kept"].isna().all() and d2["elected_away"].isna().all()
    moved = d2[d2["task_norm"] > 0]  # lm_head is not fine-tuned: zero task vectors, no cosine
    assert len(moved) >= len(d2) - len(labels)
    assert moved["cos"].notna().all() and (moved["merged_norm"] > 0).all()


def test_tables_keep_the_recipe_model_order(zoo):
    ms = zoo.modelset()
    labels = list(reversed(ms.labels))[:3]
    recipe = Recipe(method="ties", base="base", params={"density": 0.3},
                    models=[{"model": lab, "params": {"weight": 1.0}} for lab in labels])
    df = recipe_anatomy(ms, recipe)
    assert list(df["model"].iloc[:3]) == labels
    assert list(anatomy_summary(df)["model"]) == labels


def test_anatomy_by_block_llama(bf16_set):
    from wsviz.analysis.anatomy import anatomy_by_block

    ms = bf16_set
    recipe = Recipe(method="ties", base="base", params={"density": 0.3},
                    models=[{"model": lab, "params": {"weight": 1.0}} for lab in ms.labels])
    df = recipe_anatomy(ms, recipe)
    by = anatomy_by_block(df)
    n_blocks = int(df["block"].max()) + 1
    # embeddings before block 0, final norm / head after the last block
    assert set(by["block"]) == {-1, *range(n_blocks), n_blocks}
    assert len(by) == len(set(by["block"])) * len(ms.labels)
    # mass-weighted: a block's kept share is its tensors' kept mass over their mass
    b0 = df[(df["block"] == 0) & (df["model"] == ms.labels[0])]
    row = by[(by["block"] == 0) & (by["model"] == ms.labels[0])].iloc[0]
    assert row["kept"] == pytest.approx(b0["kept_mass"].sum() / b0["mass"].sum())
    assert row["merged_norm"] == pytest.approx(float((b0["merged_norm"] ** 2).sum()) ** 0.5)
    assert list(by["block"]) == sorted(by["block"])

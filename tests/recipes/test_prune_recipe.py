"""wsviz.recipes.prune: recipe validation and round trips, the tensor-selection rule, the
per-tensor sparsity (schedules and their fallback) and the mask semantics of each method, on a
real tiny Llama checkpoint."""

from __future__ import annotations

import pytest
import torch

from wsviz.errors import RecipeError, WsvizError
from wsviz.io import open_source
from wsviz.recipes.prune import (
    PrunePlan,
    PruneRecipe,
    norm_for,
    selected_names,
    source_shapes,
)


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("d,msg", [
    ({"sparsity": 0.5}, "'method' is missing"),
    ({"method": "magic", "sparsity": 0.5}, "unknown prune method 'magic'"),
    ({"method": "magnitude"}, "needs sparsity"),
    ({"method": "magnitude", "sparsity": 1.5}, "sparsity=1.5 is outside [0, 1]"),
    ({"method": "magnitude", "sparsity": float("nan")}, "sparsity=nan is outside"),
    ({"method": "magnitude", "sparsity": float("inf")}, "sparsity=inf is outside"),
    ({"method": "magnitude", "sparsity": "half"}, "sparsity='half' is not a number"),
    ({"method": "magnitude", "sparsity": True}, "sparsity=True is not a number"),
    ({"method": "magnitude", "sparsity": 0.5, "dim": 1}, "'dim' does not apply to magnitude"),
    ({"method": "magnitude", "sparsity": 0.5, "sparsty": 0.1}, "unknown key 'sparsty'"),
    ({"method": "magnitude", "sparsity": 0.5, "scope": "model"}, "scope='model'"),
    ({"method": "magnitude", "scope": "global", "schedule": [0.1, 0.9]},
     "scope global uses one sparsity"),
    ({"method": "magnitude", "schedule": [0.1, 1.2]}, "schedule value=1.2 is outside"),
    ({"method": "magnitude", "schedule": [{"filter": "mlp", "valu": 0.3}]}, "filter entry"),
    ({"method": "magnitude", "schedule": ["a", "b"]}, "schedule values are sparsities"),
    ({"method": "random", "sparsity": 0.5, "seed": -1}, "seed=-1 must be >= 0"),
    ({"method": "random", "sparsity": 0.5, "seed": 1.5}, "seed=1.5 is not an integer"),
    ({"method": "structured", "sparsity": 0.5, "dim": 2}, "dim=2 must be in [0, 1]"),
    ({"method": "nm", "n": 5, "m": 4}, "n must be <= m"),
    ({"method": "2:4", "sparsity": 0.5}, "fixed sparsity"),
    ({"method": "nm", "n": 0}, "n=0 must be >= 1"),
    ({"method": "2:4", "n": 1}, "already sets n and m"),
    ({"method": "magnitude", "sparsity": 0.5, "include": [""]}, "include must be a list"),
    ({"method": "magnitude", "sparsity": 0.5, "exclude": 3}, "exclude must be a list"),
    ({"method": "magnitude", "sparsity": 0.5, "calib": "x.pt"}, "'calib' does not apply"),
])
def test_recipe_validation_one_line_naming_the_key(d, msg):
    with pytest.raises(RecipeError) as e:
        PruneRecipe.from_dict(d)
    text = str(e.value)
    assert msg in text and "\n" not in text


def test_recipe_round_trips_and_nm_shorthand(tmp_path):
    r = PruneRecipe.from_dict({"method": "2:4", "exclude": "*.o_proj.*"})
    assert (r.method, r.n, r.m, r.exclude) == ("nm", 2, 4, ["*.o_proj.*"])
    assert r.to_dict() == {"method": "nm", "n": 2, "m": 4, "exclude": ["*.o_proj.*"]}
    for d in ({"method": "magnitude", "sparsity": 0.3, "scope": "row"},
              {"method": "random", "sparsity": 0.5, "seed": 7, "include": ["*mlp*"]},
              {"method": "structured", "schedule": [{"filter": "mlp", "value": 0.5}],
               "dim": 1},
              {"method": "wanda", "sparsity": 0.5, "calib": "ids.pt"}):
        r = PruneRecipe.from_dict(d)
        assert PruneRecipe.from_text(r.to_yaml()) == r
        assert PruneRecipe.from_text(r.to_json()) == r
        assert {k: v for k, v in r.to_dict().items() if k not in ("scope", "seed", "dim")} \
            == {k: v for k, v in d.items() if k not in ("scope", "seed", "dim")}
    p = tmp_path / "r.yml"
    r.save(p)
    assert PruneRecipe.load(p) == r
    with pytest.raises(WsvizError, match="exists"):
        r.save(p)
    bad = tmp_path / "bad.yml"
    bad.write_text("method: magnitude\nsparsity: 0.5\nexclude: [a]\nseed: 3\n")
    with pytest.raises(RecipeError, match=r"bad\.yml: 'seed' does not apply to magnitude"):
        PruneRecipe.load(bad)
    bad.write_text("method: [magnitude\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        PruneRecipe.load(bad)
    with pytest.raises(RecipeError, match="no such prune recipe"):
        PruneRecipe.load(tmp_path / "none.yml")


# -- selection ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(llama_set):
    return source_shapes(open_source(llama_set.base))


def test_default_selection_is_the_2d_weight_matrices_without_embeddings_heads(shapes):
    sel = selected_names(PruneRecipe("magnitude", 0.5).validate(), shapes)
    two_d = [n for n, (s, _) in shapes.items() if len(s) == 2]
    assert set(sel) == {n for n in two_d if n not in ("model.embed_tokens.weight",
                                                      "lm_head.weight")}
    assert len(sel) == 4 * 7  # q k v o gate up down in 4 blocks
    assert not any("norm" in n for n in sel)
    inc = selected_names(PruneRecipe("magnitude", 0.5, include=["*embed*", "*.mlp.*"],
                                     exclude=["*.layers.0.*"]).validate(), shapes)
    assert inc == ["model.embed_tokens.weight"] + [
        n for n in shapes if ".mlp." in n and ".layers.0." not in n]
    with pytest.raises(RecipeError, match=r"include glob '\*mpl\*' matches no tensor"):
        selected_names(PruneRecipe("magnitude", 0.5, include=["*mpl*"]).validate(), shapes)
    with pytest.raises(RecipeError, match=r"divisible by 3; exclude it"):
        selected_names(PruneRecipe("nm", n=1, m=3).validate(), shapes)


def test_schedule_and_its_fallback(shapes):
    q0, q3 = "model.layers.0.self_attn.q_proj.weight", "model.layers.3.self_attn.q_proj.weight"
    up1 = "model.layers.1.mlp.up_proj.weight"
    # a gradient over the 4 blocks: t = block / 3
    p = PrunePlan(PruneRecipe("magnitude", schedule=[0.3, 0.9]), shapes)
    assert p.sparsity_of(q0) == pytest.approx(0.3) and p.sparsity_of(q3) == pytest.approx(0.9)
    assert p.sparsity_of(up1) == pytest.approx(0.5)
    # filters without a catch-all: uncovered tensors get `sparsity`, or stay dense
    flt = [{"filter": "mlp", "value": 0.7}]
    p = PrunePlan(PruneRecipe("magnitude", 0.2, schedule=flt), shapes)
    assert p.sparsity_of(up1) == 0.7 and p.sparsity_of(q0) == 0.2
    p = PrunePlan(PruneRecipe("magnitude", schedule=flt), shapes)
    assert p.sparsity_of(up1) == 0.7 and p.sparsity_of(q0) == 0.0
    w = torch.randn(64, 32)
    assert p.mask(q0, w).all()  # dense: kept entirely
    assert p.sparsity_of("model.norm.weight") is None and p.mask("lm_head.weight", w) is None


# -- masks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nm_structured_magnitude_random_semantics(shapes, dtype):
    name = "model.layers.2.mlp.down_proj.weight"  # [32, 64]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shapes[name][0], generator=g).to(dtype)
    a = w.abs().float()
    # N:M: exactly n kept in every group of m consecutive inputs, the n largest
    x, m = PrunePlan(PruneRecipe("nm", n=2, m=4), shapes).apply(name, w)
    assert x.dtype == dtype and (m.reshape(-1, 4).sum(1) == 2).all()
    ga, gm = a.reshape(-1, 4), m.reshape(-1, 4)
    assert (ga.masked_fill(~gm, float("inf")).min(1).values
            >= ga.masked_fill(gm, -1).max(1).values).all()
    assert torch.equal(x, torch.where(m, w, torch.zeros((), dtype=dtype)))
    # structured: whole rows (dim 0) / columns (dim 1), the ones of least L2 norm dropped
    for dim in (0, 1):
        _, m = PrunePlan(PruneRecipe("structured", 0.25, dim=dim), shapes).apply(name, w)
        keep = m.all(1 - dim)
        assert (m == keep.unsqueeze(1 - dim)).all()  # a row/column is kept or dropped whole
        norms = a.pow(2).sum(1 - dim).sqrt()
        assert int((~keep).sum()) == w.shape[dim] // 4
        assert norms[keep].min() >= norms[~keep].max()
    # magnitude row scope: every row keeps the same count, its largest
    _, m = PrunePlan(PruneRecipe("magnitude", 0.5, scope="row"), shapes).apply(name, w)
    assert (m.sum(1) == 32).all()
    # random: per-tensor seeded, independent of which other tensors are pruned
    r = PruneRecipe("random", 0.5, seed=3)
    m1 = PrunePlan(r, shapes).mask(name, w)
    m2 = PrunePlan(PruneRecipe("random", 0.5, seed=3, include=[name]), shapes).mask(name, w)
    assert torch.equal(m1, m2) and int(m1.sum()) == w.numel() // 2
    assert not torch.equal(m1, PrunePlan(PruneRecipe("random", 0.5, seed=4), shapes)
                           .mask(name, w))


def test_global_magnitude_one_threshold(llama_set, shapes):
    src = open_source(llama_set.base)
    plan = PrunePlan(PruneRecipe("magnitude", 0.6, scope="global"), shapes, load=src.get)
    kept = pruned = 0
    lo_kept, hi_pruned = float("inf"), 0.0
    for n in plan.selected:
        w = src.get(n)
        m = plan.mask(n, w)
        kept += int(m.sum())
        pruned += int((~m).sum())
        lo_kept = min(lo_kept, float(w.abs()[m].min()))
        hi_pruned = max(hi_pruned, float(w.abs()[~m].max()))
    assert lo_kept >= hi_pruned  # one threshold across all layers
    assert pruned / (kept + pruned) == pytest.approx(0.6, abs=1e-3)


def test_wanda_norm_matching():
    v = torch.ones(3)
    assert norm_for("model.layers.0.mlp.up_proj.weight",
                    {"model.layers.0.mlp.up_proj": v}) is v
    assert norm_for("model.layers.0.mlp.up_proj.weight",
                    {"layers.0.mlp.up_proj": v}) is v  # bare AutoModel names
    assert norm_for("layers.0.mlp.up_proj.weight", {"model.layers.0.mlp.up_proj": v}) is v
    assert norm_for("enc.0.weight", {"enc.0.weight": v}) is v  # keyed by tensor name
    assert norm_for("model.layers.0.mlp.up_proj.weight", {"layers.1.mlp.up_proj": v}) is None
    with pytest.raises(RecipeError, match="all match"):
        norm_for("b.c.weight", {"x.b.c": v, "y.b.c": v})

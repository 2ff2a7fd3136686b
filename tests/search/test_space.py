"""Search spaces: dimensions, layer groups -> exact mergekit filters, recipes per point."""

from __future__ import annotations

import pytest
import yaml

from tests.search.conftest import lm_recipe
from wsviz.io import ModelSet, parse_layer_name
from wsviz.search import SearchSpace, SpaceError, tensor_filters
from wsviz.search.space import REST, resolve_groups


@pytest.fixture(scope="module")
def lm_names(lm_set):
    s, _ = lm_set
    return ModelSet.open(str(s.base), [str(p) for p in s.fts]).names


def _matches(filters, names):
    return {n for n in names if any(f in n for f in filters)}


def test_groups_partition_and_filters_select_exactly(lm_names):
    groups = resolve_groups(["attn", "mlp+depth:2"], lm_names)
    assert list(groups) == ["attn", "mlp+blocks:0-1", "mlp+blocks:2-3", REST]
    seen = [n for ns in groups.values() for n in ns]
    assert sorted(seen) == sorted(lm_names)  # a partition: every tensor exactly once
    assert {parse_layer_name(n).group for n in groups[REST]} == {"embed", "norm", "head"}
    for g, ns in groups.items():
        if g == REST:
            continue
        f = tensor_filters(ns, lm_names)
        assert _matches(f, lm_names) == set(ns), g
    assert tensor_filters(groups["attn"], lm_names) == [".self_attn."]
    assert tensor_filters(groups["mlp+blocks:0-1"], lm_names) == [".layers.0.mlp.",
                                                                 ".layers.1.mlp."]


def test_recipe_for_resolves_each_group_to_its_value(lm_set, lm_names):
    s, _ = lm_set
    r = lm_recipe(s, "ties")
    space = SearchSpace.from_dict(
        {"params": {"density": {"low": 0.1, "high": 1.0, "groups": ["attn", "mlp"]},
                    "lambda": {"low": 0.5, "high": 2.0},
                    "weight": {"low": 0.0, "high": 2.0, "per_model": True}}},
        r, lm_names)
    labels = r.labels
    assert space.names == ["density[attn]", "density[mlp]", f"density[{REST}]", "lambda",
                           *[f"weight@{m}" for m in labels]]
    point = {"density[attn]": 0.3, "density[mlp]": 0.7, f"density[{REST}]": 0.9,
             "lambda": 1.25, **{f"weight@{m}": 0.5 + i for i, m in enumerate(labels)}}
    rec = space.recipe_for(point)
    for n in lm_names:
        v = rec.resolve(n, 0.5)
        want = {"attn": 0.3, "mlp": 0.7}.get(parse_layer_name(n).group, 0.9)
        assert v["density"] == [pytest.approx(want)] * 3, n
        assert v["lambda"] == 1.25
        assert v["weight"] == [0.5, 1.5, 2.5]
    # the exported YAML is a valid mergekit config that keeps the filters
    import mergekit.config

    text = rec.to_mergekit_yaml()
    cfg = mergekit.config.MergeConfiguration.model_validate(yaml.safe_load(text))
    assert cfg.merge_method == "ties"
    assert "self_attn" in text


def test_space_errors_name_the_parameter(lm_set, lm_names, tmp_path):
    s, _ = lm_set
    r = lm_recipe(s, "ties")

    def bad(d, match):
        with pytest.raises(SpaceError, match=match):
            SearchSpace.from_dict(d, r, lm_names)

    bad({"params": {"lamda": {"low": 0, "high": 1}}}, "'lamda' is not a parameter.*lambda")
    bad({"params": {"lambda": {"low": 2, "high": 1}}}, "low .2. must be below high")
    bad({"params": {"density": {"low": 0.0, "high": 1}}}, r"density.low.*\(0")
    bad({"params": {"density": {"low": 0.1, "high": 1, "groups": ["attn", "self_attn"]}}},
        "unknown group selector 'self_attn'")
    bad({"params": {"density": {"low": 0.1, "high": 1, "groups": ["attn", "blocks:0"]}}},
        "both select tensor")
    bad({"params": {"lambda": {"low": 0.1, "high": 1, "per_model": True}}},
        "per_model needs a per-model parameter")
    bad({"params": {"rescale": {"low": 0, "high": 1}}}, "choices")
    bad({"params": {"lambda": {"low": 0.1, "high": 1, "spread": 2}}}, "unknown key")
    bad({"parms": {}}, "unknown key.*parms")
    sliced = lm_recipe(s, "ties")
    sliced.slices = []
    with pytest.raises(SpaceError, match="slices: recipe"):
        SearchSpace.from_dict({"params": {"lambda": {"low": 0.1, "high": 1}}}, sliced, lm_names)
    p = tmp_path / "space.yml"
    p.write_text("params: [oops\n")
    with pytest.raises(SpaceError, match="space.yml: not valid YAML"):
        SearchSpace.load(p, r, lm_names)
    with pytest.raises(SpaceError, match="no such search-space file"):
        SearchSpace.load(tmp_path / "missing.yml", r, lm_names)


def test_dimension_unit_mapping_roundtrip(lm_set, lm_names):
    s, _ = lm_set
    space = SearchSpace.from_dict(
        {"params": {"lambda": {"low": 0.1, "high": 10.0, "log": True},
                    "density": {"low": 0.2, "high": 1.0, "step": 0.2}}},
        lm_recipe(s, "ties"), lm_names)
    lam, den = space.dim("lambda"), space.dim("density")
    assert lam.from_unit(0.5) == pytest.approx(1.0)
    assert lam.to_unit(lam.from_unit(0.3)) == pytest.approx(0.3)
    assert den.from_unit(0.49) == pytest.approx(0.6)
    rec = space.recipe_for({"lambda": 1.0, "density": 0.4})
    assert [m.params["density"] for m in rec.models] == [0.4] * 3

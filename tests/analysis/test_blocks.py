"""The depth x module reshaping of the analysis table (wsviz.analysis.blocks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsviz.analysis.blocks import (
    block_layout,
    depth_frame,
    model_profiles,
    module_profiles,
    reduce_models,
)

LLAMA_MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                 "input_layernorm", "post_attention_layernorm"]


def llama_names(n_blocks: int) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for b in range(n_blocks):
        # deliberately not in column order inside a block
        for m in reversed(LLAMA_MODULES):
            names.append(f"model.layers.{b}.{m}.weight")
    return names + ["model.norm.weight", "lm_head.weight"]


def llama_table(n_blocks: int, models=("ft0", "ft1")) -> pd.DataFrame:
    """delta_rel = 100*block + col + model index/10 (closed form), alpha on base only."""
    layout = block_layout(llama_names(n_blocks))
    rows = []
    for name in llama_names(n_blocks):
        cell = layout.cell_of(name)
        for j, m in enumerate(models):
            v = 100 * cell[1] + cell[0] + j / 10 if cell else -1.0
            rows.append((name, m, "delta_rel", v))
        rows.append((name, "base", "alpha", 2.0 + (cell[1] if cell else 0)))
        rows.append((name, "ft0", "broken", np.nan))
    return pd.DataFrame(rows, columns=["layer", "model", "metric", "value"])


def test_llama_layout_columns_blocks_and_flat():
    lay = block_layout(llama_names(80))
    assert lay.has_blocks
    assert lay.modules == ["q", "k", "v", "o", "gate", "up", "down", "input_layernorm",
                           "post_attention_layernorm"]
    assert lay.blocks == list(range(80))
    assert lay.flat == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    assert len(lay.cells) == 80 * 9
    assert lay.cell_of("model.layers.41.mlp.down_proj.weight") == (6, 41)
    assert lay.layer_at(0, 79) == "model.layers.79.self_attn.q_proj.weight"
    assert lay.layer_at(0, 80) is None and lay.cell_of("lm_head.weight") is None


def test_bert_layout_uses_the_parser_kinds_and_keeps_biases():
    names = []
    for b in range(2):
        p = f"encoder.layer.{b}."
        for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "attention.output.LayerNorm",
                  "intermediate.dense", "output.dense", "output.LayerNorm"):
            names += [p + m + ".weight", p + m + ".bias"]
    names = ["embeddings.word_embeddings.weight", *names, "pooler.dense.weight"]
    lay = block_layout(names)
    assert lay.modules == ["q", "q.bias", "k", "k.bias", "v", "v.bias", "o", "o.bias",
                           "up", "up.bias", "down", "down.bias",
                           "attention.output.LayerNorm", "attention.output.LayerNorm.bias",
                           "output.LayerNorm", "output.LayerNorm.bias"]
    assert lay.flat == ["embeddings.word_embeddings.weight", "pooler.dense.weight"]
    assert lay.layer_at(6, 1) == "encoder.layer.1.attention.output.dense.weight"


def test_two_paths_of_one_kind_keep_their_paths():
    names = [f"h.{b}.{m}.weight" for b in range(2) for m in ("attn.q", "cross.q_proj")]
    assert block_layout(names).modules == ["attn.q", "cross.q_proj"]


def test_no_submodules_means_no_blocks():
    # the demo zoo: nn.Sequential indices under "layers", no sub-module path
    names = ["encoder.layers.0.weight", "encoder.layers.0.bias", "encoder.layers.1.weight"]
    lay = block_layout(names)
    assert not lay.has_blocks and lay.flat == names and lay.modules == []


def test_depth_frame_values_and_models():
    table = llama_table(12)
    lay = block_layout(llama_names(12))
    f = depth_frame(table, lay, "delta_rel", "ft1")
    assert len(f) == 12 * 9
    assert f.groupby("block").size().tolist() == [9] * 12
    row = f[(f.block == 7) & (f.module == "up")]
    assert row["layer"].item() == "model.layers.7.mlp.up_proj.weight"
    assert row["value"].item() == pytest.approx(705.1)
    mean = depth_frame(table, lay, "delta_rel", "mean over models")
    assert mean[(mean.block == 7) & (mean.col == 5)]["value"].item() == pytest.approx(705.05)
    mx = depth_frame(table, lay, "delta_rel", "max over models")
    assert mx["value"].max() == pytest.approx(1108.1)
    # a base-only metric is shown for a fine-tune; an all-NaN metric gives an empty grid
    alpha = depth_frame(table, lay, "alpha", "ft0")
    assert len(alpha) == 108 and alpha[alpha.block == 3]["value"].eq(5.0).all()
    assert depth_frame(table, lay, "broken", "ft0").empty
    assert set(reduce_models(table, "ft0", ["delta_rel"])["layer"]) == set(llama_names(12))


def test_profiles_per_module_and_per_model():
    table = llama_table(5)
    lay = block_layout(llama_names(5))
    prof = module_profiles(depth_frame(table, lay, "delta_rel", "ft0"))
    down = prof[prof.module == "down"]
    assert down["block"].tolist() == [0, 1, 2, 3, 4]
    assert down["value"].tolist() == pytest.approx([6, 106, 206, 306, 406])
    per = model_profiles(table, lay, "delta_rel", "gate")
    assert per["model"].unique().tolist() == ["ft0", "ft1"]
    assert per[per.model == "ft1"]["value"].tolist() == pytest.approx(
        [4.1, 104.1, 204.1, 304.1, 404.1])
    mean = model_profiles(table, lay, "delta_rel")  # mean over the 9 columns
    assert mean[mean.model == "ft0"]["value"].tolist() == pytest.approx(
        [100 * b + 4 for b in range(5)])
    assert model_profiles(table, lay, "alpha")["model"].unique().tolist() == ["base"]


def test_tidy_table_types():
    """One finishing step for every tidy table (analyze, analyze_model): nullable block,
    string categories, the column order given."""
    from wsviz.analysis.engine import COLUMNS
    from wsviz.analysis.tidy import tidy_table

    t = tidy_table([("a.w", 0, "q", "attn", "ft", "norm", 1.0, ""),
                    ("emb", None, "embed", "other", "ft", "norm", 2.0, "x")], COLUMNS)
    assert list(t.columns) == COLUMNS and str(t["block"].dtype) == "Int64"
    assert t["block"].isna().tolist() == [False, True]
    assert all(t[c].map(type).eq(str).all() for c in ("kind", "group", "model", "metric"))
    assert tidy_table([], COLUMNS).shape == (0, len(COLUMNS))

"""Depth x module view of the analysis table: transformer block down, module kind across.

A *block cell* is a tensor inside a repeated block whose name has a sub-module path after the
block index (``model.layers.3.self_attn.q_proj.weight``: block 3, module ``q``). Tensors
outside the blocks (embeddings, final norm, ``lm_head``) and tensors directly under a block
index with no sub-module (``encoder.layers.0.weight`` of an ``nn.Sequential``) are *flat*:
they stay in the layers x metrics heatmap. A model with no block cell has no depth view.

Module columns are named from :func:`wsviz.io.layers.parse_layer_name`: the short kind
(``q k v qkv o gate up down``) where one module path of the model has that kind, otherwise
the module path after the block index (``input_layernorm``, ``attention.output.LayerNorm``);
a non-``weight`` parameter keeps its name (``q.bias``).

Everything here is pandas over the tidy table (columns ``layer, model, metric, value``);
no torch, no panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wsviz.io.layers import parse_layer_name, split_block

#: aggregates offered beside the model labels (reduce over the table's ``model`` column)
AGGREGATES = ("mean over models", "max over models")

#: short column label of each kind (when a single module path of the model has that kind)
SHORT = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_qkv": "qkv", "attn_o": "o",
         "mlp_gate": "gate", "mlp_up": "up", "mlp_down": "down"}
#: column order: attention, then MLP, then norms and anything else
ORDER = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp_gate", "mlp_up", "mlp_down",
         "norm", "other", "embed", "head")
#: model values meaning "independent of the fine-tune" (kept when one model is shown)
SHARED_MODELS = ("", "base", "all")


@dataclass(frozen=True)
class BlockLayout:
    """Where each tensor goes.

    - ``cells``: DataFrame ``layer, block, module, col`` — one row per block cell
      (``col`` = index of ``module`` in ``modules``), in block then column order;
    - ``modules``: column labels, left to right; ``blocks``: sorted block indices present;
    - ``flat``: tensors outside the grid, in the given order.
    """

    cells: pd.DataFrame
    modules: list[str]
    blocks: list[int]
    flat: list[str]

    @property
    def has_blocks(self) -> bool:
        """True when at least one tensor is a block cell (else: flat view only)."""
        return not self.cells.empty

    def cell_of(self, layer: str) -> tuple[int, int] | None:
        """``(col, block)`` of tensor ``layer`` in the grid, None for a flat tensor."""
        hit = self.cells[self.cells["layer"] == layer]
        if hit.empty:
            return None
        return int(hit["col"].iloc[0]), int(hit["block"].iloc[0])

    def layer_at(self, col: int, block: int) -> str | None:
        """The tensor at grid position (``col``, ``block``), None for an empty cell."""
        hit = self.cells[(self.cells["col"] == col) & (self.cells["block"] == block)]
        return None if hit.empty else str(hit["layer"].iloc[0])


def block_layout(layers: list[str]) -> BlockLayout:
    """Split tensor names into block cells and flat tensors (see the module docstring)."""
    recs, flat = [], []
    for name in layers:
        parsed = parse_layer_name(name)
        parts = split_block(name)
        module = parts[2].strip(".") if parts else ""
        path, _, param = module.rpartition(".")
        if parsed.block is None or not path:
            flat.append(name)
            continue
        recs.append((name, parsed.block, parsed.kind, path, param))
    if not recs:
        return BlockLayout(pd.DataFrame(columns=["layer", "block", "module", "col"]), [], [],
                           list(layers))
    df = pd.DataFrame(recs, columns=["layer", "block", "kind", "path", "param"])
    paths_of_kind = df.groupby("kind")["path"].nunique()

    def label(kind: str, path: str, param: str) -> str:
        base = SHORT[kind] if kind in SHORT and paths_of_kind[kind] == 1 else path
        return base if param == "weight" else f"{base}.{param}"

    df["module"] = [label(k, p, q) for k, p, q in zip(df["kind"], df["path"], df["param"])]
    rank = {k: i for i, k in enumerate(ORDER)}
    cols = (df.drop_duplicates("module")
            .assign(_k=lambda d: d["kind"].map(rank), _w=lambda d: d["param"] != "weight")
            .sort_values(["_k", "path", "_w", "param"]))
    modules = cols["module"].tolist()
    col_of = {m: i for i, m in enumerate(modules)}
    df["col"] = df["module"].map(col_of)
    # one tensor per (block, module): the first one wins (a model never has two)
    cells = (df.drop_duplicates(["block", "module"]).sort_values(["block", "col"])
             [["layer", "block", "module", "col"]].reset_index(drop=True))
    cells["block"] = cells["block"].astype(int)
    return BlockLayout(cells, modules, sorted(cells["block"].unique().tolist()), flat)


def reduce_models(table: pd.DataFrame, model: str,
                  metrics: list[str] | None = None) -> pd.DataFrame:
    """One value per (layer, metric) for ``model``: a model label, or an aggregate of
    :data:`AGGREGATES` (mean / max over every row of the layer and metric). For a model
    label, rows independent of the fine-tune (model empty, ``base`` or ``all``) fill the
    metrics that model has no own row for. Non-finite values are dropped.

    Returns columns ``layer, metric, value``.
    """
    df = table[["layer", "model", "metric", "value"]].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df = df[np.isfinite(df["value"].to_numpy(dtype=float))]
    if metrics:
        df = df[df["metric"].isin(metrics)]
    if model in AGGREGATES:
        how = "mean" if model == AGGREGATES[0] else "max"
        return df.groupby(["layer", "metric"], sort=False)["value"].agg(how).reset_index()
    own = df[df["model"].astype(str) == model]
    shared = df[df["model"].isna() | df["model"].astype(str).isin(SHARED_MODELS)]
    shared = shared[~shared.set_index(["layer", "metric"]).index.isin(
        own.set_index(["layer", "metric"]).index)]
    return pd.concat([own, shared]).groupby(["layer", "metric"], sort=False)["value"] \
        .mean().reset_index()


def depth_frame(table: pd.DataFrame, layout: BlockLayout, metric: str,
                model: str) -> pd.DataFrame:
    """The grid for one metric: columns ``block, col, module, layer, value`` (one row per
    block cell that has a finite value of ``metric`` for ``model``, see
    :func:`reduce_models`), in block then column order."""
    vals = reduce_models(table, model, [metric])[["layer", "value"]]
    out = layout.cells.merge(vals, on="layer", how="inner")
    return out[["block", "col", "module", "layer", "value"]].sort_values(
        ["block", "col"]).reset_index(drop=True)


def module_profiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Depth profile per module from a :func:`depth_frame`: ``module, block, value``
    (value vs block index, one series per module column, in column order)."""
    return frame.sort_values(["col", "block"])[["module", "block", "value"]] \
        .reset_index(drop=True)


def model_profiles(table: pd.DataFrame, layout: BlockLayout, metric: str,
                   module: str | None = None) -> pd.DataFrame:
    """Depth profile per model: ``model, block, value`` where value is ``metric`` of the
    ``module`` column at each block, or the mean over all module columns when ``module``
    is None. One series per value of the table's ``model`` column (each fine-tune, and
    ``base`` / ``all`` / pair rows when the metric has them), in table order."""
    cells = layout.cells if module is None else layout.cells[layout.cells["module"] == module]
    df = table.loc[table["metric"] == metric, ["layer", "model", "value"]].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df = df[np.isfinite(df["value"].to_numpy(dtype=float)) & df["model"].notna()]
    df["model"] = df["model"].astype(str)
    df = df.merge(cells[["layer", "block"]], on="layer", how="inner")
    order = list(dict.fromkeys(df["model"]))
    out = df.groupby(["model", "block"], sort=False)["value"].mean().reset_index()
    out["_o"] = out["model"].map({m: i for i, m in enumerate(order)})
    return out.sort_values(["_o", "block"]).drop(columns="_o").reset_index(drop=True)

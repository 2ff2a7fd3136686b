""""Why this merge": the anatomy of a recipe, tensor by tensor, as a tidy table.

:func:`recipe_anatomy` streams the model set one tensor at a time (base + the recipe's
models, in the merge's compute dtype), resolves the recipe's parameters for that tensor
(schedules included) and runs :func:`wsviz.compute.merge.anatomy.tensor_anatomy` — the same
trim (:mod:`wsviz.compute.trim`) and sign election the merge uses. No evaluator is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from wsviz.errors import WsvizError

#: columns of :func:`recipe_anatomy`'s table (one row per tensor and merged model)
COLUMNS = ["layer", "order", "block", "kind", "model", "kept", "elected_away", "cos",
           "task_norm", "merged_norm", "mass", "kept_mass", "elected_mass", "dot"]

Loader = Callable[[str], tuple]
"""``load(name) -> (base [*shape], deltas [n_all, *shape])`` in the compute dtype, one row per
model-set label, optionally with a third item: the merge cache of those deltas (e.g.
:meth:`~wsviz.recipes.InMemoryMerger.tensor_cache`, whose rank tables then skip the sort)."""


def depth_order(names: Sequence[str]) -> list[str]:
    """``names`` sorted by depth: embeddings and other block-less tensors before the blocks
    (``layers.0`` … ``layers.L``), heads and final norms after, model order within a block."""
    from wsviz.io import parse_layer_name

    pos = {n: i for i, n in enumerate(names)}
    parsed = {n: parse_layer_name(n) for n in names}
    blocks = [p.block for p in parsed.values() if p.block is not None]
    last = (max(blocks) + 1) if blocks else 0

    def key(n):
        p = parsed[n]
        if p.block is not None:
            return (p.block, pos[n])
        if p.kind in ("head", "norm"):
            return (last, pos[n])
        return (-1, pos[n])

    return sorted(names, key=key)


def recipe_anatomy(modelset, recipe, names: Sequence[str] | None = None, device=None,
                   load: Loader | None = None,
                   progress: Callable[[float, str], None] | None = None) -> pd.DataFrame:
    """Tidy table (:data:`COLUMNS`) of ``recipe`` merged over ``modelset``: one row per
    tensor (``layer``, depth ``order``, ``block``, ``kind``) and merged ``model`` with

    ``kept`` (fraction of the model's |delta| mass the trim keeps; 1 without trimming),
    ``elected_away`` (fraction discarded by the sign election; 0 without one),
    ``cos`` (cosine of the merged delta with the model's task vector), ``task_norm``
    (``‖δ_i‖_F``), ``merged_norm`` (``‖merged − base‖_F``, repeated on the tensor's rows) and
    the raw sums (``mass`` = Σ|δ_i|, ``kept_mass``, ``elected_mass``, ``dot`` = ⟨Δ, δ_i⟩)
    that :func:`anatomy_summary` adds up over tensors.

    Recipes refer to models by model-set label (the base's label / ``"base"`` for the base).
    ``names``: tensors (default: every floating tensor, in :func:`depth_order`); ``load``:
    where tensors come from (default: read from ``modelset`` as stored and cast to the
    recipe's compute dtype). Methods outside the task-arithmetic family get NaN ``kept`` /
    ``elected_away``. Random methods walk the tensors in sorted-name order from one
    generator seeded with ``recipe.seed``, as the merge does. WsvizError for methods that
    need whole-model statistics or Fishers (their tensors cannot be merged one by one).
    """
    from wsviz.compute.merge.anatomy import family
    from wsviz.recipes.engine import make_generator
    from wsviz.recipes.schedule import layer_positions

    recipe.validate()
    spec = recipe.spec
    if spec.model_stats is not None or spec.needs or recipe.slices is not None:
        raise WsvizError(f"the merge anatomy covers per-tensor merges; {spec.name!r} needs "
                         "whole-model inputs (statistics, Fishers or slices) — pick another "
                         "method to see why it merges as it does")
    names = _anatomy_names(modelset, names)
    idx = _recipe_model_index(modelset, recipe)
    full = idx == list(range(len(modelset.labels)))  # every model, in set order
    dev = torch.device(device) if device is not None else torch.device("cpu")
    positions = layer_positions(list(modelset.names))
    fam = family(spec.fn)
    gen = make_generator(recipe, dev)
    order = sorted(names) if gen is not None else names
    rank = {n: i for i, n in enumerate(names)}
    rows = []
    for k, name in enumerate(order):
        base, deltas, cache = _tensor_deltas(modelset, recipe, name, idx, dev, load, full)
        rows += _tensor_rows(recipe, name, rank[name], positions.get(name, 0.0), base, deltas,
                             cache, fam, gen)
        if progress is not None:
            progress((k + 1) / len(order), f"{k + 1}/{len(order)} {name}")
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values("order", kind="stable").reset_index(drop=True)  # recipe model order


def _anatomy_names(modelset, names: Sequence[str] | None) -> list[str]:
    """``names`` (default: every floating tensor) in :func:`depth_order`, the same order for
    any subset; WsvizError for names not in the model set."""
    all_names = list(modelset.names)
    if names is None:
        names = [n for n in all_names if modelset.info(n).dtype.is_floating_point]
    wanted = set(names)
    unknown = sorted(wanted - set(all_names))
    if unknown:
        raise WsvizError(f"tensors not in the model set: {unknown[:5]}; pick names from "
                         "modelset.names")
    return [n for n in depth_order(all_names) if n in wanted]


def _recipe_model_index(modelset, recipe) -> list[int]:
    """Per recipe model, its index in ``modelset.labels`` (-1 for the base)."""
    labels = list(modelset.labels)
    base_labels = {"base", getattr(modelset.base, "label", "base")}
    idx = []
    for m in recipe.labels:
        if m in labels:
            idx.append(labels.index(m))
        elif m in base_labels:
            idx.append(-1)
        else:
            raise WsvizError(f"model {m!r} of the recipe is not in the model set; labels: "
                             f"{labels}")
    return idx


def _tensor_deltas(modelset, recipe, name: str, idx: list[int], dev, load, full: bool):
    """``(base [*shape], deltas [n_recipe_models, *shape], cache)`` of one tensor in the
    compute dtype: from ``load`` (its cache used only when the recipe takes every model in
    set order) or read from ``modelset``; the base's own delta (index -1) is zero."""
    from wsviz.recipes.engine import compute_dtype

    cache = None
    if load is not None:
        got = load(name)
        base, d_all = got[0], got[1]
        cache = got[2] if len(got) > 2 and full else None
    else:
        base = modelset.source(None, name).get(name, device=dev)
        models = torch.stack([modelset.source(lab, name).get(name, device=dev)
                              for lab in modelset.labels])
        dt = compute_dtype(recipe, [base.dtype, models.dtype])
        base = base.to(dt)
        d_all = models.to(dt) - base.unsqueeze(0)
    sel = torch.tensor([max(i, 0) for i in idx], device=d_all.device)
    deltas = d_all.index_select(0, sel)
    if -1 in idx:
        deltas[torch.tensor([i < 0 for i in idx], device=deltas.device)] = 0
    return base, deltas, cache


def _tensor_rows(recipe, name: str, rank: int, t: float, base, deltas, cache, fam, gen
                 ) -> list[tuple]:
    """The :data:`COLUMNS` rows of one tensor, one per recipe model: the trim / election
    anatomy for the task-arithmetic family (``fam`` from
    :func:`wsviz.compute.merge.anatomy.family`), else cosines and norms of the merge."""
    from wsviz.compute.merge.anatomy import tensor_anatomy
    from wsviz.io import parse_layer_name
    from wsviz.recipes.engine import merge_one

    in_family, sparsification, consensus = fam
    if in_family:
        a = tensor_anatomy(deltas, recipe.resolve(name, t), sparsification=sparsification,
                           consensus=consensus, base=base, generator=gen, cache=cache)
    else:
        models = base.unsqueeze(0) + deltas
        merged = merge_one(recipe, name, t, None if recipe.base is None else base, models,
                           generator=gen)
        a = tensor_anatomy(deltas, base=base, merged=merged)
    p = parse_layer_name(name)
    kept, away, cos = a.kept.tolist(), a.elected_away.tolist(), a.cos.tolist()
    return [(name, rank, p.block, p.kind, lab, kept[i], away[i], cos[i], float(a.task_norm[i]),
             a.merged_norm, float(a.mass[i]), float(a.kept_mass[i]), float(a.elected_mass[i]),
             float(a.dot[i])) for i, lab in enumerate(recipe.labels)]


def anatomy_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Whole-model totals per ``model`` from a :func:`recipe_anatomy` table: ``kept`` and
    ``elected_away`` as mass fractions over all tensors, ``cos`` the whole-model cosine
    ``Σ dot / (‖δ_i‖ ‖Δ‖)`` and ``merged_norm`` ``‖Δ‖`` over all tensors."""
    merged_norm = math.sqrt(float((table.drop_duplicates("layer")["merged_norm"] ** 2).sum()))
    out = []
    for model, g in table.groupby("model", sort=False):
        mass = g["mass"].sum()
        tn = math.sqrt(float((g["task_norm"] ** 2).sum()))
        out.append({
            "model": model,
            "kept": g["kept_mass"].sum(skipna=False) / mass if mass > 0 else math.nan,
            "elected_away": g["elected_mass"].sum(skipna=False) / mass if mass > 0
            else math.nan,
            "cos": g["dot"].sum() / (tn * merged_norm) if tn * merged_norm > 0 else math.nan,
            "merged_norm": merged_norm,
        })
    return pd.DataFrame(out, columns=["model", "kept", "elected_away", "cos", "merged_norm"])


def anatomy_by_block(table: pd.DataFrame) -> pd.DataFrame:
    """The :func:`recipe_anatomy` table aggregated per transformer block (for LLMs with
    hundreds of tensors): one row per ``block`` (``-1``: tensors before the first block,
    ``L``: after the last) and ``model`` with mass-weighted ``kept`` / ``elected_away``
    (Σ kept_mass / Σ mass), ``cos`` = ``Σ dot / (‖δ_i‖ ‖Δ‖)`` over the block's tensors,
    ``merged_norm`` = ``‖Δ‖`` over them, and ``order`` (the block's first tensor)."""
    t = table.copy()
    blocks = t["block"].dropna()
    last = int(blocks.max()) + 1 if len(blocks) else 0
    start = _first_block_order(table)
    t["block"] = [int(b) if pd.notna(b) else (-1 if o < start else last)
                  for o, b in zip(t["order"], t["block"])]
    mn2 = t.drop_duplicates("layer").groupby("block")["merged_norm"].apply(
        lambda s: math.sqrt(float((s ** 2).sum())))
    rows = []
    for (b, model), g in t.groupby(["block", "model"], sort=True):
        mass = g["mass"].sum()
        tn = math.sqrt(float((g["task_norm"] ** 2).sum()))
        mn = float(mn2[b])
        rows.append({"block": b, "order": int(g["order"].min()), "model": model,
                     "kept": g["kept_mass"].sum(skipna=False) / mass if mass > 0 else math.nan,
                     "elected_away": g["elected_mass"].sum(skipna=False) / mass if mass > 0
                     else math.nan,
                     "cos": g["dot"].sum() / (tn * mn) if tn * mn > 0 else math.nan,
                     "merged_norm": mn})
    return pd.DataFrame(rows, columns=["block", "order", "model", "kept", "elected_away",
                                       "cos", "merged_norm"])


def _first_block_order(table: pd.DataFrame) -> float:
    o = table.loc[table["block"].notna(), "order"]
    return float(o.min()) if len(o) else math.inf

"""Merges that select which entries of the task vectors to keep, with mergekit 0.1.5
semantics: ``sce``, ``ram``, ``ramplus_tl``, ``arcee_fusion``, ``nearswap``.

Every one works per tensor, in the inputs' dtype (the recipe's compute dtype) as mergekit
does. Two mergekit details carry over: ``ramplus_tl``'s per-model factors and
``arcee_fusion``'s mask are float32, so for bf16/fp16 inputs their result is float32 (the
output dtype then decides the rounding); ``arcee_fusion`` estimates its quantiles from a
random sample of 1 M entries for tensors larger than that (drawn from ``generator``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsviz.compute.merge._util import get_deltas, get_models
from wsviz.compute.merge.spec import REQUIRED, MethodSpec, ParamSpec, register


# --- SCE ------------------------------------------------------------------------------------
def sce_select(deltas: Tensor, select_topk: float) -> Tensor:
    """SCE *select*: 0/1 mask ``[*shape]`` (deltas' dtype) of the ``k = int(nnz · select_topk)``
    entries whose variance across the models (``deltas`` ``[n, *shape]``, population
    variance) is largest, ``nnz`` the number of entries with non-zero variance."""
    if select_topk <= 0:
        return torch.zeros_like(deltas[0])
    if select_topk >= 1:
        return torch.ones_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * select_topk)
    mask = torch.zeros_like(var)
    if k > 0:
        idx = torch.topk(var.abs().reshape(-1), k=k, largest=True).indices
        mask.view(-1)[idx] = 1
    return mask


def sce_merge(base: Tensor, deltas: Tensor, select_topk: float = 1.0) -> Tensor:
    """SCE (Wan et al., FuseChat): *select* the top-``select_topk`` variance entries,
    *calculate* per-model weights ``mean(δ_i²) / Σ_j mean(δ_j²)`` (uniform when that sum is
    < 1e-6), *erase* entries disagreeing with the elected sign ``sign(Σ_i δ_i)`` (ties → +),
    then ``base + Σ_i w_i m_i δ_i / max(Σ_i w_i m_i, 1e-6)``. ``deltas`` ``[n, *shape]``."""
    n = deltas.shape[0]
    if n == 0:
        return base
    tv = deltas
    if select_topk < 1:
        tv = tv * sce_select(tv, select_topk).unsqueeze(0)
    elected = torch.where(tv.sum(dim=0) >= 0, 1, -1).to(tv.dtype)
    agree = tv.sign() == elected
    w = tv.square().reshape(n, -1).mean(dim=1)
    total = float(w.sum())
    w = torch.ones_like(w) / n if abs(total) < 1e-6 else w / total
    ew = w.view(n, *([1] * (tv.dim() - 1))) * agree
    return base + (tv * ew).sum(dim=0) / ew.sum(dim=0).clamp(min=1e-6)


def merge_sce(base, models, params, *, generator=None, cache=None) -> Tensor:
    """SCE merge of ``models`` ``[n, *shape]`` onto ``base`` (see :func:`sce_merge`)."""
    return sce_merge(base, get_deltas(base, models, cache), float(params.get("select_topk", 1.0)))


# --- RAM / RAM+ (tensor-local) ----------------------------------------------------------------
def _ram_parts(deltas: Tensor, epsilon: float):
    n = deltas.shape[0]
    tv = deltas.reshape(n, -1)
    active = tv.abs() > epsilon  # [n, N]: this model changed this entry
    count = active.sum(dim=0, keepdim=True)  # [1, N] int64
    return tv, active, count, count > 1, count == 1


def ram_merge(base: Tensor, deltas: Tensor, epsilon: float = 1e-5) -> Tensor:
    """RAM (Reinforced Agent Merging): entries changed (``|δ| > epsilon``) by one model only
    keep that model's value; entries changed by several are averaged over those models;
    ``base + Σ``. ``deltas`` ``[n, *shape]``."""
    if deltas.shape[0] == 0:
        return base
    tv, active, count, shared, unique = _ram_parts(deltas, epsilon)
    z = tv * active
    merged = (z * unique + z * shared / count.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ramplus_tl_merge(base: Tensor, deltas: Tensor, r: float = 0.1, alpha: float = 0.2,
                     epsilon: float = 1e-5) -> Tensor:
    """RAM+ within one tensor: as :func:`ram_merge`, but model i's unique entries are scaled
    by ``λ_i = 1 + r · clamp(ρ_i, 0, alpha)`` with ``ρ_i`` = (its shared active entries) /
    (its unique active entries) in this tensor (float32 factors, as mergekit)."""
    if deltas.shape[0] == 0:
        return base
    tv, active, count, shared, unique = _ram_parts(deltas, epsilon)
    n_shared = (active & shared).sum(dim=1)
    n_unique = (active & unique).sum(dim=1)
    rho = n_shared / n_unique.clamp(min=epsilon)
    lam = 1 + r * rho.clamp(min=0, max=alpha)
    z = tv * active
    merged = (z * unique * lam.unsqueeze(-1) + z * shared / count.clamp(min=1)).sum(
        dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def merge_ram(base, models, params, *, generator=None, cache=None) -> Tensor:
    """RAM merge of ``models`` ``[n, *shape]`` onto ``base``."""
    return ram_merge(base, get_deltas(base, models, cache), float(params.get("epsilon", 1e-5)))


def merge_ramplus_tl(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Tensor-local RAM+ merge of ``models`` ``[n, *shape]`` onto ``base``."""
    return ramplus_tl_merge(base, get_deltas(base, models, cache), float(params.get("r", 0.1)),
                            float(params.get("alpha", 0.2)), float(params.get("epsilon", 1e-5)))


# --- Arcee Fusion -----------------------------------------------------------------------------
#: tensors with more entries take their quantiles from a sample of this many (with replacement)
FUSION_SAMPLE = 1_000_000


def fusion_importance(model: Tensor, base: Tensor) -> Tensor:
    """``|θ - θ_base| · KL(softmax(θ) ‖ softmax(θ_base))``, the KL taken per row (over the
    last dim, probabilities + 1e-8), shape of ``model``."""
    p = F.softmax(model, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (model - base).abs() * kl


def fusion_threshold(score: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``median + 1.5 · IQR`` of ``score`` (quantiles as sorted entries at index
    ``int(q · (N - 1))``; from ``FUSION_SAMPLE`` random entries when ``N`` is larger)."""
    flat = score.reshape(-1)
    if flat.numel() > FUSION_SAMPLE:
        flat = flat[torch.randint(flat.numel(), (FUSION_SAMPLE,), device=flat.device,
                                  generator=generator)]
    s = torch.sort(flat).values
    idx = (torch.tensor([0.25, 0.5, 0.75]) * (s.numel() - 1)).long().to(s.device)
    q1, med, q3 = s[idx]
    return med + 1.5 * (q3 - q1)


def merge_arcee_fusion(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Arcee Fusion of one model into ``base``: keep the model's change only where its
    importance (:func:`fusion_importance`) reaches the outlier threshold
    (:func:`fusion_threshold`); ``base + δ · mask`` with a float32 mask."""
    x = get_models(base, models, cache)[0]
    score = fusion_importance(x, base)
    mask = (score >= fusion_threshold(score, generator)).float()
    return base + (x - base) * mask


# --- NearSwap ---------------------------------------------------------------------------------
def merge_nearswap(base, models, params, *, generator=None, cache=None) -> Tensor:
    """NearSwap: ``w = clamp(t / max(|θ_base - θ|, 1e-6), 0, 1)``, ``w θ + (1 - w) θ_base``:
    entries where the two models are within ``t`` take the other model's value, the rest
    move towards it in proportion ``t / distance``. ``models`` ``[1, *shape]``."""
    b = get_models(base, models, cache)[0]
    w = (float(params["t"]) / (base - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return w * b + (1 - w) * base


_INT8 = ParamSpec("int8_mask", bool, False, "global",
                  "store masks as int8 (memory only; no numerical effect)")
_EPS = ParamSpec("epsilon", float, 1e-5, "global",
                 "a task-vector entry counts as changed when |δ| exceeds this",
                 range=(0.0, None), ui_range=(0.0, 1e-3))

SCE = register(MethodSpec(
    name="sce",
    params=(_INT8,
            ParamSpec("select_topk", float, 1.0, "global",
                      "fraction of entries kept by variance across the models",
                      range=(0.0, 1.0), open_low=True, ui_range=(0.01, 1.0))),
    needs_base=True, min_models=1, max_models=None, in_mergekit=True, fn=merge_sce,
    doc="SCE: select high-variance entries, weight models by task-vector energy, erase "
        "sign conflicts",
    reference="https://arxiv.org/abs/2408.07990",
))
RAM = register(MethodSpec(
    name="ram",
    params=(_EPS,),
    needs_base=True, min_models=1, max_models=None, in_mergekit=True, fn=merge_ram,
    doc="RAM: keep entries changed by one model, average entries changed by several",
    reference="https://arxiv.org/abs/2601.13572",
))
RAMPLUS_TL = register(MethodSpec(
    name="ramplus_tl",
    params=(
        ParamSpec("r", float, 0.1, "global", "strength of the unique-entry rescaling",
                  range=(0.0, None), ui_range=(0.0, 1.0)),
        ParamSpec("alpha", float, 0.2, "global", "cap of the shared/unique ratio",
                  range=(0.0, None), ui_range=(0.0, 1.0)),
        _EPS),
    needs_base=True, min_models=1, max_models=None, in_mergekit=True, fn=merge_ramplus_tl,
    doc="RAM+ (tensor-local): RAM with each model's unique entries rescaled by its "
        "shared/unique ratio",
    reference="https://arxiv.org/abs/2601.13572",
))
ARCEE_FUSION = register(MethodSpec(
    name="arcee_fusion",
    params=(),
    needs_base=True, min_models=1, max_models=1, in_mergekit=True, fn=merge_arcee_fusion,
    random=True,
    doc="Arcee Fusion: take the model's changes only where |δ| × row KL divergence is an "
        "outlier (above median + 1.5 IQR)",
    reference="https://arcee.ai",
))
NEARSWAP = register(MethodSpec(
    name="nearswap",
    params=(ParamSpec("t", float, REQUIRED, "global",
                      "distance below which the other model's value is taken",
                      range=(0.0, None), ui_range=(0.0, 0.05)),),
    needs_base=True, min_models=1, max_models=1, in_mergekit=True, fn=merge_nearswap,
    doc="NearSwap: take the other model's value where it is within t of the base, move "
        "towards it by t / distance elsewhere",
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
))

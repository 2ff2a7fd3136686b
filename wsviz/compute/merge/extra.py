"""Merge methods mergekit does not have (``in_mergekit=False``; export as JSON recipes or
merged weights): PCB-Merging, TSV-M, Fisher-weighted averaging, greedy soup, ComPEFT and
PEFT-style magnitude prune."""

from __future__ import annotations

import torch
from torch import Tensor

from wsviz.compute.merge import sparsify as sp
from wsviz.compute.merge._util import as_list, get_deltas, get_models, per_model
from wsviz.compute.merge.spec import MethodSpec, ParamSpec, register

_W = ParamSpec("weight", float, 1.0, "model", "scale of this model's task vector",
               ui_range=(-1.0, 2.0))
_LAMBDA = ParamSpec("lambda", float, 1.0, "global", "scale of the merged task vector",
                    ui_range=(0.0, 2.0))


# --- PCB-Merging -------------------------------------------------------------------------
def _minmax(x: Tensor, dim: int) -> Tensor:
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _clamp_quantiles(x: Tensor, low: float, high: float) -> Tensor:
    """Clamp each row of ``x`` ``[n, d]`` to its ``low`` / ``1 - high`` order statistics."""
    d = x.shape[1]
    s = torch.sort(x, dim=1).values
    lo = s[:, min(d - 1, int(d * low))].unsqueeze(1)
    hi = s[:, max(0, int(d * (1 - high)) - 1)].unsqueeze(1)
    return torch.maximum(torch.minimum(x, hi), lo)


def pcb_merge(deltas: Tensor, density: float = 0.2, clamp: float = 1e-4,
              rescale: bool = True) -> Tensor:
    """PCB-Merging (Du et al., 2024) of task vectors ``[n, *shape]`` → ``[*shape]``.

    Per model, ``|δ|`` is clamped to its ``clamp`` / ``1 - clamp`` quantiles (outliers).
    Intra-balancing ``exp(n · minmax(|δ|)²)`` (importance within the task) times
    inter-balancing ``tanh(δ · Σ_j δ_j)`` (agreement with the other tasks) gives the score;
    entries below each model's ``1 - density`` score quantile are dropped (score 0), the
    rest min-max scaled to [0, 1]. Merged: ``Σ_i s_i δ_i / Σ_i s_i`` (``rescale``) or
    ``Σ_i s_i δ_i``.
    """
    n = deltas.shape[0]
    flat = deltas.reshape(n, -1).float()
    a = _clamp_quantiles(flat.abs(), clamp, clamp)
    clamped = torch.sign(flat) * a
    intra = torch.exp(n * _minmax(a, 1) ** 2)
    inter = torch.tanh(flat * flat.sum(0, keepdim=True))
    score = intra * inter
    score = _minmax(_clamp_quantiles(score, 1 - density, 0.0), 1)
    mixed = (clamped * score).sum(0)
    if rescale:
        mixed = mixed / score.sum(0).clamp_min(1e-12)
    return mixed.reshape(deltas.shape[1:]).to(deltas.dtype)


def merge_pcb(base, models, params, *, generator=None, cache=None) -> Tensor:
    """base + lambda · PCB-merged task vectors (see :func:`pcb_merge`)."""
    d = get_deltas(base, models, cache)
    m = pcb_merge(d, float(params["density"]), float(params["clamp"]), bool(params["rescale"]))
    return base + float(params["lambda"]) * m


register(MethodSpec(
    name="pcb", params=(
        ParamSpec("density", float, 0.2, "global",
                  "fraction of entries kept per model by balancing score (1 - drop ratio)",
                  range=(0.0, 1.0), open_low=True, ui_range=(0.01, 1.0)),
        ParamSpec("clamp", float, 1e-4, "global", "quantile of outliers clamped per model",
                  range=(0.0, 0.5), open_high=True),
        ParamSpec("rescale", bool, True, "global",
                  "divide by the sum of balancing scores (weighted mean)"),
        _LAMBDA),
    needs_base=True, min_models=1, max_models=None, in_mergekit=False, fn=merge_pcb,
    doc="PCB-Merging: intra/inter-task parameter competition balancing",
    reference="https://arxiv.org/abs/2410.02396"))


# --- TSV-M ---------------------------------------------------------------------------------
def _orthogonalise(x: Tensor) -> Tensor:
    """Nearest matrix with orthonormal columns (polar factor ``P Q^T`` of ``x = P Σ Q^T``)."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def tsv_merge(deltas: Tensor, rank_fraction: float = 0.0) -> Tensor:
    """TSV-M (Gargiulo et al., CVPR 2025) of task vectors ``[n, rows, cols]`` → ``[rows, cols]``.

    Each task keeps its top ``k = max(1, int(rank_fraction · min(rows, cols)))`` singular
    triplets (``rank_fraction`` 0 → ``1/n``); the concatenated left and right singular
    vectors are orthogonalised (polar decomposition), then ``U_⊥ diag(S) V_⊥^T``.
    Non-matrix tensors are averaged.
    """
    n = deltas.shape[0]
    if deltas.dim() != 3:
        return deltas.mean(0)
    rows, cols = deltas.shape[1:]
    r = min(rows, cols)
    frac = rank_fraction if rank_fraction > 0 else 1.0 / n
    k = max(1, int(frac * r))
    x = deltas.float()
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # [n, rows, r], [n, r], [n, r, cols]
    U = u[:, :, :k].permute(1, 0, 2).reshape(rows, n * k)
    S = s[:, :k].reshape(n * k)
    V = vh[:, :k, :].reshape(n * k, cols)
    Uo = _orthogonalise(U)
    Vo = _orthogonalise(V.T).T
    return ((Uo * S) @ Vo).to(deltas.dtype)


def merge_tsv(base, models, params, *, generator=None, cache=None) -> Tensor:
    """base + lambda · TSV-M merged task vectors (see :func:`tsv_merge`)."""
    d = get_deltas(base, models, cache)
    return base + float(params["lambda"]) * tsv_merge(d, float(params["rank_fraction"]))


register(MethodSpec(
    name="tsv", params=(
        ParamSpec("rank_fraction", float, 0.0, "global",
                  "fraction of singular components kept per task (0 = 1 / n_models)",
                  range=(0.0, 1.0), ui_range=(0.0, 1.0)),
        _LAMBDA),
    needs_base=True, min_models=1, max_models=None, in_mergekit=False, fn=merge_tsv,
    doc="TSV-M: per-task low-rank SVD blocks, orthogonalised across tasks",
    reference="https://arxiv.org/abs/2412.00081"))


# --- Fisher-weighted averaging --------------------------------------------------------------
def diagonal_fisher(module: torch.nn.Module, batches, loss_fn) -> dict[str, Tensor]:
    """Empirical diagonal Fisher ``E[(∂L/∂θ)²]`` of every parameter of ``module`` over
    ``batches`` (an iterable; ``loss_fn(module, batch) -> scalar loss``), averaged over
    batches: ``{name: Tensor[*shape]}`` (float32, same device)."""
    acc: dict[str, Tensor] = {}
    count = 0
    module.eval()
    for batch in batches:
        module.zero_grad(set_to_none=True)
        loss = loss_fn(module, batch)
        loss.backward()
        for name, p in module.named_parameters():
            if p.grad is not None:
                g2 = p.grad.detach().float() ** 2
                acc[name] = acc[name] + g2 if name in acc else g2
        count += 1
    module.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("diagonal_fisher needs at least one batch")
    return {k: v / count for k, v in acc.items()}


def merge_fisher(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Fisher-weighted average ``Σ w_i F_i θ_i / Σ w_i F_i`` with ``F_i + floor``;
    ``cache["fisher"]`` ``[n, *shape]`` holds the diagonal Fishers (uniform if absent)."""
    x = get_models(base, models, cache)
    n = x.shape[0]
    f = cache.get("fisher") if cache is not None else None
    if f is None:
        f = torch.ones_like(x)
    f = f.to(x) + float(params["fisher_floor"])
    w = per_model(params["weight"], n, x)
    num = (w * f * x).sum(0)
    return num / (w * f).sum(0)


register(MethodSpec(
    name="fisher", params=(
        ParamSpec("weight", float, 1.0, "model", "scale of this model's Fisher",
                  range=(0.0, None), ui_range=(0.0, 2.0)),
        ParamSpec("fisher_floor", float, 1e-6, "global",
                  "added to every Fisher value (avoids 0/0)", range=(0.0, None),
                  open_low=True)),
    needs_base=False, min_models=1, max_models=None, in_mergekit=False, fn=merge_fisher,
    doc="Fisher-weighted averaging (diagonal Fisher from a data batch)",
    reference="https://arxiv.org/abs/2111.09832", needs=("fisher",)))


# --- greedy soup -----------------------------------------------------------------------------
def merge_uniform(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Uniform average of ``models`` ``[n, *shape]`` (the soup of the selected models)."""
    return get_models(base, models, cache).mean(0)


register(MethodSpec(
    name="greedy_soup", params=(), needs_base=False, min_models=1, max_models=None,
    in_mergekit=False, fn=merge_uniform,
    doc="greedy soup: add models (best first) while the evaluator's score does not drop; "
        "the models listed are the soup (see wsviz.recipes.greedy_soup)",
    reference="https://arxiv.org/abs/2203.05482", needs=("evaluator",)))


# --- ComPEFT ---------------------------------------------------------------------------------
def compeft_compress(deltas: Tensor, density, alpha, cache: dict | None = None) -> Tensor:
    """ComPEFT (Yadav et al., 2023): keep the top-``density`` magnitudes of each task vector
    ``[n, *shape]`` and replace them by ``alpha · std(δ_i) · sign(δ_i)`` (ternary values).
    ``cache["ranks"]`` (magnitude ranks) is reused/filled when given."""
    n = deltas.shape[0]
    dens = as_list(density, n)
    kept = sp.magnitude(deltas, dens, False, cache=cache)
    std = deltas.reshape(n, -1).std(dim=1, unbiased=False)
    scale = per_model(as_list(alpha, n), n, deltas) * std.view(n, *([1] * (deltas.dim() - 1)))
    return torch.sign(kept) * scale


def merge_compeft(base, models, params, *, generator=None, cache=None) -> Tensor:
    """base + lambda · Σ w_i · ComPEFT(δ_i)."""
    d = get_deltas(base, models, cache)
    c = compeft_compress(d, params["density"], params["alpha"], cache=cache)
    w = per_model(params["weight"], d.shape[0], d)
    return base + float(params["lambda"]) * (w * c).sum(0)


register(MethodSpec(
    name="compeft", params=(
        _W,
        ParamSpec("density", float, 0.1, "model", "fraction of the task vector kept",
                  range=(0.0, 1.0), open_low=True, ui_range=(0.01, 1.0)),
        ParamSpec("alpha", float, 1.0, "model",
                  "ternary magnitude in units of the task vector's std", range=(0.0, None),
                  ui_range=(0.0, 10.0)),
        _LAMBDA),
    needs_base=True, min_models=1, max_models=None, in_mergekit=False, fn=merge_compeft,
    doc="ComPEFT: sparsify + ternary-quantise each task vector, then add",
    reference="https://arxiv.org/abs/2311.13171"))


# --- PEFT magnitude prune ----------------------------------------------------------------------
def merge_magnitude_prune(base, models, params, *, generator=None, cache=None) -> Tensor:
    """PEFT's ``magnitude_prune``: keep the ``int(density · numel)`` largest entries of each
    task vector, then ``base + Σ w_i δ_i``."""
    d = get_deltas(base, models, cache)
    n = d.shape[0]
    numel = d[0].numel()
    dens = as_list(params["density"], n)
    if all(x >= 1 for x in dens):
        kept = d
    else:
        ranks = sp._cached(cache, "ranks", lambda: sp.magnitude_ranks(d))
        ks = [numel if x >= 1 else int(x * numel) for x in dens]
        k = torch.tensor(ks, device=d.device, dtype=ranks.dtype).view(n, 1)
        kept = d * (ranks < k).view(d.shape)
    w = per_model(params["weight"], n, d)
    return base + (w * kept).sum(0)


register(MethodSpec(
    name="magnitude_prune", params=(
        _W,
        ParamSpec("density", float, 0.5, "model", "fraction of the task vector kept",
                  range=(0.0, 1.0), open_low=True, ui_range=(0.01, 1.0))),
    needs_base=True, min_models=1, max_models=None, in_mergekit=False,
    fn=merge_magnitude_prune,
    doc="PEFT magnitude_prune: top-density magnitudes of each task vector, weighted sum",
    reference="https://huggingface.co/docs/peft/developer_guides/model_merging"))

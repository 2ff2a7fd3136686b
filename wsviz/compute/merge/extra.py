"""Merge methods mergekit does not have (``in_mergekit=False``; export as JSON recipes or
merged weights): PCB-Merging, TSV-M, Fisher-weighted averaging, ComPEFT and PEFT-style
magnitude prune. PCB and ComPEFT default to ``scope: model`` — their reference code's one
top-k / one σ over the whole model (whole-model statistics, :mod:`whole_model`); greedy soup is
a search over an evaluator, not a per-tensor method (:func:`wsviz.eval.greedy_soup`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wsviz.compute.merge import sparsify as sp
from wsviz.compute.merge._util import as_list, get_deltas, get_models, per_model
from wsviz.compute.merge.spec import MethodSpec, ParamSpec, register
from wsviz.compute.merge.whole_model import Moments, RadixSelect, WholeModelStats

_W = ParamSpec("weight", float, 1.0, "model", "scale of this model's task vector",
               ui_range=(-1.0, 2.0))
_LAMBDA = ParamSpec("lambda", float, 1.0, "global", "scale of the merged task vector",
                    ui_range=(0.0, 2.0))


# --- PCB-Merging -------------------------------------------------------------------------
_SCOPE = ParamSpec(
    "scope", str, "model", "global",
    "'model': thresholds and scales over the whole model flattened into one vector, as the "
    "reference code computes them; 'tensor': per tensor", choices=("model", "tensor"))


def _pcb_score(d: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Clamped magnitudes ``a`` and balancing scores of task vectors ``d`` ``[n, m]`` given
    each model's clamp bounds ``lo``, ``hi`` ``[n, 1]``: intra ``exp(n · minmax(a)²)`` times
    inter ``tanh(δ · Σ_j δ_j)``."""
    n = d.shape[0]
    a = torch.minimum(torch.maximum(d.abs(), lo), hi)
    intra = torch.exp(n * ((a - lo) / (hi - lo).clamp_min(1e-12)) ** 2)
    inter = torch.tanh(d * d.sum(0, keepdim=True))
    return a, intra * inter


def _pcb_ranks(m: int, density: float, clamp: float) -> tuple[int, int, int]:
    """Reference-code ranks over ``m`` entries: clamp bounds and the score threshold."""
    return int(m * clamp), int(m * (1 - clamp) - 1), min(m - 1, int(m * (1 - density)))


def pcb_tensor_stats(d: Tensor, density: float, clamp: float) -> dict[str, Tensor]:
    """PCB statistics of one tensor's task vectors ``d`` ``[n, m]`` (``scope: tensor``):
    ``lo``, ``hi`` (``|δ|`` order statistics at ``clamp`` / ``1 - clamp``), ``q`` (score at
    ``1 - density``) and ``smax`` (max score), each ``[n, 1]``."""
    r_lo, r_hi, r_q = _pcb_ranks(d.shape[1], density, clamp)
    s = torch.sort(d.abs(), dim=1).values
    lo, hi = s[:, r_lo:r_lo + 1], s[:, r_hi:r_hi + 1]
    _, score = _pcb_score(d, lo, hi)
    ss = torch.sort(score, dim=1).values
    return {"lo": lo, "hi": hi, "q": ss[:, r_q:r_q + 1], "smax": ss[:, -1:]}


def pcb_merge(deltas: Tensor, density: float = 0.2, clamp: float = 1e-4,
              rescale: bool = True, stats: dict | None = None) -> Tensor:
    """PCB-Merging (Du et al., 2024) of task vectors ``[n, *shape]`` → ``[*shape]``.

    Per model, ``|δ|`` is clamped to its order statistics at ``clamp`` / ``1 - clamp``
    (``lo``, ``hi``); intra-balancing ``exp(n · ((a - lo) / (hi - lo))²)`` times
    inter-balancing ``tanh(δ · Σ_j δ_j)`` gives the score; scores are clamped below at their
    ``1 - density`` order statistic ``q`` and min-max scaled to [0, 1] (so entries at or below
    ``q`` weigh 0). Merged: ``Σ_i s_i sign(δ_i) a_i / Σ_i s_i`` (``rescale``) or
    ``Σ_i s_i sign(δ_i) a_i``. ``stats`` (``lo``, ``hi``, ``q``, ``smax``, each ``[n, 1]``)
    come from the whole model (:class:`PcbStats`, the reference code's semantics) or, when
    ``None``, from this tensor alone (:func:`pcb_tensor_stats`).
    """
    n = deltas.shape[0]
    d = deltas.reshape(n, -1).float()
    st = stats if stats is not None else pcb_tensor_stats(d, density, clamp)
    dev = d.device
    lo, hi, q, smax = (st[k].to(dev, torch.float32).view(n, 1) for k in ("lo", "hi", "q", "smax"))
    a, score = _pcb_score(d, lo, hi)
    scale = (torch.minimum(torch.maximum(score, q), smax) - q) / (smax - q).clamp_min(1e-12)
    mixed = (torch.sign(d) * a * scale).sum(0)
    if rescale:
        mixed = mixed / scale.sum(0).clamp_min(1e-12)
    return mixed.reshape(deltas.shape[1:]).to(deltas.dtype)


class PcbStats(WholeModelStats):
    """PCB's ``lo``, ``hi``, ``q``, ``smax`` per model over the whole model (4 passes: exact
    ``|δ|`` order statistics, then exact score order statistic and max)."""

    passes = 4
    uses = ("density", "clamp")

    def __init__(self, n: int, params: dict):
        self.n = n
        self.density, self.clamp = float(params["density"]), float(params["clamp"])
        self._abs, self._score = RadixSelect(n), RadixSelect(n)
        self.lo = self.hi = self.q = None
        self.smax = torch.full((n,), -math.inf)

    def update(self, pass_index: int, inputs: dict) -> None:
        d = inputs["deltas"].reshape(self.n, -1).float()
        if d.shape[1] == 0:
            return
        if pass_index == 0:
            self._abs.add_high(d.abs())
        elif pass_index == 1:
            self._abs.add_low(d.abs())
        else:
            _, score = _pcb_score(d, self.lo.to(d.device), self.hi.to(d.device))
            if pass_index == 2:
                self._score.add_high(score)
                self.smax = torch.maximum(self.smax, score.amax(1).cpu())
            else:
                self._score.add_low(score)

    def end_pass(self, pass_index: int) -> None:
        r_lo, r_hi, r_q = _pcb_ranks(self._abs.count, self.density, self.clamp)
        if pass_index == 0:
            self._abs.plan([[r_lo, r_hi]] * self.n)
        elif pass_index == 1:
            v = torch.stack(self._abs.values())
            self.lo, self.hi = v[:, :1], v[:, 1:]
        elif pass_index == 2:
            self._score.plan([[r_q]] * self.n)
        else:
            self.q = torch.stack(self._score.values())

    def result(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "q": self.q, "smax": self.smax.view(self.n, 1)}


def _pcb_stats(n: int, params: dict) -> PcbStats | None:
    return PcbStats(n, params) if params.get("scope", "model") == "model" else None


def _model_stats(cache, params, method: str):
    """``cache["model_stats"]`` for ``scope: model`` (ValueError when the caller gave none)."""
    if params.get("scope", "model") != "model":
        return None
    st = cache.get("model_stats") if cache is not None else None
    if st is None:
        raise ValueError(f"{method} with scope 'model' needs whole-model statistics: merge "
                         "through wsviz.recipes (merge_to_dir / InMemoryMerger), or set "
                         "scope: tensor")
    return st


def merge_pcb(base, models, params, *, generator=None, cache=None) -> Tensor:
    """base + lambda · PCB-merged task vectors (see :func:`pcb_merge`)."""
    d = get_deltas(base, models, cache)
    m = pcb_merge(d, float(params["density"]), float(params["clamp"]), bool(params["rescale"]),
                  stats=_model_stats(cache, params, "pcb"))
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
        _SCOPE, _LAMBDA),
    needs_base=True, min_models=1, max_models=None, in_mergekit=False, fn=merge_pcb,
    doc="PCB-Merging: intra/inter-task parameter competition balancing",
    reference="https://arxiv.org/abs/2410.02396", model_stats=_pcb_stats))


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
class FisherNorms(WholeModelStats):
    """Whole-model L2 norm ``‖F_i‖`` of each model's diagonal Fisher (one pass)."""

    inputs = ("fisher",)

    def __init__(self, n: int, params: dict | None = None):
        self.n = n
        self.sq = torch.zeros(n, dtype=torch.float64)

    def update(self, pass_index: int, inputs: dict) -> None:
        f = inputs["fisher"].reshape(self.n, -1).to(torch.float64)
        self.sq += f.square().sum(1).cpu()

    def result(self) -> dict:
        return {"fisher_norm": self.sq.sqrt().float()}


def _fisher_stats(n: int, params: dict) -> FisherNorms | None:
    return FisherNorms(n) if params.get("normalize_fishers", True) else None


def merge_fisher(base, models, params, *, generator=None, cache=None) -> Tensor:
    """Fisher-weighted average ``Σ_i c_i F_i θ_i / Σ_i c_i F_i`` (Matena & Raffel, 2022) with
    the reference code's conventions: ``c_i = weight_i`` (divided by the whole-model ``‖F_i‖``
    with ``normalize_fishers``), ``F_i`` floored at ``fisher_floor`` (only the first model's
    with ``favor_target_model``). ``cache["fisher"]`` ``[n, *shape]`` holds the models'
    diagonal Fishers; without it this raises ValueError (never a silent uniform average)."""
    x = get_models(base, models, cache)
    n = x.shape[0]
    f = cache.get("fisher") if cache is not None else None
    if f is None:
        raise ValueError("the fisher method needs each model's diagonal Fisher (compute them "
                         "with `wsviz fisher MODEL --data FILE`)")
    f = f.to(x)
    floor = float(params["fisher_floor"])
    if params["favor_target_model"]:
        f = torch.cat([f[:1].clamp_min(floor), f[1:]])
    else:
        f = f.clamp_min(floor)
    c = per_model(params["weight"], n, x)
    if params["normalize_fishers"]:
        st = cache.get("model_stats")
        if st is None:
            raise ValueError("normalize_fishers needs the whole-model Fisher norms: merge "
                             "through wsviz.recipes, or set normalize_fishers: false")
        c = c / st["fisher_norm"].to(x).view(n, *([1] * (x.dim() - 1)))
    cf = c * f
    return (cf * x).sum(0) / cf.sum(0)


register(MethodSpec(
    name="fisher", params=(
        ParamSpec("weight", float, 1.0, "model", "scale of this model's Fisher",
                  range=(0.0, None), ui_range=(0.0, 2.0)),
        ParamSpec("fisher_floor", float, 1e-6, "global",
                  "Fisher values are raised to at least this (avoids 0/0)", range=(0.0, None),
                  open_low=True),
        ParamSpec("favor_target_model", bool, True, "global",
                  "floor only the first model's Fisher, so entries no model cares about "
                  "keep the first model's value (reference default)"),
        ParamSpec("normalize_fishers", bool, True, "global",
                  "divide each model's weight by the L2 norm of its whole-model Fisher "
                  "(reference default)")),
    needs_base=False, min_models=1, max_models=None, in_mergekit=False, fn=merge_fisher,
    doc="Fisher-weighted averaging with each model's diagonal Fisher (wsviz fisher)",
    reference="https://arxiv.org/abs/2111.09832", needs=("fisher",),
    model_stats=_fisher_stats))


# --- ComPEFT ---------------------------------------------------------------------------------
def compeft_tensor_stats(d: Tensor, density) -> dict[str, Tensor]:
    """ComPEFT statistics of one tensor's task vectors ``d`` ``[n, m]`` (``scope: tensor``):
    ``threshold`` — the ``(m - int(m · density))``-th smallest ``|δ|`` (``-inf`` when all are
    kept) — and ``std`` (unbiased), each ``[n, 1]``."""
    n, m = d.shape
    thr = []
    for i, dens in enumerate(as_list(density, n)):
        k = m - int(m * float(dens))
        thr.append(d[i].abs().kthvalue(k).values if k > 0 else
                   torch.tensor(-math.inf, device=d.device))
    std = d.std(dim=1, keepdim=True) if m > 1 else torch.zeros(n, 1, device=d.device)
    return {"threshold": torch.stack(thr).view(n, 1), "std": std}


def compeft_compress(deltas: Tensor, density, alpha, stats: dict | None = None) -> Tensor:
    """ComPEFT (Yadav et al., 2023) of task vectors ``[n, *shape]``: entries with
    ``|δ_i| >= threshold_i`` become ``alpha_i · std(δ_i) · sign(δ_i)``, the rest 0 (ternary).
    ``threshold`` is the reference's ``kthvalue`` cut, which keeps the
    ``int(m · density) + 1`` largest magnitudes (and ties at the threshold) and ``std`` is the unbiased standard deviation of the
    uncompressed task vector — over the whole model (``stats`` from :class:`CompeftStats`,
    the reference code) or over this tensor (``stats=None``)."""
    n = deltas.shape[0]
    d = deltas.reshape(n, -1).float()
    st = stats if stats is not None else compeft_tensor_stats(d, density)
    thr = st["threshold"].to(d.device, torch.float32).view(n, 1)
    std = st["std"].to(d.device, torch.float32).view(n, 1)
    a = torch.tensor([float(x) for x in as_list(alpha, n)], device=d.device).view(n, 1)
    out = (a * std) * torch.sign(d * (d.abs() >= thr))
    return out.reshape(deltas.shape).to(deltas.dtype)


class CompeftStats(WholeModelStats):
    """ComPEFT's per-model ``threshold`` (exact) and ``std`` over the whole model (2 passes)."""

    passes = 2
    uses = ("density",)

    def __init__(self, n: int, params: dict):
        self.n = n
        self.density = [float(x) for x in as_list(params["density"], n)]
        self._abs = RadixSelect(n)
        self._mom = Moments(n)
        self._keep_all: list[bool] = []

    def update(self, pass_index: int, inputs: dict) -> None:
        d = inputs["deltas"].reshape(self.n, -1).float()
        if d.shape[1] == 0:
            return
        if pass_index == 0:
            self._abs.add_high(d.abs())
            self._mom.add(d)
        else:
            self._abs.add_low(d.abs())

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            m = self._abs.count
            ks = [m - int(m * x) for x in self.density]
            self._keep_all = [k <= 0 for k in ks]
            self._abs.plan([[k - 1] if k > 0 else [] for k in ks])

    def result(self) -> dict:
        vals = self._abs.values()
        thr = torch.stack([torch.tensor(-math.inf) if keep else v[0]
                           for keep, v in zip(self._keep_all, vals)])
        return {"threshold": thr.view(self.n, 1), "std": self._mom.std().float().view(self.n, 1)}


def _compeft_stats(n: int, params: dict) -> CompeftStats | None:
    return CompeftStats(n, params) if params.get("scope", "model") == "model" else None


def merge_compeft(base, models, params, *, generator=None, cache=None) -> Tensor:
    """base + lambda · Σ w_i · ComPEFT(δ_i) (see :func:`compeft_compress`)."""
    d = get_deltas(base, models, cache)
    c = compeft_compress(d, params["density"], params["alpha"],
                         stats=_model_stats(cache, params, "compeft"))
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
        _SCOPE, _LAMBDA),
    needs_base=True, min_models=1, max_models=None, in_mergekit=False, fn=merge_compeft,
    doc="ComPEFT: sparsify + ternary-quantise each task vector, then add",
    reference="https://arxiv.org/abs/2311.13171", model_stats=_compeft_stats))


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

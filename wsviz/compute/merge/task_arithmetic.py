"""Generalised task arithmetic (mergekit's ``GeneralizedTaskArithmeticMerge``), vectorised.

For task vectors ``δ_i = θ_i - θ_base`` (``[n, *shape]``):

1. sparsify each ``δ_i`` (magnitude / breadcrumbs / DARE / DELLA, see :mod:`.sparsify`),
2. multiply by ``weight_i`` (before the sign election),
3. with a consensus (``sum``: TIES sign election by mass), keep entries whose sign equals
   ``sign(Σ_i w_i δ_i)`` (an all-zero sum elects +), mix ``Σ_i w_i δ_i m_i`` and use
   divisor ``Σ_i w_i m_i`` (0 → 1); without consensus mix ``Σ_i w_i δ_i`` with divisor
   ``Σ_i w_i`` (``|·| < 1e-8`` → 1),
4. ``normalize`` divides by the divisor, ``lambda`` scales, result ``θ_base + mixed``.

``density`` is accepted but unused by ``task_arithmetic`` (as in mergekit). ``int8_mask``
only changes mergekit's mask storage dtype and has no numerical effect.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsviz.compute import trim
from wsviz.compute.merge import sparsify as sp
from wsviz.compute.merge._util import as_list, get_deltas, per_model
from wsviz.compute.merge.spec import REQUIRED, MethodSpec, ParamSpec, register


def sign_consensus(weighted: Tensor) -> Tensor:
    """TIES sign election by mass: bool mask ``[n, *shape]``, True where ``sign(x_i)``
    equals the sign of ``Σ_i x_i`` (ties → +; zero entries are never kept)."""
    pos = weighted.sum(0) >= 0
    return torch.where(pos, weighted > 0, weighted < 0)


def count_consensus(weighted: Tensor) -> Tensor:
    """Sign election by count: the majority of signs ``Σ_i sign(x_i) >= 0`` → +."""
    pos = torch.sign(weighted).sum(0) >= 0
    return torch.where(pos, weighted > 0, weighted < 0)


#: columns per chunk of the fused path (temporaries stay in cache)
CHUNK = 1 << 15


def _keep_intervals(sparsification, density, gamma, numel):
    """Per model ``[lo, hi)`` interval of sorted magnitude positions that is kept:
    descending positions for ``magnitude``, ascending ones for ``magnitude_outliers``."""
    out = []
    for i, d in enumerate(density):
        if sparsification is None or d >= 1:
            out.append((0, numel))
        elif sparsification == "magnitude":
            out.append((0, trim.keep_count(d, numel)))
        else:  # magnitude_outliers
            out.append(sp.outlier_bounds(d, gamma[i], numel))
    return out


def gta_fused(base: Tensor, deltas: Tensor, ranks: Tensor | None, weights, intervals,
              consensus: str | None, normalize: bool, lam: float, chunk: int = CHUNK,
              keep: Tensor | None = None) -> Tensor:
    """Cache-blocked generalised task arithmetic without rescale: the same arithmetic as
    :func:`gta_merge` done over column chunks of the flattened ``[n, numel]`` task vectors
    with preallocated buffers, so each cached input is streamed from memory once.

    ``ranks`` ``[n, numel]`` sorted-magnitude positions (descending for TIES, ascending
    for breadcrumbs; needed when an interval is not the whole tensor); ``intervals``
    per-model ``[lo, hi)`` kept position intervals; or
    ``keep`` ``[n, numel]`` bool, the kept entries directly (one-shot merges).
    """
    n = deltas.shape[0]
    shape = base.shape
    N = base.numel()
    D = deltas.reshape(n, N)
    B = base.reshape(N)
    dev = deltas.device
    w = torch.tensor([float(x) for x in weights], dtype=D.dtype, device=dev).view(n, 1)
    masked = any(lo > 0 or hi < N for lo, hi in intervals)
    if keep is not None:
        K = keep.reshape(n, N).to(D.dtype)
    elif masked:
        lo_t = torch.tensor([lo for lo, _ in intervals], dtype=ranks.dtype, device=dev).view(n, 1)
        hi_t = torch.tensor([hi for _, hi in intervals], dtype=ranks.dtype, device=dev).view(n, 1)
        need_lo = any(lo > 0 for lo, _ in intervals)
        R = ranks.reshape(n, N)
    out = torch.empty(N, dtype=base.dtype, device=dev)
    C = min(chunk, max(N, 1))
    # float 0/1 masks throughout: comparisons written into float buffers and multiplied
    # are several times faster on CPU than bool masks with where/masked_fill
    wd = torch.empty((n, C), dtype=D.dtype, device=dev)
    f1 = torch.empty((n, C), dtype=D.dtype, device=dev)
    f2 = torch.empty((n, C), dtype=D.dtype, device=dev)
    mixed = torch.empty(C, dtype=D.dtype, device=dev)
    div = torch.empty(C, dtype=D.dtype, device=dev)
    row = torch.empty(C, dtype=D.dtype, device=dev)
    if consensus is None:
        wsum = w.sum(0)
        wsum = torch.where(wsum.abs() < 1e-8, torch.ones_like(wsum), wsum)
    for a in range(0, N, C):
        b = min(N, a + C)
        c = b - a
        x = wd[:, :c]
        torch.mul(D[:, a:b], w, out=x)
        if keep is not None and masked:
            x.mul_(K[:, a:b])
        elif masked:
            _trim_chunk(x, R[:, a:b], lo_t if need_lo else None, hi_t, f1[:, :c], f2[:, :c])
        m = mixed[:c]
        if consensus is not None:
            _elect_chunk(x, w, consensus, normalize, m, f1[:, :c], row[:c], div[:c])
        else:
            torch.sum(x, 0, out=m)
            if normalize:
                m.div_(wsum)
        if lam != 1:
            m.mul_(lam)
        torch.add(B[a:b], m, out=out[a:b])
    return out.view(shape)


def _trim_chunk(x: Tensor, ranks: Tensor, lo: Tensor | None, hi: Tensor, k: Tensor,
                f: Tensor) -> None:
    """Zero in place the entries of ``x`` ``[n, c]`` whose ``ranks`` fall outside the
    per-model ``[lo, hi)`` (``[n, 1]`` each; ``lo`` None: 0); ``k``, ``f`` ``[n, c]`` float
    scratch (0/1 masks written into float buffers: faster on CPU than bool masks)."""
    torch.lt(ranks, hi, out=k)
    if lo is not None:
        torch.ge(ranks, lo, out=f)
        k.mul_(f)
    x.mul_(k)


def _elect_chunk(x: Tensor, w: Tensor, consensus: str, normalize: bool, m: Tensor, g: Tensor,
                 sg: Tensor, d: Tensor) -> None:
    """Sign election of one chunk: ``x`` ``[n, c]`` weighted (trimmed) deltas, ``w``
    ``[n, 1]``; the elected sign is that of Σx (``"sum"``) or of Σsign(x) (``"count"``),
    zeros counting as +. Writes into ``m`` ``[c]`` the sum of the agreeing entries, divided
    by Σ w·agree (0 -> 1) with ``normalize``; ``x`` keeps only the agreeing entries. ``g``
    ``[n, c]``, ``sg``, ``d`` ``[c]`` scratch."""
    if consensus == "sum":
        torch.sum(x, 0, out=m)
    else:
        torch.sign(x, out=g)
        torch.sum(g, 0, out=m)
    torch.ge(m, 0, out=sg)  # 1 where the elected sign is +, else 0
    sg.mul_(2).sub_(1)  # -> +1 / -1
    torch.mul(x, sg, out=g)
    torch.gt(g, 0, out=g)  # agree with the elected sign (zeros never agree)
    x.mul_(g)
    torch.sum(x, 0, out=m)
    if normalize:
        g.mul_(w)
        torch.sum(g, 0, out=d)
        torch.eq(d, 0, out=sg)
        d.add_(sg)  # 0 -> 1
        m.div_(d)


#: use the one-pass numba kernel on CPU where it applies (tests switch it off to compare)
USE_KERNEL = True


def _kernel():
    if not USE_KERNEL:
        return None
    try:
        from wsviz.compute.merge import _gta_kernel
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return _gta_kernel


def gta_merge(base: Tensor, deltas: Tensor, params: dict, *, sparsification: str | None,
              consensus: str | None, generator: torch.Generator | None = None,
              cache: dict | None = None) -> Tensor:
    """One tensor of a generalised task-arithmetic merge; ``base`` ``[*shape]``, ``deltas``
    ``[n, *shape]``, returns ``[*shape]`` in ``base.dtype``. See the module docstring.
    Deterministic sparsifications without rescale take the cache-blocked
    :func:`gta_fused` path (same arithmetic)."""
    n = deltas.shape[0]
    if n == 0:
        return base
    density = as_list(params.get("density", 1.0), n)
    rescale = bool(params.get("rescale", False))
    if (sparsification in (None, "magnitude", "magnitude_outliers")
            and (not rescale or sparsification is None or all(d >= 1 for d in density))
            and base.dtype == deltas.dtype and base.is_contiguous() and deltas.is_contiguous()):
        numel = base.numel()
        gamma = as_list(params.get("gamma", 0.01), n)
        iv = _keep_intervals(sparsification, density, gamma, numel)
        ranks = keep = None
        if any(lo > 0 or hi < numel for lo, hi in iv):
            if cache is None:  # one-shot merge: O(numel) selection instead of a sort
                if sparsification == "magnitude":
                    keep = trim.keep_top(deltas, [hi for _, hi in iv])
                else:
                    keep = trim.keep_slice(deltas, [lo for lo, _ in iv], [hi for _, hi in iv])
            elif sparsification == "magnitude":
                ranks = sp._cached(cache, "ranks", lambda: sp.magnitude_ranks(deltas))
            else:
                ranks = sp._cached(cache, "asc_ranks", lambda: sp.ascending_ranks(deltas))
        args = (as_list(params["weight"], n), iv, consensus,
                bool(params.get("normalize", False)), float(params.get("lambda", 1.0)))
        kern = _kernel()
        if kern is not None and kern.usable(base, deltas, consensus):
            return kern.run(base, deltas, *args, ranks=ranks, keep=keep)
        return gta_fused(base, deltas, ranks, *args, keep=keep)
    d = sparsify(deltas, params, sparsification, generator=generator, cache=cache)
    mixed, _ = mix(d, per_model(params["weight"], n, deltas), consensus,
                   bool(params.get("normalize", False)), params.get("lambda", 1.0))
    return (base + mixed).to(base.dtype)


def sparsify(deltas: Tensor, params: dict, sparsification: str | None,
             generator: torch.Generator | None = None, cache: dict | None = None) -> Tensor:
    """Step 1 of :func:`gta_merge`: the sparsified (and optionally rescaled) task vectors
    ``[n, *shape]`` for one tensor's resolved ``params`` (``density``, ``gamma``,
    ``epsilon``, ``rescale``), with the trim rule of :mod:`wsviz.compute.trim`."""
    n = deltas.shape[0]
    density = as_list(params.get("density", 1.0), n)
    rescale = bool(params.get("rescale", False))
    if sparsification == "magnitude":
        return sp.magnitude(deltas, density, rescale, cache=cache)
    if sparsification == "magnitude_outliers":
        return sp.magnitude_outliers(deltas, density, as_list(params.get("gamma", 0.01), n),
                                     rescale, cache=cache)
    if sparsification == "random":
        return sp.bernoulli(deltas, density, rescale, generator=generator)
    if sparsification == "della_magprune":
        return sp.della(deltas, density, as_list(params.get("epsilon", 0.15), n), rescale,
                        generator=generator, cache=cache)
    if sparsification is None:
        return deltas
    raise ValueError(f"unknown sparsification {sparsification!r}")


def mix(d: Tensor, w: Tensor, consensus: str | None, normalize: bool, lam: float
        ) -> tuple[Tensor, Tensor | None]:
    """Steps 2-4 of :func:`gta_merge` on sparsified task vectors ``d`` ``[n, *shape]`` and
    weights ``w`` ``[n, 1, ...]``: ``(mixed [*shape], elected [n, *shape] bool or None)``.
    ``mixed = λ · Σ_i w_i d_i e_i / divisor`` (``divisor`` only with ``normalize``), ``e_i``
    the sign election's keep mask (all ones without ``consensus``)."""
    wd = d * w
    mask = None
    if consensus is not None:
        mask = sign_consensus(wd) if consensus == "sum" else count_consensus(wd)
        mixed = (wd * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed = wd.sum(0)
        divisor = w.sum(0)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return mixed, mask


def _common_params(normalize: bool, rescale: bool) -> list[ParamSpec]:
    return [
        ParamSpec("weight", float, REQUIRED, "model",
                  "scale of this model's task vector (negative = task negation)",
                  ui_range=(-1.0, 2.0)),
        ParamSpec("density", float, 1.0, "model",
                  "fraction of the task vector kept by sparsification", range=(0.0, 1.0),
                  open_low=True, ui_range=(0.01, 1.0)),
        ParamSpec("normalize", bool, normalize, "global",
                  "divide by the sum of (kept) weights"),
        ParamSpec("rescale", bool, rescale, "global",
                  "rescale kept entries to the task vector's L1 norm"),
        ParamSpec("lambda", float, 1.0, "global", "scale of the merged task vector",
                  ui_range=(0.0, 2.0)),
        ParamSpec("int8_mask", bool, False, "global",
                  "store masks as int8 (memory only; no numerical effect)"),
    ]


_GAMMA = ParamSpec("gamma", float, 0.01, "model",
                   "fraction of largest-magnitude outliers removed (breadcrumbs)",
                   range=(0.0, 1.0), ui_range=(0.0, 0.2))
_EPSILON = ParamSpec("epsilon", float, 0.15, "model",
                     "DELLA keep-probability spread: density ± epsilon by magnitude rank",
                     range=(0.0, 1.0), open_high=True, ui_range=(0.0, 0.5))


def _make(name, sparsification, consensus, normalize, rescale, doc, ref):
    params = _common_params(normalize, rescale)
    if sparsification == "magnitude_outliers":
        params.append(_GAMMA)
    if sparsification == "della_magprune":
        params.append(_EPSILON)

    def fn(base, models, params, *, generator=None, cache=None):
        deltas = get_deltas(base, models, cache)
        return gta_merge(base, deltas, params, sparsification=sparsification,
                         consensus=consensus, generator=generator, cache=cache)

    fn.__name__ = f"merge_{name}"
    fn.sparsification = sparsification  # read by wsviz.compute.merge.anatomy
    fn.consensus = consensus
    fn.__doc__ = f"{doc} (mergekit ``{name}``); ``base`` [*shape], ``models`` [n, *shape]."
    return register(MethodSpec(
        name=name, params=tuple(params), needs_base=True, min_models=1, max_models=None,
        in_mergekit=True, fn=fn, doc=doc, reference=ref,
        random=sparsification in ("random", "della_magprune"),
    ))


TASK_ARITHMETIC = _make("task_arithmetic", None, None, False, False,
                        "base + Σ weight_i · task vector_i", "https://arxiv.org/abs/2212.04089")
TIES = _make("ties", "magnitude", "sum", True, False,
             "trim to top-density magnitudes, elect signs by mass, disjoint mean",
             "https://arxiv.org/abs/2306.01708")
DARE_TIES = _make("dare_ties", "random", "sum", False, True,
                  "random drop (keep density) + L1 rescale, then TIES sign election",
                  "https://arxiv.org/abs/2311.03099")
DARE_LINEAR = _make("dare_linear", "random", None, False, True,
                    "random drop (keep density) + L1 rescale, then weighted sum",
                    "https://arxiv.org/abs/2311.03099")
BREADCRUMBS = _make("breadcrumbs", "magnitude_outliers", None, False, False,
                    "drop largest gamma and smallest magnitudes, weighted sum",
                    "https://arxiv.org/abs/2312.06795")
BREADCRUMBS_TIES = _make("breadcrumbs_ties", "magnitude_outliers", "sum", False, False,
                         "breadcrumbs sparsification + TIES sign election",
                         "https://arxiv.org/abs/2312.06795")
DELLA = _make("della", "della_magprune", "sum", True, True,
              "magnitude-ranked random drop (MagPrune) + TIES sign election",
              "https://arxiv.org/abs/2406.11617")
DELLA_LINEAR = _make("della_linear", "della_magprune", None, False, True,
                     "magnitude-ranked random drop (MagPrune) + weighted sum",
                     "https://arxiv.org/abs/2406.11617")

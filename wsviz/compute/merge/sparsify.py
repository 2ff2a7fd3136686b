"""Sparsification of stacked task vectors with mergekit's semantics, vectorised over models.

All functions take ``deltas`` ``[n, *shape]`` and one density (etc.) per model and return a
new ``[n, *shape]`` tensor; they never modify their input. Reusable pieces (magnitude ranks)
can be passed in / kept in a ``cache`` dict so interactive re-merges skip the sort.

Semantics (mergekit 0.1.5, ``mergekit/sparsify.py``):

* ``magnitude``: keep the ``k = max(1, int(density * numel))`` largest ``|delta|``;
  density >= 1 keeps everything (and skips the rescale); density <= 0 gives zeros.
* ``magnitude_outliers`` (breadcrumbs): drop the ``int(gamma * numel)`` largest, then the
  smallest, keeping ``int(density * numel)`` elements.
* ``random`` (DARE): Bernoulli(density) mask drawn from ``generator``.
* ``della_magprune``: per row (dim 1; 1-D tensors are one row), keep probability
  ``(density - epsilon) + rank_norm * 2 * epsilon`` with ``rank_norm`` the row-wise
  ascending magnitude rank scaled to [0, 1].
* ``rescale`` (l1): multiply the kept values by ``sum|delta| / sum|kept|`` per model
  (skipped when either sum is below 1e-7). Note: this is mergekit's rescale, not DARE's
  ``1 / density``; the two agree only in expectation.

Random masks draw, for each model in order whose density is < 1, one uniform per element
in storage order, which equals mergekit's ``torch.bernoulli`` calls when the same seeded
generator walks the tensors in the same order (CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_EPS = 1e-7


def magnitude_ranks(deltas: Tensor) -> Tensor:
    """Descending-magnitude rank of every element within its model: ``[n, numel]`` int32
    (int64 beyond 2^31 elements); rank 0 is the largest ``|delta|``.

    Uses exactly mergekit's call (``torch.argsort(|x|.reshape(-1), descending=True)`` per
    model, not stable), so the kept set equals mergekit's even where magnitudes tie.
    """
    n = deltas.shape[0]
    flat = deltas.reshape(n, -1).abs()
    dt = torch.int32 if flat.shape[1] < 2**31 else torch.int64
    ranks = torch.empty(flat.shape, dtype=dt, device=deltas.device)
    ar = torch.arange(flat.shape[1], device=deltas.device, dtype=dt)
    for i in range(n):  # 1-D sorts, as mergekit calls them (tie order matches)
        order = torch.argsort(flat[i], descending=True)
        ranks[i].scatter_(0, order, ar)
    return ranks


def row_ranks(deltas: Tensor) -> Tensor:
    """Ascending magnitude rank (1-based, float32) along dim 1 of each model's tensor, as
    DELLA uses it: ``[n, rows, ...]`` (1-D tensors are treated as one row). Per model it
    makes mergekit's call (``torch.argsort(|x|, dim=1)``), so tied magnitudes rank alike."""
    out = []
    for i in range(deltas.shape[0]):
        x = deltas[i].abs()
        if x.dim() < 2:
            x = x.unsqueeze(0)
        order = torch.argsort(x, dim=1)
        ranks = torch.empty_like(order)
        ar = torch.arange(x.shape[1], device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
        ranks.scatter_(1, order, ar.expand_as(order))
        out.append((ranks + 1).to(torch.float32))
    return torch.stack(out)


_SAMPLE = 1 << 15


def _kth_largest(absx: Tensor, k: int) -> Tensor:
    """The ``k``-th largest value of the 1-D ``absx`` (1 <= k <= numel) in O(numel): a
    strided sample brackets it, only the bracketed candidates go to ``kthvalue``."""
    n = absx.numel()
    if n > 8 * _SAMPLE:
        step = n // _SAMPLE
        smp = torch.sort(absx[::step]).values
        m = smp.numel()
        q = 1.0 - k / n
        pad = int(6 * (m ** 0.5)) + 2
        lo = smp[max(0, int(q * m) - pad)]
        hi = smp[min(m - 1, int(q * m) + pad)]
        n_above = int((absx > hi).sum())
        need = k - n_above
        if need >= 1:
            cand = absx[(absx >= lo) & (absx <= hi)]
            if need <= cand.numel():
                return torch.kthvalue(cand, cand.numel() - need + 1).values
    return torch.kthvalue(absx, n - k + 1).values


def topk_keep(absx: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` largest entries of the 1-D ``absx``, equal to mergekit's
    ``argsort(absx, descending=True)[:k]``: O(numel) threshold selection when the k-th value
    is unique, mergekit's exact sort call when magnitudes tie at the boundary."""
    n = absx.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=absx.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=absx.device)
    thr = _kth_largest(absx, k)
    gt = absx > thr
    need = k - int(gt.sum())
    eq = absx == thr
    if need == int(eq.sum()):  # no tie straddles the boundary: the set is unambiguous
        return gt | eq
    keep = torch.zeros(n, dtype=torch.bool, device=absx.device)
    keep[torch.argsort(absx, descending=True)[:k]] = True
    return keep


def _cached(cache: dict | None, key: str, fn):
    if cache is None:
        return fn()
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def l1_rescale(orig: Tensor, kept: Tensor, active: Sequence[bool]) -> Tensor:
    """Scale each model's ``kept`` ``[n, *shape]`` so its L1 norm equals ``orig``'s
    (models with ``active[i]`` False, or either norm < 1e-7, are left unchanged)."""
    n = orig.shape[0]
    before = orig.reshape(n, -1).abs().sum(1)
    after = kept.reshape(n, -1).abs().sum(1)
    act = torch.tensor(list(active), device=orig.device)
    ok = act & (before >= _EPS) & (after >= _EPS)
    scale = torch.where(ok, before / torch.where(ok, after, torch.ones_like(after)),
                        torch.ones_like(after))
    return kept * scale.view(n, *([1] * (orig.dim() - 1)))


def magnitude(deltas: Tensor, density: Sequence[float], rescale: bool = False,
              cache: dict | None = None) -> Tensor:
    """TIES trimming: keep the ``max(1, int(d_i * numel))`` largest ``|delta|`` of model i.

    ``deltas`` ``[n, *shape]``; ``density`` n floats; returns ``[n, *shape]``.
    ``cache["ranks"]`` (from :func:`magnitude_ranks`) is reused/filled when given.
    """
    n = deltas.shape[0]
    numel = deltas[0].numel()
    if all(d >= 1 for d in density):
        return deltas
    ranks = _cached(cache, "ranks", lambda: magnitude_ranks(deltas))
    ks = [numel if d >= 1 else (0 if d <= 0 or numel == 0 else max(1, int(d * numel)))
          for d in density]
    k = torch.tensor(ks, device=deltas.device, dtype=ranks.dtype).view(n, 1)
    mask = (ranks < k).view(deltas.shape)
    kept = deltas * mask
    if not rescale:
        return kept
    return l1_rescale(deltas, kept, [0 < d < 1 for d in density])


def magnitude_outliers(deltas: Tensor, density: Sequence[float], gamma: Sequence[float],
                       rescale: bool = False, cache: dict | None = None) -> Tensor:
    """Breadcrumbs: drop the top ``int(gamma_i * numel)`` magnitudes and the smallest ones,
    keeping ``int(d_i * numel)`` (fewer top ones are dropped when needed to keep that many).
    ``[n, *shape]`` in and out."""
    n = deltas.shape[0]
    numel = deltas[0].numel()
    if all(d >= 1 for d in density):
        return deltas
    ranks = _cached(cache, "ranks", lambda: magnitude_ranks(deltas))
    asc = (numel - 1) - ranks  # ascending rank (0 = smallest)
    lo, hi = [], []
    for d, g in zip(density, gamma):
        if d >= 1:
            lo.append(0)
            hi.append(numel)
            continue
        target = int(d * numel)
        n_top = int(g * numel)
        n_bot = max(0, numel - target - n_top)
        lo.append(n_bot)
        hi.append(n_bot + target)
    lo_t = torch.tensor(lo, device=deltas.device, dtype=asc.dtype).view(n, 1)
    hi_t = torch.tensor(hi, device=deltas.device, dtype=asc.dtype).view(n, 1)
    mask = ((asc >= lo_t) & (asc < hi_t)).view(deltas.shape)
    kept = deltas * mask
    if not rescale:
        return kept
    return l1_rescale(deltas, kept, [d < 1 for d in density])


def bernoulli(deltas: Tensor, density: Sequence[float], rescale: bool = True,
              generator: torch.Generator | None = None) -> Tensor:
    """DARE: keep each element of model i with probability ``d_i`` (drawn from
    ``generator``); models with ``d_i >= 1`` are untouched and draw nothing."""
    out = []
    for i, d in enumerate(density):
        x = deltas[i]
        if d >= 1:
            out.append(x)
            continue
        p = torch.full(x.shape, float(d), dtype=torch.float32, device=x.device)
        mask = torch.bernoulli(p, generator=generator)
        kept = x * mask
        if rescale:
            kept = l1_rescale(x.unsqueeze(0), kept.unsqueeze(0), [True])[0]
        out.append(kept)
    return torch.stack(out)


def della(deltas: Tensor, density: Sequence[float], epsilon: Sequence[float],
          rescale: bool = True, generator: torch.Generator | None = None,
          cache: dict | None = None) -> Tensor:
    """DELLA MagPrune: per row, keep probability ``(d - eps) + rank_norm * 2 * eps`` where
    ``rank_norm`` = (ascending |delta| rank - 1) / (row length - 1). Needs
    ``0 < d - eps`` and ``d + eps < 1`` for models with ``d < 1`` (ValueError otherwise)."""
    ranks = None
    out = []
    for i, (d, e) in enumerate(zip(density, epsilon)):
        x = deltas[i]
        if d >= 1:
            out.append(x)
            continue
        if d <= 0:
            out.append(torch.zeros_like(x))
            continue
        if d + e >= 1 or d - e <= 0:
            raise ValueError("epsilon must be chosen such that density +/- epsilon is in (0, 1)")
        if ranks is None:
            ranks = _cached(cache, "row_ranks", lambda: row_ranks(deltas))
        r = ranks[i]
        lo = r.amin(dim=1, keepdim=True)
        hi = r.amax(dim=1, keepdim=True)
        rank_norm = ((r - lo) / (hi - lo)).clamp(0, 1)
        probs = (d - e) + rank_norm * 2 * e
        mask = torch.bernoulli(probs, generator=generator).reshape(x.shape)
        kept = x * mask
        if rescale:
            kept = l1_rescale(x.unsqueeze(0), kept.unsqueeze(0), [True])[0]
        out.append(kept)
    return torch.stack(out)

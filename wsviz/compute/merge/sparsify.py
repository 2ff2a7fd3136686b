"""Sparsification of stacked task vectors with mergekit's semantics, in the compute dtype.

All functions take ``deltas`` ``[n, *shape]`` (already in the merge's compute dtype) and one
density (etc.) per model and return a new ``[n, *shape]`` tensor in that dtype; they never
modify their input. Masks, rescale factors and random draws are made in the dtype mergekit
uses for them, so bf16 merges equal mergekit's bit for bit. Reusable pieces (magnitude ranks)
can be kept in a ``cache`` dict so interactive re-merges skip the sort.

Semantics (mergekit 0.1.5, ``mergekit/sparsify.py``):

* ``magnitude``: keep the :func:`~wsviz.compute.trim.keep_count` (``max(1, int(d·numel))``)
  largest ``|delta|``, ties in mergekit's descending-argsort order; density >= 1 keeps
  everything (and skips the rescale); density <= 0 gives zeros.
* ``magnitude_outliers`` (breadcrumbs): positions ``[n_bot, n_bot + int(d·numel))`` of the
  ascending magnitude sort, ``n_bot = max(0, numel - int(d·numel) - int(gamma·numel))``,
  ties in the ascending sort's order (not a reversed descending one).
* ``random`` (DARE): Bernoulli(density) mask drawn from ``generator``; the probabilities and
  the mask are bf16 for bf16 tensors (CPU), float32 for float16/32 on CPU, the tensor's dtype
  on CUDA — as mergekit draws them.
* ``della_magprune``: per row (dim 1; 1-D tensors are one row), keep probability
  ``(density - epsilon) + rank_norm * 2 * epsilon`` with ``rank_norm`` the row-wise
  ascending magnitude rank scaled to [0, 1], computed in that same working dtype.
* ``rescale`` (l1): multiply the kept values by ``sum|delta| / sum|kept|`` per model, both
  sums in the working dtype (skipped when either is below 1e-7). Note: this is mergekit's
  rescale, not DARE's ``1 / density``; the two agree only in expectation.

Random masks draw, for each model in order whose density is < 1, one uniform per element
in storage order, which equals mergekit's ``torch.bernoulli`` calls when the same seeded
generator walks the tensors in the same order (CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wsviz.compute import trim

_EPS = 1e-7

#: kept for callers of the former names
keep_count = trim.keep_count


def magnitude_ranks(deltas: Tensor) -> Tensor:
    """Descending-magnitude rank of every element within its model: ``[n, numel]`` int32
    (int64 beyond 2^31 elements); rank 0 is the largest ``|delta|``. Same sort call as
    mergekit, so ``ranks < k`` is mergekit's kept set even where magnitudes tie."""
    return trim.descending_ranks(deltas)


def ascending_ranks(deltas: Tensor) -> Tensor:
    """Ascending-magnitude rank (0 = smallest) per model, from mergekit's breadcrumbs sort
    call: ``[n, numel]`` int32 (int64 beyond 2^31 elements)."""
    return trim.ascending_ranks(deltas)


def topk_keep(absx: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` largest entries of the 1-D ``absx`` (mergekit's
    ``argsort(absx, descending=True)[:k]``, ties in its order)."""
    return trim.keep_top(absx.reshape(1, -1), [k])[0]


def row_ranks(deltas: Tensor) -> Tensor:
    """DELLA's ascending magnitude rank (1-based) along dim 1 of each model's tensor, as
    int64 ``[n, rows, ...]`` (1-D tensors are one row): per model mergekit's
    ``argsort(argsort(|x|, dim=1), dim=1) + 1``, the sort made in the tensor's dtype."""
    out = []
    for i in range(deltas.shape[0]):
        x = deltas[i].abs()
        if x.dim() < 2:
            x = x.unsqueeze(0)
        out.append(torch.argsort(torch.argsort(x, dim=1), dim=1))
    return torch.stack(out)


def _cached(cache: dict | None, key: str, fn):
    if cache is None:
        return fn()
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def work_dtype(x: Tensor) -> torch.dtype:
    """mergekit's dtype for random masks: the tensor's on CUDA and for bf16, else float32
    (``torch.bernoulli`` lacks float16 on CPU)."""
    if x.device.type != "cpu" or x.dtype == torch.bfloat16:
        return x.dtype
    return torch.float32


def rescaled(x: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    """One model: ``x * mask``, with ``rescale`` times ``sum|x| / sum|x * mask|`` (both sums
    in ``x``'s dtype; unchanged when either is below 1e-7), as mergekit computes it."""
    kept = x * mask
    if not rescale:
        return kept
    before = x.abs().sum()
    after = kept.abs().sum()
    if before < _EPS or after < _EPS:
        return kept
    return kept * (before / after)


def _masked(deltas: Tensor, keep: Tensor, active: Sequence[bool], rescale: bool) -> Tensor:
    """Apply per-model bool ``keep`` ``[n, numel]`` (as a 0/1 mask in the deltas' dtype)
    and the optional per-model rescale to models with ``active[i]``."""
    out = []
    for i in range(deltas.shape[0]):
        x = deltas[i]
        if not active[i]:
            out.append(x)
            continue
        m = keep[i].reshape(x.shape).to(x.dtype)
        out.append(rescaled(x, m, rescale))
    return torch.stack(out)


def magnitude(deltas: Tensor, density: Sequence[float], rescale: bool = False,
              cache: dict | None = None) -> Tensor:
    """TIES trimming: keep the :func:`~wsviz.compute.trim.keep_count` largest ``|delta|``
    of model i. ``deltas`` ``[n, *shape]``; ``density`` n floats; returns ``[n, *shape]``.
    ``cache["ranks"]`` (from :func:`magnitude_ranks`) is reused/filled when given."""
    n = deltas.shape[0]
    numel = deltas[0].numel()
    if all(d >= 1 for d in density):
        return deltas
    ks = [trim.keep_count(d, numel) for d in density]
    if cache is not None:
        ranks = _cached(cache, "ranks", lambda: magnitude_ranks(deltas))
        k = torch.tensor(ks, device=deltas.device, dtype=ranks.dtype).view(n, 1)
        keep = ranks < k
    else:
        keep = trim.keep_top(deltas, ks)
    return _masked(deltas, keep, [d < 1 for d in density], rescale)


def outlier_bounds(density: float, gamma: float, numel: int) -> tuple[int, int]:
    """Breadcrumbs' kept interval ``[lo, hi)`` of ascending magnitude positions."""
    if density >= 1:
        return 0, numel
    target = int(density * numel)
    n_bot = max(0, numel - target - int(gamma * numel))
    return n_bot, n_bot + target


def magnitude_outliers(deltas: Tensor, density: Sequence[float], gamma: Sequence[float],
                       rescale: bool = False, cache: dict | None = None) -> Tensor:
    """Breadcrumbs: drop the top ``int(gamma_i * numel)`` magnitudes and the smallest ones,
    keeping ``int(d_i * numel)`` (fewer top ones are dropped when needed to keep that many).
    ``[n, *shape]`` in and out; ``cache["asc_ranks"]`` is reused/filled when given."""
    n = deltas.shape[0]
    numel = deltas[0].numel()
    if all(d >= 1 for d in density):
        return deltas
    b = [outlier_bounds(d, g, numel) for d, g in zip(density, gamma)]
    if cache is not None:
        asc = _cached(cache, "asc_ranks", lambda: ascending_ranks(deltas))
        lo = torch.tensor([x for x, _ in b], device=deltas.device, dtype=asc.dtype).view(n, 1)
        hi = torch.tensor([y for _, y in b], device=deltas.device, dtype=asc.dtype).view(n, 1)
        keep = (asc >= lo) & (asc < hi)
    else:
        keep = trim.keep_slice(deltas, [x for x, _ in b], [y for _, y in b])
    return _masked(deltas, keep, [d < 1 for d in density], rescale)


def bernoulli(deltas: Tensor, density: Sequence[float], rescale: bool = True,
              generator: torch.Generator | None = None) -> Tensor:
    """DARE: keep each element of model i with probability ``d_i`` (drawn from
    ``generator`` in :func:`work_dtype`); models with ``d_i >= 1`` are untouched and draw
    nothing."""
    out = []
    for i, d in enumerate(density):
        x = deltas[i]
        if d >= 1:
            out.append(x)
            continue
        wd = work_dtype(x)
        p = torch.full(x.shape, float(d), dtype=wd, device=x.device)
        mask = torch.bernoulli(p, generator=generator)
        out.append(rescaled(x.to(wd), mask, rescale).to(x.dtype))
    return torch.stack(out)


def della(deltas: Tensor, density: Sequence[float], epsilon: Sequence[float],
          rescale: bool = True, generator: torch.Generator | None = None,
          cache: dict | None = None) -> Tensor:
    """DELLA MagPrune: per row, keep probability ``(d - eps) + rank_norm * 2 * eps`` where
    ``rank_norm`` = (ascending |delta| rank - 1) / (row length - 1), all in
    :func:`work_dtype`. Needs ``0 < d - eps`` and ``d + eps < 1`` for models with ``d < 1``
    (ValueError otherwise)."""
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
        wd = work_dtype(x)
        r = ranks[i].to(wd) + 1
        lo = r.min(dim=1, keepdim=True).values
        hi = r.max(dim=1, keepdim=True).values
        rank_norm = ((r - lo) / (hi - lo)).clamp(0, 1)
        probs = (d - e) + rank_norm * 2 * e
        mask = torch.bernoulli(probs, generator=generator).to(wd)
        x2 = x.unsqueeze(0) if x.dim() < 2 else x
        kept = rescaled(x2.to(wd), mask, rescale)
        out.append(kept.to(x.dtype).reshape(x.shape))
    return torch.stack(out)

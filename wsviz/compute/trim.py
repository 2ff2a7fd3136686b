"""The one magnitude-trim rule shared by the analysis, the merges and the pruning masks.

* :func:`keep_count` — how many of ``n`` entries a density keeps. mergekit's rule (its
  ``magnitude`` sparsification): ``density >= 1`` keeps all, ``density <= 0`` none, otherwise
  ``max(1, int(density · n))``. TIES trimming, the analysis' sign-conflict trim and the
  magnitude masks all call it, so a density shows the same count everywhere.
* :func:`keep_top` / :func:`keep_slice` — *which* entries: the ones mergekit's
  ``torch.argsort(|x|, descending=True)[:k]`` (TIES) and ``torch.sort(|x|).indices[lo:hi]``
  (breadcrumbs) select, including the tie order where equal magnitudes straddle the cut
  (frequent in bf16). mergekit sorts ``|x|`` as float32 on CPU and in the tensor's dtype on
  CUDA; so do these. CPU selection is O(n): a threshold when no tie straddles the cut,
  otherwise a replay of the sort's own partitions (:mod:`wsviz.compute._introsort`), with
  the real sort as fallback.
* :func:`descending_ranks` / :func:`ascending_ranks` — full rank tables from the same sort
  calls, for interactive re-trims at many densities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def keep_count(density: float, n: int) -> int:
    """Entries kept of ``n`` at ``density``: ``n`` if density >= 1, 0 if density <= 0 or
    n == 0, else ``max(1, int(density · n))`` (mergekit's rule; e.g. 7 of 38 at 0.2)."""
    d = float(density)
    if d >= 1:
        return int(n)
    if d <= 0 or n == 0:
        return 0
    return max(1, int(d * n))


def density_of_sparsity(sparsity: float) -> float:
    """``1 - sparsity`` rounded to 12 decimals, so that sparsity 0.8 means density 0.2
    exactly (``1 - 0.8`` is 0.19999999999999996 in binary floating point)."""
    return round(1.0 - float(sparsity), 12)


def sort_keys(x: Tensor) -> Tensor:
    """``|x|`` flattened per row, as mergekit sorts it: ``[n, *shape] -> [n, numel]``,
    float32 on CPU (bf16/fp16/fp64 magnitudes are converted), the input dtype elsewhere."""
    a = x.reshape(x.shape[0], -1).abs()
    if a.device.type == "cpu" and a.dtype != torch.float32:
        a = a.float()
    return a


_SAMPLE = 1 << 15


def _kth_largest(a: Tensor, k: int) -> Tensor:
    """The ``k``-th largest value of the 1-D ``a`` (1 <= k <= numel) in O(numel): a
    strided sample brackets it, only the bracketed candidates go to ``kthvalue``."""
    n = a.numel()
    if n > 8 * _SAMPLE:
        step = n // _SAMPLE
        smp = torch.sort(a[::step]).values
        m = smp.numel()
        q = 1.0 - k / n
        pad = int(6 * (m ** 0.5)) + 2
        lo = smp[max(0, int(q * m) - pad)]
        hi = smp[min(m - 1, int(q * m) + pad)]
        need = k - int((a > hi).sum())
        if need >= 1:
            cand = a[(a >= lo) & (a <= hi)]
            if need <= cand.numel():
                return torch.kthvalue(cand, cand.numel() - need + 1).values
    return torch.kthvalue(a, n - k + 1).values


def _threshold_keep(a: Tensor, k: int) -> Tensor | None:
    """Top-``k`` mask of the 1-D ``a`` by a threshold, or None when equal values straddle
    the cut (then the sort's tie order decides)."""
    thr = _kth_largest(a, k)
    gt = a > thr
    eq = a == thr
    if k - int(gt.sum()) == int(eq.sum()):
        return gt | eq
    return None


def _by_sort(keys: Tensor, lo: Sequence[int], hi: Sequence[int], descending: bool) -> Tensor:
    out = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    for i in range(keys.shape[0]):
        if hi[i] > lo[i]:
            order = torch.sort(keys[i], descending=descending).indices
            out[i, order[lo[i]:hi[i]]] = True
    return out


def _select(keys: Tensor, lo: Sequence[int], hi: Sequence[int], descending: bool,
            exact_dtype: bool) -> Tensor:
    """Bool ``[n, N]``: row i keeps sorted positions ``[lo[i], hi[i])`` of ``keys[i]``."""
    n, N = keys.shape
    out = torch.zeros((n, N), dtype=torch.bool, device=keys.device)
    todo = []
    for i in range(n):
        a, b = int(lo[i]), int(hi[i])
        if b <= a:
            continue
        if a == 0 and b >= N:
            out[i] = True
            continue
        if keys.device.type != "cpu":
            todo.append(i)
            continue
        if exact_dtype and a == 0 and descending:  # threshold when unambiguous
            m = _threshold_keep(keys[i], b)
            if m is not None:
                out[i] = m
                continue
        todo.append(i)
    if not todo:
        return out
    sub = keys[todo]
    los = [int(lo[i]) for i in todo]
    his = [int(hi[i]) for i in todo]
    got = None
    if keys.device.type == "cpu":
        from wsviz.compute import _introsort

        got = _introsort.select_range(sub, los, his, descending)
    if got is None:
        got = _by_sort(sub, los, his, descending)
    out[todo] = got.to(out.device)
    return out


def keep_top(x: Tensor, ks: Sequence[int], keys: Tensor | None = None) -> Tensor:
    """Bool ``[n, numel]``: for each row ``x[i]`` of ``x`` ``[n, *shape]``, the ``ks[i]``
    entries mergekit's ``argsort(|x[i]|, descending=True)[:k]`` keeps (ties included).
    ``keys`` (from :func:`sort_keys`) may be passed when already computed."""
    keys = sort_keys(x) if keys is None else keys
    return _select(keys, [0] * len(ks), list(ks), True, x.dtype in (torch.float32,))


def keep_slice(x: Tensor, lo: Sequence[int], hi: Sequence[int],
               keys: Tensor | None = None) -> Tensor:
    """Bool ``[n, numel]``: row i keeps the entries at ascending-magnitude positions
    ``[lo[i], hi[i])`` of ``torch.sort(|x[i]|)`` (breadcrumbs), ties in the sort's order."""
    keys = sort_keys(x) if keys is None else keys
    return _select(keys, list(lo), list(hi), False, False)


def _ranks(keys: Tensor, descending: bool) -> Tensor:
    n, N = keys.shape
    dt = torch.int32 if N < 2**31 else torch.int64
    ranks = torch.empty((n, N), dtype=dt, device=keys.device)
    ar = torch.arange(N, device=keys.device, dtype=dt)
    for i in range(n):  # 1-D sorts, as mergekit calls them (tie order matches)
        order = torch.sort(keys[i], descending=descending).indices
        ranks[i].scatter_(0, order, ar)
    return ranks


def descending_ranks(x: Tensor) -> Tensor:
    """``[n, numel]`` int32 (int64 past 2^31) rank of every entry of each row of ``x``
    ``[n, *shape]`` in mergekit's descending magnitude sort (0 = largest): ``ranks < k``
    equals :func:`keep_top` with ``k``."""
    return _ranks(sort_keys(x), True)


def ascending_ranks(x: Tensor) -> Tensor:
    """``[n, numel]`` rank in mergekit's ascending magnitude sort (0 = smallest):
    ``lo <= ranks < hi`` equals :func:`keep_slice` with ``lo, hi``."""
    return _ranks(sort_keys(x), False)

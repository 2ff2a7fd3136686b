"""Exact order statistics of torch's CPU ``sort`` without sorting everything.

mergekit trims task vectors with ``torch.argsort(|x|)`` and a slice. Where magnitudes tie at
the cut (common in bf16) *which* tied entries are kept is decided by the sort's tie order.
torch's CPU sort of a contiguous 1-D float32 tensor is libstdc++'s ``std::sort``
(introsort: median-of-three pivot moved to the front, unguarded Hoare partition, recursion
down to 16 elements, a final insertion sort that keeps equal elements in place; heapsort
past a depth of ``2·floor(log2 n)``). That algorithm is deterministic, so the elements at
sorted positions ``[lo, hi)`` can be found by replaying its partitions only on the ranges
that straddle ``lo`` or ``hi`` (a quickselect along the same pivots): O(n) instead of
O(n log n), same result bit for bit.

:func:`available` self-checks the replay against ``torch.sort`` on this machine (a torch
build that sorts with another algorithm, e.g. x86-simd-sort, fails the check) and the
callers fall back to the real sort then; ranges that would reach the heapsort fallback
also make :func:`select_range` return ``None``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_STATE: dict = {}



@numba.njit(inline="always")
def before(a, b, desc):
    # torch's sort comparator (NaN sorts last ascending, first descending)
    if desc:
        return (a != a and b == b) or a > b
    return (a == a and b != b) or a < b

@numba.njit(cache=True, nogil=True)
def replay(vals, idx, b1, b2, desc):
    """Partition ``vals``/``idx`` in place exactly as introsort would, but only the
    ranges that straddle position ``b1`` or ``b2``; 0 on success, 1 if a range hit the
    heapsort depth limit (the result is then unusable)."""
    n = vals.shape[0]
    if n <= 1:
        return 0
    lg = 0
    m = n
    while m > 1:
        m >>= 1
        lg += 1
    sf = np.empty(128, np.int64)
    sl = np.empty(128, np.int64)
    sd = np.empty(128, np.int64)
    sf[0] = 0
    sl[0] = n
    sd[0] = 2 * lg
    sp = 1
    while sp > 0:
        sp -= 1
        f = sf[sp]
        last = sl[sp]
        d = sd[sp]
        while (f < b1 and b1 < last) or (f < b2 and b2 < last):
            if last - f <= 16:  # final insertion sort (stable for equal keys)
                for i in range(f + 1, last):
                    v = vals[i]
                    x = idx[i]
                    j = i
                    while j > f and before(v, vals[j - 1], desc):
                        vals[j] = vals[j - 1]
                        idx[j] = idx[j - 1]
                        j -= 1
                    vals[j] = v
                    idx[j] = x
                break
            if d == 0:
                return 1
            d -= 1
            a = f + 1
            mid = f + (last - f) // 2
            c = last - 1
            va = vals[a]
            vb = vals[mid]
            vc = vals[c]
            if before(va, vb, desc):
                if before(vb, vc, desc):
                    s = mid
                elif before(va, vc, desc):
                    s = c
                else:
                    s = a
            elif before(va, vc, desc):
                s = a
            elif before(vb, vc, desc):
                s = c
            else:
                s = mid
            t = vals[f]
            vals[f] = vals[s]
            vals[s] = t
            ti = idx[f]
            idx[f] = idx[s]
            idx[s] = ti
            p = vals[f]
            lo = f + 1
            hi = last
            while True:
                while before(vals[lo], p, desc):
                    lo += 1
                hi -= 1
                while before(p, vals[hi], desc):
                    hi -= 1
                if lo >= hi:
                    break
                t = vals[lo]
                vals[lo] = vals[hi]
                vals[hi] = t
                ti = idx[lo]
                idx[lo] = idx[hi]
                idx[hi] = ti
                lo += 1
            if sp >= 128:
                return 1
            sf[sp] = lo
            sl[sp] = last
            sd[sp] = d
            sp += 1
            last = lo
    return 0

@numba.njit(cache=True, parallel=True)
def select_rows(keys, idx, lo, hi, desc, out, status):
    """For each row i of ``keys`` ``[n, N]`` (overwritten; ``idx`` ``[n, N]`` int
    scratch): ``out[i, j] = 1`` for the elements at sorted positions ``[lo[i], hi[i])``."""
    n, N = keys.shape
    for r in numba.prange(n):
        idx_r = idx[r]
        for j in range(N):
            idx_r[j] = j
        st = replay(keys[r], idx_r, lo[r], hi[r], desc)
        status[r] = st
        if st == 0:
            o = out[r]
            for p in range(lo[r], hi[r]):
                o[idx_r[p]] = 1


def _kernel():
    return select_rows


def select_range(keys: torch.Tensor, lo, hi, descending: bool) -> torch.Tensor | None:
    """Bool mask ``[n, N]``: for each row of the CPU float32 ``keys`` ``[n, N]``, True at the
    elements ``torch.sort(keys[i], descending=descending).indices[lo[i]:hi[i]]`` selects.
    ``None`` when the replay cannot be used here (see the module docstring)."""
    if not available():
        return None
    return _select(keys, lo, hi, descending)


def _select(keys, lo, hi, descending):
    k = _kernel()
    vals = keys.detach().to("cpu", torch.float32).contiguous().clone().numpy()
    n = vals.shape[0]
    out = np.zeros(vals.shape, dtype=np.uint8)
    status = np.zeros(n, dtype=np.int64)
    idx = np.empty(vals.shape, dtype=np.int32 if vals.shape[1] < 2**31 else np.int64)
    k(vals, idx, np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64), bool(descending),
      out, status)
    if status.any():
        return None
    return torch.from_numpy(out).view(torch.bool)


def available() -> bool:
    """True when numba is importable and the replay equals ``torch.sort`` on this machine
    (checked once per process on tie-heavy arrays, both directions)."""
    if "ok" in _STATE:
        return _STATE["ok"]
    ok = _kernel() is not None
    if ok:
        g = torch.Generator().manual_seed(1234)
        for n in (40, 1000, 30011):
            x = torch.randint(0, max(3, n // 50), (3, n), generator=g).float()
            x[1] = (torch.randn(n, generator=g) * 0.01).bfloat16().float().abs()
            for desc in (True, False):
                bounds = ([n // 5, 1, n // 2], [n // 2, n - 1, n // 2 + 7])
                got = _select(x, *bounds, desc)
                if got is None:
                    ok = False
                    break
                for i in range(3):
                    order = torch.sort(x[i], descending=desc).indices
                    ref = torch.zeros(n, dtype=torch.bool)
                    ref[order[bounds[0][i]:bounds[1][i]]] = True
                    ok = ok and torch.equal(got[i], ref)
            if not ok:
                break
    _STATE["ok"] = ok
    return ok

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

import os

import numba
import numpy as np
import torch

from wsviz.cache_dir import cache_root
from wsviz.compute._bits import as_f32 as _as_f32
from wsviz.compute._bits import as_u32 as _as_u32
from wsviz.compute._bits import run_parallel

_STATE: dict = {}


@numba.njit(inline="always")
def before(a, b, desc, packed):
    """torch's sort comparator: NaN sorts last ascending, first descending. ``packed``
    words hold a NaN-free non-negative float32 key in their high 32 bits (its bits order
    like the values) and the element index in the low 32 bits, which never takes part."""
    if packed:
        if desc:
            return (a >> np.uint64(32)) > (b >> np.uint64(32))
        return (a >> np.uint64(32)) < (b >> np.uint64(32))
    if desc:
        return (a != a and b == b) or a > b
    return (a == a and b != b) or a < b


@numba.njit(inline="always")
def _swap(vals, idx, i, j, packed):
    t = vals[i]
    vals[i] = vals[j]
    vals[j] = t
    if not packed:
        ti = idx[i]
        idx[i] = idx[j]
        idx[j] = ti


_B = 256


@numba.njit(inline="always")
def _partition(vals, idx, f, last, desc, packed, lb, rb):
    """libstdc++'s unguarded Hoare partition of ``[f + 1, last)`` around the pivot at
    ``f``, returning the cut; the result of the scan-and-swap loop, computed without its
    unpredictable branches. Hoare swaps the i-th left stopper (not before the pivot,
    scanning up) with the i-th right stopper (pivot not before it, scanning down, the pivot
    included) while the former lies left of the latter; at the first pair that does not,
    the cut is that left stopper, or the last swapped right position if that is smaller.
    Stoppers are gathered branch-free in blocks of :data:`_B`, reading only positions no
    swap has touched yet."""
    p = vals[f]
    lpos = f + 1
    rpos = last - 1
    last_l = f - 1  # positions <= last_l / >= last_r were written by swaps
    last_r = last
    nl = 0
    il = 0
    nr = 0
    ir = 0
    while True:
        while il == nl and lpos < last_r:
            il = 0
            nl = 0
            end = min(lpos + _B, last_r)
            while lpos < end:
                lb[nl] = lpos
                nl += 0 if before(vals[lpos], p, desc, packed) else 1
                lpos += 1
        li = lb[il] if il < nl else last
        while ir == nr and rpos > last_l:
            ir = 0
            nr = 0
            end = max(rpos - _B, last_l)
            while rpos > end:
                rb[nr] = rpos
                nr += 0 if before(p, vals[rpos], desc, packed) else 1
                rpos -= 1
        ri = rb[ir] if ir < nr else f - 1
        if li >= ri:
            return li if li < last_r else last_r
        _swap(vals, idx, li, ri, packed)
        il += 1
        ir += 1
        last_l = li
        last_r = ri


def _make_replay(packed: bool):
    """:func:`replay` over packed key|index words or over separate value / index arrays
    (compiled once each, cached on disk)."""

    @numba.njit(cache=True, nogil=True)
    def replay(vals, idx, b1, b2, desc):
        """Partition ``vals`` (and ``idx``, unless ``packed``) in place exactly as introsort
        would, but only the ranges that straddle position ``b1`` or ``b2``; 0 on success, 1 if
        a range hit the heapsort depth limit (the result is then unusable)."""
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
        lb = np.empty(_B, np.int64)
        rb = np.empty(_B, np.int64)
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
                        x = idx[i] if not packed else 0
                        j = i
                        while j > f and before(v, vals[j - 1], desc, packed):
                            vals[j] = vals[j - 1]
                            if not packed:
                                idx[j] = idx[j - 1]
                            j -= 1
                        vals[j] = v
                        if not packed:
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
                if before(va, vb, desc, packed):
                    if before(vb, vc, desc, packed):
                        s = mid
                    elif before(va, vc, desc, packed):
                        s = c
                    else:
                        s = a
                elif before(va, vc, desc, packed):
                    s = a
                elif before(vb, vc, desc, packed):
                    s = c
                else:
                    s = mid
                _swap(vals, idx, f, s, packed)
                lo = _partition(vals, idx, f, last, desc, packed, lb, rb)
                if sp >= 128:
                    return 1
                sf[sp] = lo
                sl[sp] = last
                sd[sp] = d
                sp += 1
                last = lo
        return 0

    return replay


#: ``replay(vals, idx, b1, b2, desc)``: partition ``vals`` (and ``idx``, unless packed) in
#: place exactly as introsort would, but only the ranges that straddle position ``b1`` or
#: ``b2``; 0 on success, 1 if a range hit the heapsort depth limit (result unusable)
replay_packed = _make_replay(True)
replay_arrays = _make_replay(False)


@numba.njit(inline="always")
def _key(src, r, j, mode):
    """float32 sort key of ``src[r, j]``: as is (mode 0), ``|x|`` of float32 (1), ``|x|``
    of bf16 bits (2) — mergekit sorts bf16 magnitudes converted to float32 on CPU."""
    if mode == 2:
        return _as_f32((np.uint32(src[r, j]) & np.uint32(0x7FFF)) << np.uint32(16))
    if mode == 1:
        return abs(src[r, j])
    return src[r, j]


@numba.njit(inline="always")
def _row(src, r, lo, hi, out, status, mode, desc, idt):
    """Select row ``r``: magnitudes (modes 1, 2) without NaN go through packed
    key|index words, anything else through separate value and index arrays."""
    N = src.shape[1]
    if mode != 0 and N < 4294967296:
        w = np.empty(N, np.uint64)
        top = np.uint32(0)
        for j in range(N):
            kb = _as_u32(_key(src, r, j, mode))
            top = max(top, kb)
            w[j] = (np.uint64(kb) << np.uint64(32)) | np.uint64(j)
        if top <= np.uint32(0x7F800000):  # no NaN magnitude (those take the slow path)
            dummy = np.empty(1, idt)
            st = replay_packed(w, dummy, lo[r], hi[r], desc)
            status[r] = st
            if st == 0:
                o = out[r]
                mask = np.uint64(0xFFFFFFFF)
                for p in range(lo[r], hi[r]):
                    o[w[p] & mask] = 1
            return
    vals = np.empty(N, np.float32)
    idx = np.empty(N, idt)
    for j in range(N):
        vals[j] = _key(src, r, j, mode)
        idx[j] = j
    st = replay_arrays(vals, idx, lo[r], hi[r], desc)
    status[r] = st
    if st == 0:
        o = out[r]
        for p in range(lo[r], hi[r]):
            o[idx[p]] = 1


def _make(mode: int, desc: bool, big: bool):
    """Row selection specialised for one key mode / direction (rows ``[r0, r1)``); compiled
    on first use, cached on disk by numba; releases the GIL so rows run in threads."""
    idt = np.int64 if big else np.int32

    @numba.njit(cache=True, nogil=True)
    def rows(src, lo, hi, out, status, r0, r1):
        for r in range(r0, r1):
            _row(src, r, lo, hi, out, status, mode, desc, idt)

    return rows


_ROWS: dict = {}


def select_range(x: torch.Tensor, lo, hi, descending: bool,
                 magnitude: bool = False) -> torch.Tensor | None:
    """Bool mask ``[n, N]``: for each row of the CPU tensor ``x`` ``[n, N]``, True at the
    elements ``torch.sort(key_i, descending=descending).indices[lo[i]:hi[i]]`` selects,
    where ``key_i`` is ``x[i]`` (float32) or, with ``magnitude``, ``|x[i]|`` as float32
    (``x`` float32 or bf16, converted inside the kernel). ``None`` when the replay cannot
    be used here (see the module docstring)."""
    if not available():
        return None
    return _select(x, lo, hi, descending, magnitude)


def _select(x, lo, hi, descending, magnitude=False):
    x = x.detach()
    if magnitude and x.dtype == torch.bfloat16:
        mode, src = 2, x.contiguous().view(torch.int16).numpy().view(np.uint16)
    elif magnitude:
        mode, src = 1, x.to(torch.float32).contiguous().numpy()
    else:
        mode, src = 0, x.to(torch.float32).contiguous().numpy()
    n, N = src.shape
    key = (mode, bool(descending), N >= 2**31 - 1)
    if key not in _ROWS:
        _ROWS[key] = _make(*key)
    out = np.zeros((n, N), dtype=np.uint8)
    status = np.zeros(n, dtype=np.int64)
    args = (src, np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64), out, status)
    if N >= (1 << 16):  # one row per thread
        run_parallel(_ROWS[key], [(*args, r, r + 1) for r in range(n)])
    else:
        _ROWS[key](*args, 0, n)
    if status.any():
        return None
    return torch.from_numpy(out).view(torch.bool)


def available() -> bool:
    """True when the replay equals ``torch.sort`` on this machine: checked on tie-heavy
    arrays (both directions, float keys and float32 / bf16 magnitudes) once per torch
    build, CPU capability and version of this code, the verdict kept in a small file."""
    if "ok" in _STATE:
        return _STATE["ok"]
    stamp = _stamp_file()
    try:
        _STATE["ok"] = stamp.read_text().strip() == "ok"
        return _STATE["ok"]
    except OSError:
        pass
    ok = _self_check()
    try:  # remember the verdict for this torch build / CPU / numba / this code
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("ok" if ok else "fail")
        os.replace(tmp, stamp)
    except OSError:
        pass
    _STATE["ok"] = ok
    return ok


def _stamp_file():
    """Where the self-check verdict is kept: :func:`wsviz.cache_dir.cache_root`
    / ``introsort-<hash of torch version and build, CPU capability, numba version, this
    module's source>.txt``."""
    import hashlib
    import platform
    from pathlib import Path

    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        cap = "?"
    h = hashlib.sha256()
    for part in (torch.__version__, str(torch.__config__.show()), cap, numba.__version__,
                 platform.machine(), Path(__file__).read_bytes().decode("utf-8", "replace")):
        h.update(part.encode())
    return cache_root() / f"introsort-{h.hexdigest()[:16]}.txt"


def _self_check() -> bool:
    ok = True
    g = torch.Generator().manual_seed(1234)
    for n in (40, 1000, 6007):
        x = torch.randint(0, min(255, max(3, n // 50)), (3, n), generator=g).float()
        x[1] = (torch.randn(n, generator=g) * 0.01).bfloat16().float().abs()
        sign = torch.where(torch.rand((3, n), generator=g) < 0.5, -1.0, 1.0)
        for desc in (True, False):
            bounds = ([n // 5, 1, n // 2], [n // 2, n - 1, n // 2 + 7])
            refs = []
            for i in range(3):
                order = torch.sort(x[i], descending=desc).indices
                ref = torch.zeros(n, dtype=torch.bool)
                ref[order[bounds[0][i]:bounds[1][i]]] = True
                refs.append(ref)
            for got in (_select(x, *bounds, desc),
                        _select(x * sign, *bounds, desc, magnitude=True),
                        _select((x * sign).bfloat16(), *bounds, desc, magnitude=True)):
                ok = ok and got is not None and all(torch.equal(got[i], refs[i])
                                                    for i in range(3))
        if not ok:
            break
    return ok

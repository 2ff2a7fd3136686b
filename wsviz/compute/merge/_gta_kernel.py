"""One-pass CPU kernel (numba) for generalised task arithmetic without rescale.

Computes, per element, exactly the sequence of rounded operations mergekit's
``GeneralizedTaskArithmeticMerge`` performs with torch on CPU (verified bit for bit by the
parity tests), but reading each input once instead of a dozen times:

    x_i   = round((δ_i · k_i) · w_i)             k_i ∈ {0, 1}: the trim mask
    s     = round(0 + x_0 + x_1 + ...)           (sign election, ``sum``)
    a_i   = [sign(x_i) == (s >= 0 ? +1 : -1)]
    m     = round(0 + Σ x_i · a_i),  div = round(0 + Σ w_i · a_i)  (0 → 1)
    without consensus: m = round(0 + Σ x_i), div = round(Σ w_i) (|div| < 1e-8 → 1)
    m     = round(m / div) if normalize;  m = round(m · λ) if λ != 1
    out   = round(base + m)

``round`` is bf16 round-to-nearest-even for bf16 (torch's CPU bf16 ops compute in float32
and round once; its bf16 sums accumulate in float32 left to right and round once) and the
identity for float32. torch sums 2-4 rows left to right, so the kernel is used for at most
4 models (torch's 5+-row sums reorder the tail columns); :func:`usable` says when.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from wsviz.compute._bits import as_f32 as _as_f32
from wsviz.compute._bits import as_u32 as _as_u32
from wsviz.compute._bits import run_parallel

MAX_MODELS = 4
BLOCK = 1 << 11


@numba.njit(inline="always")
def _rnd(x, bf16):
    """float32 → the float32 value of its bf16 rounding (RNE; NaN stays NaN), branch-free."""
    if not bf16:
        return x
    b = _as_u32(x)
    r = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) \
        & np.uint32(0xFFFF0000)
    return _as_f32(b if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else r)


@numba.njit(inline="always")
def _ld(a, i, j, bf16):
    if bf16:
        return _as_f32(np.uint32(a[i, j]) << np.uint32(16))
    return a[i, j]


@numba.njit(inline="always")
def _st(x, bf16):
    if bf16:
        return np.uint16(_as_u32(x) >> np.uint32(16))
    return x


@numba.njit(inline="always")
def _block(blk, base, deltas, keep, ranks, lo, hi, w, wsum, normalize, lam, out,
           mask_mode, consensus, bf16):
    """Columns ``[blk·BLOCK, (blk+1)·BLOCK)``: one vectorisable loop per step."""
    n, N = deltas.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    j0 = blk * BLOCK
    c = min(N, j0 + BLOCK) - j0
    xs = np.empty((n, BLOCK), np.float32)
    acc = np.zeros(BLOCK, np.float32)
    for i in range(n):
        wi = w[i]
        xi = xs[i]
        for j in range(c):
            d = _ld(deltas, i, j0 + j, bf16)
            if mask_mode == 1:
                d = d * (one if keep[i, j0 + j] else zero)
            elif mask_mode == 2:
                r = ranks[i, j0 + j]
                d = d * (one if (r >= lo[i]) & (r < hi[i]) else zero)
            x = _rnd(d * wi, bf16)
            xi[j] = x
            acc[j] = acc[j] + x
    if consensus:
        sg = np.empty(BLOCK, np.float32)  # elected sign: +1 where round(Σx) >= 0, else -1
        for j in range(c):
            sg[j] = one if _rnd(acc[j], bf16) >= zero else -one
        m = np.zeros(BLOCK, np.float32)
        dv = np.zeros(BLOCK, np.float32)
        for i in range(n):
            wi = w[i]
            xi = xs[i]
            for j in range(c):
                x = xi[j]
                a = one if x * sg[j] > zero else zero  # sign(x) equals the elected sign
                m[j] = m[j] + x * a
                dv[j] = dv[j] + wi * a
        for j in range(c):
            v = _rnd(m[j], bf16)
            q = _rnd(dv[j], bf16)
            if normalize:
                v = _rnd(v / (one if q == zero else q), bf16)
            if lam != one:
                v = _rnd(v * lam, bf16)
            out[0, j0 + j] = _st(_rnd(_ld(base, 0, j0 + j, bf16) + v, bf16), bf16)
    else:
        for j in range(c):
            v = _rnd(acc[j], bf16)
            if normalize:
                v = _rnd(v / wsum, bf16)
            if lam != one:
                v = _rnd(v * lam, bf16)
            out[0, j0 + j] = _st(_rnd(_ld(base, 0, j0 + j, bf16) + v, bf16), bf16)


def _make(mask_mode: int, consensus: bool, bf16: bool):
    """The kernel specialised (compile-time constants) for one mask mode / consensus /
    dtype, over column blocks ``[b0, b1)``; compiled on first use, cached on disk; it
    releases the GIL so column ranges run in threads."""

    @numba.njit(cache=True, nogil=True)
    def kernel(base, deltas, keep, ranks, lo, hi, w, wsum, normalize, lam, out, b0, b1):
        for blk in range(b0, b1):
            _block(blk, base, deltas, keep, ranks, lo, hi, w, wsum, normalize, lam, out,
                   mask_mode, consensus, bf16)

    return kernel


#: below this many columns the kernel runs on one thread
PARALLEL_MIN = 1 << 18
_KERNELS: dict = {}


def gta_kernel(base, deltas, keep, ranks, lo, hi, w, wsum, mask_mode, consensus,
               normalize, lam, bf16, out):
    """``base`` ``[1, N]``, ``deltas`` ``[n, N]`` (float32, or uint16 bf16 bits with
    ``bf16``), ``keep`` ``[n, N]`` bool (``mask_mode`` 1) or ``ranks`` ``[n, N]`` int with
    per-model ``[lo, hi)`` (``mask_mode`` 2; 0: no trim), ``w`` ``[n]`` float32 weights
    (already bf16-rounded for bf16), ``wsum`` the rounded Σw, ``out`` ``[1, N]``."""
    key = (int(mask_mode), bool(consensus), bool(bf16))
    if key not in _KERNELS:
        _KERNELS[key] = _make(*key)
    args = (base, deltas, keep, ranks, lo, hi, w, wsum, bool(normalize), lam, out)
    nb = (deltas.shape[1] + BLOCK - 1) // BLOCK
    if deltas.shape[1] < PARALLEL_MIN:
        _KERNELS[key](*args, 0, nb)
        return
    t = max(1, torch.get_num_threads())
    cuts = [nb * i // t for i in range(t + 1)]
    run_parallel(_KERNELS[key], [(*args, cuts[i], cuts[i + 1]) for i in range(t)])


def usable(base: torch.Tensor, deltas: torch.Tensor, consensus) -> bool:
    """The kernel reproduces torch here: CPU, float32 or bf16, 1-4 models, ``sum`` or no
    consensus, contiguous inputs."""
    return (base.device.type == "cpu" and deltas.device.type == "cpu"
            and base.dtype == deltas.dtype and base.dtype in (torch.float32, torch.bfloat16)
            and 1 <= deltas.shape[0] <= MAX_MODELS and consensus in (None, "sum")
            and base.is_contiguous() and deltas.is_contiguous())


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def run(base: torch.Tensor, deltas: torch.Tensor, weights, intervals, consensus,
        normalize: bool, lam: float, ranks: torch.Tensor | None = None,
        keep: torch.Tensor | None = None) -> torch.Tensor:
    """The merged tensor (``base``'s shape and dtype); arguments as
    :func:`~wsviz.compute.merge.task_arithmetic.gta_fused`."""
    n = deltas.shape[0]
    N = base.numel()
    dt = base.dtype
    bf16 = dt == torch.bfloat16
    wt = torch.tensor([float(x) for x in weights], dtype=dt).view(n, 1)
    ws = wt.sum(0)
    ws = torch.where(ws.abs() < 1e-8, torch.ones_like(ws), ws)
    masked = any(a > 0 or b < N for a, b in intervals)
    mode = 0
    if masked:
        mode = 1 if keep is not None else 2
    keep_a = (keep.reshape(n, N) if mode == 1 else torch.zeros((1, 1), dtype=torch.bool))
    ranks_a = (ranks.reshape(n, N) if mode == 2 else torch.zeros((1, 1), dtype=torch.int32))
    lo = np.array([a for a, _ in intervals], dtype=np.int64)
    hi = np.array([b for _, b in intervals], dtype=np.int64)
    out = torch.empty(base.shape, dtype=dt)
    gta_kernel(_np(base.reshape(1, N)), _np(deltas.reshape(n, N)),
               keep_a.contiguous().numpy(), ranks_a.contiguous().numpy(), lo, hi,
               wt.float().reshape(n).numpy(), np.float32(ws.float().item()), mode,
               consensus is not None, bool(normalize), np.float32(lam), bf16,
               _np(out.reshape(1, N)))
    return out

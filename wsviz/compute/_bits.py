"""Bit casts between float32 and uint32 for numba kernels (bf16 encode / decode / round)."""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic


@intrinsic
def as_f32(typingctx, x):
    """Reinterpret a uint32 as float32 (no conversion)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def as_u32(typingctx, x):
    """Reinterpret a float32 as uint32 (no conversion)."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


_POOL: dict = {}


def run_parallel(fn, jobs) -> None:
    """Run ``fn(*job)`` for every job on a small thread pool (numba kernels compiled with
    ``nogil=True`` run truly in parallel); a single job runs inline. Up to
    ``2 · torch.get_num_threads()`` jobs run at once, so e.g. 3 equal jobs on 2 cores
    share them (1.5 job-times) instead of running 2 + 1 (2 job-times). Exceptions
    propagate."""
    import torch

    jobs = list(jobs)
    t = torch.get_num_threads()
    if len(jobs) <= 1 or t <= 1:
        for j in jobs:
            fn(*j)
        return
    from concurrent.futures import ThreadPoolExecutor

    if _POOL.get("n") != t:
        if "pool" in _POOL:
            _POOL["pool"].shutdown(wait=False)
        _POOL["pool"] = ThreadPoolExecutor(2 * t, thread_name_prefix="wsviz-kernel")
        _POOL["n"] = t
    for f in [_POOL["pool"].submit(fn, *j) for j in jobs]:
        f.result()

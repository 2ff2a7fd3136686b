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

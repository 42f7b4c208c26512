"""The gated engine's dLdU writer for large outputs (service/gated_kernel.py), in whole 64-byte lines
by non-temporal stores: a cold 20 MB output is not read into the cache before it is overwritten.

Numba has no spelling for a non-temporal store or for x86's ``sfence``: the two intrinsics below emit
them. They live in a module of their own, imported with numba at the first compile (``import service``
imports no numba), so that ``columns`` is a plain module-level function numba can cache on disk
(NUMBA_CACHE_DIR) like the other loops: as a closure over the intrinsics it was compiled again at
every start, half a second a process.
"""
# mypy: ignore-errors

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def stream_line(typingctx, flat, p, line):
    """flat[p : p + L] = line, one 64-byte non-temporal store (p on a 64-byte boundary)."""

    def codegen(context, builder, signature, args):
        flat_type, _, line_type = signature.args
        dst_array = context.make_array(flat_type)(context, builder, args[0])
        src_array = context.make_array(line_type)(context, builder, args[2])
        element = context.get_data_type(flat_type.dtype)
        size = context.get_abi_sizeof(element)
        vector = ir.VectorType(element, 64 // size)
        value = builder.load(builder.bitcast(src_array.data, vector.as_pointer()), align=size)
        dst = builder.bitcast(builder.gep(dst_array.data, [args[1]]), vector.as_pointer())
        store = builder.store(value, dst, align=64)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return types.void(flat, p, line), codegen


@intrinsic
def store_fence(typingctx):
    """x86's sfence: the non-temporal stores are weakly ordered."""

    def codegen(context, builder, signature, args):
        # sfence, x86's order for non-temporal stores (STREAMED is True on x86-64 only)
        signature_ = ir.FunctionType(ir.VoidType(), [])
        sfence = cgutils.get_or_insert_function(builder.module, signature_, "llvm.x86.sse.sfence")
        builder.call(sfence, [])
        return context.get_dummy_value()

    return types.void(), codegen


def columns(tokens, sums, out, head, zeros, line):
    """gated_kernel._columns for large outputs: out[r, tokens[u]] = sums[r, u], every other entry 0."""
    # out (R, C) C-contiguous; head: elements before its first 64-byte boundary; zeros, line: (L,)
    # buffers of one line. The nonzero entries, in memory order: flat r * C + tokens[u], u fastest.
    R, D = sums.shape
    C = out.shape[1]
    flat = out.reshape(R * C)
    n, L = R * C, len(line)
    r, u = 0, 0
    nxt = tokens[0] if D > 0 and R > 0 else n  # flat index of the next nonzero entry
    end = head + (n - head) // L * L  # the whole lines: head .. end
    p = 0
    while p < n:
        if head <= p < end:
            if nxt >= p + L:
                stream_line(flat, p, zeros)
                p += L
                continue
            line[:] = 0
            while nxt < p + L:
                line[nxt - p] = sums[r, u]
                u += 1
                if u == D:
                    u, r = 0, r + 1
                nxt = r * C + tokens[u] if r < R else n
            stream_line(flat, p, line)
            p += L
        else:  # the head and the tail, entry by entry
            if p == nxt:
                flat[p] = sums[r, u]
                u += 1
                if u == D:
                    u, r = 0, r + 1
                nxt = r * C + tokens[u] if r < R else n
            else:
                flat[p] = 0
            p += 1
    store_fence()  # the non-temporal stores are weakly ordered: done before the array is handed on

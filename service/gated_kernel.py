"""The gated engine's per-step loops, compiled by Numba: one call for the whole loop over time.

``service.gated`` is the readable reference: numpy, one library call per
operation, about 20 calls a step for the LSTM forward and as many backward,
a microsecond or more each. At the tutorial's size (B = 1, H = 100) those calls
cost more than the arithmetic. The functions here do the same arithmetic in
compiled loops, the (B, H) x (H, GH) products included (as plain loops, which
vectorise; BLAS pays only for large B x H), with the signatures of the gated
engine's numpy functions:

    gru_forward(A, W, S0, reset_after, bhh_n)     -> S, HN       as gated._gru_forward
    lstm_forward(A, W, S0, C0)                    -> S, CS, TC   as gated._lstm_forward, + tanh(c_t)
    gru_backward_full(fwd, dLds)                  -> dA, dL/ds0  as gated._backward_full
    lstm_backward_full(fwd, dLds)                 -> dA, dL/ds0, dL/dc0
    columns(tokens, sums, C)                      -> dLdU, zero but for the tokens' columns (sums)
    sum_into_columns(rows, x, C)                  -> dLdU and its columns, from each step's rows

Dimension letters as in service/gated.py. Sigmoid and tanh are the scalar
``math.exp`` and ``math.tanh`` of libm, B x G x H of them a step: cheap at the
sizes where the loops are chosen (``pays``), where numpy's SIMD functions would
be called on 100 numbers at a time. The products sum in the order of a plain
loop, not BLAS's blocking, so results differ from numpy's in the last bits only
(tests/test_gated_kernel.py holds them to 1e-12 in float64). ``fastmath`` stays
off, as in service/kernel.py.

``columns`` builds dLdU (GH, C), zero but for the columns of the tokens read
(engine._sum_into_columns, at once). At C = 8000, H = 100 it is 19 to 26 MB that
no cache holds: zeroing it was the largest cost of the engine past the matrix
products. From ``STREAM_MIN_BYTES`` on (x86-64) it is written in whole 64-byte
lines by non-temporal stores (an LLVM store hint; numba has no spelling for it,
hence the two intrinsics), which do not read each line into the cache before
overwriting it: 1.2 ms instead of 2.9 ms for the LSTM's 26 MB, measured between
the benchmark's other candidates. Its first reader (the response's encoder) then
reads it from memory, as it would most of a 26 MB array anyway.

Numba is optional (the ``fast`` extra): without it ``AVAILABLE`` is False and
the gated engine runs its numpy loops. ``warm_up`` (called by
``kernel.warm_up`` at start-up) compiles every signature the engine uses. The
compiled loops release the GIL and cannot be interrupted: the wrappers call them
on chunks of time steps and check the request's deadline between chunks.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from typing import Any

import numpy as np

from .kernel import AVAILABLE, _plain, _spans, add_columns

__all__ = [
    "AVAILABLE",
    "columns",
    "gru_backward_full",
    "gru_forward",
    "lstm_backward_full",
    "lstm_forward",
    "pays",
    "sum_into_columns",
    "warm_up",
]

# Where the compiled loops are faster (measured, docs/performance.md): up to B x G x H x H = 120,000
# (e.g. 4 GRU sequences at H = 100, 16 of either cell at H = 32), and for one sequence up to H = 256
# (1.2x to 1.5x at H = 160 to 256): past that BLAS's (B, H) x (H, GH) products win, reading W once for
# the B rows where the compiled loops read it B times.
GATED_MAX_BGHH = 120_000
GATED_MAX_GHH_ONE = 270_000  # B = 1: G x H x H up to this
# dLdU from this size on is written with non-temporal stores (columns): at C = 8000, H = 100 it is
# 19 to 26 MB, cold in the cache, and filling it this way took 1.2 ms where a memset took 2.9 ms (measured).
STREAM_MIN_BYTES = 4 << 20
STREAMED = platform.machine().lower() in ("x86_64", "amd64")  # measured there; the fence is x86's sfence

# About this many multiply-adds per compiled call (a few milliseconds): the deadline is checked between calls.
_CHUNK_FLOPS = 1 << 22


def _gru_forward(A, WT, bhh_n, prev, S, HN, reset_after):  # type: ignore[no-untyped-def]
    # A (n, B, 3, H) in: the input side; out: r, z, n.  WT (H, 3H) = W^T.  S, HN (n, B, H) out.
    n, B, _, H = A.shape
    acc = np.empty(3 * H, A.dtype)  # W_r h, W_z h, W_n h (reset_after) or W_n (r * h)
    rh = np.empty(H, A.dtype)
    m = 3 * H if reset_after else 2 * H
    for t in range(n):
        for b in range(B):
            h = prev[b] if t == 0 else S[t - 1, b]
            acc[:] = 0
            for j in range(H):  # acc[:m] = h W^T[:, :m], m = 2H or 3H: the inner loop vectorises
                hj = h[j]
                for i in range(m):
                    acc[i] += hj * WT[j, i]
            for i in range(H):
                # sigma(a) = 1 / (1 + exp(-a)), as gated._sigmoid (exp may overflow to inf: sigma -> 0)
                A[t, b, 0, i] = 1.0 / (1.0 + math.exp(-(A[t, b, 0, i] + acc[i])))  # r_t
                A[t, b, 1, i] = 1.0 / (1.0 + math.exp(-(A[t, b, 1, i] + acc[H + i])))  # z_t
            if reset_after:
                for i in range(H):
                    hn = acc[2 * H + i] + bhh_n[i]  # W_n s_{t-1} + bhh_n
                    HN[t, b, i] = hn
                    A[t, b, 2, i] += A[t, b, 0, i] * hn  # a_n = U_n x_t + b_n + r_t * hn
            else:
                for i in range(H):
                    rh[i] = A[t, b, 0, i] * h[i]  # r_t * s_{t-1}
                for j in range(H):
                    rj = rh[j]
                    for i in range(H):
                        acc[2 * H + i] += rj * WT[j, 2 * H + i]
                for i in range(H):
                    A[t, b, 2, i] += acc[2 * H + i]  # a_n = U_n x_t + W_n (r_t * s_{t-1}) + ...
            for i in range(H):
                nt = math.tanh(A[t, b, 2, i])  # n_t
                A[t, b, 2, i] = nt
                z = A[t, b, 1, i]
                S[t, b, i] = (1.0 - z) * nt + z * h[i]  # s_t = (1 - z_t) * n_t + z_t * s_{t-1}


def _lstm_forward(A, WT, prev, cprev, S, CS, TC):  # type: ignore[no-untyped-def]
    # A (n, B, 4, H) in: the input side; out: i, f, g, o.  WT (H, 4H) = W^T.  S, CS, TC (n, B, H) out.
    n, B, _, H = A.shape
    acc = np.empty(4 * H, A.dtype)
    for t in range(n):
        for b in range(B):
            h = prev[b] if t == 0 else S[t - 1, b]
            cp = cprev[b] if t == 0 else CS[t - 1, b]
            acc[:] = 0
            for j in range(H):  # acc = h W^T, every gate: the inner loop vectorises
                hj = h[j]
                for i in range(4 * H):
                    acc[i] += hj * WT[j, i]
            for i in range(H):
                ig = 1.0 / (1.0 + math.exp(-(A[t, b, 0, i] + acc[i])))  # i_t = sigma(a_i)
                f = 1.0 / (1.0 + math.exp(-(A[t, b, 1, i] + acc[H + i])))  # f_t
                g = math.tanh(A[t, b, 2, i] + acc[2 * H + i])  # g_t
                o = 1.0 / (1.0 + math.exp(-(A[t, b, 3, i] + acc[3 * H + i])))  # o_t
                A[t, b, 0, i], A[t, b, 1, i], A[t, b, 2, i], A[t, b, 3, i] = ig, f, g, o
                c = f * cp[i] + ig * g  # c_t = f_t * c_{t-1} + i_t * g_t
                CS[t, b, i] = c
                tc = math.tanh(c)
                TC[t, b, i] = tc
                S[t, b, i] = tc * o  # s_t = o_t * tanh(c_t)


def _gru_back(W, gates, S_prev, HN, dLds, dA, carry, reset_after):  # type: ignore[no-untyped-def]
    # W (3, H, H); gates, dA (n, B, 3, H); S_prev, HN, dLds (n, B, H); carry (B, H) in and out: dL/ds_k
    # from step k + 1. The arithmetic of gated._gru_back, one step and one sequence at a time.
    n, B, _, H = dA.shape
    ds = np.empty(H, dA.dtype)
    d = np.empty(H, dA.dtype)  # reset_after: dL/dhn = r * da_n; else dL/d(r * h) = W_n^T da_n
    for k in range(n - 1, -1, -1):
        for b in range(B):
            for i in range(H):
                ds[i] = dLds[k, b, i] + carry[b, i]  # dL/ds_k
                r, z, nt, h = gates[k, b, 0, i], gates[k, b, 1, i], gates[k, b, 2, i], S_prev[k, b, i]
                da_n = ds[i] * (1.0 - z) * (1.0 - nt * nt)  # dL/da_n, tanh' = 1 - n**2
                dA[k, b, 2, i] = da_n
                dA[k, b, 1, i] = ds[i] * (h - nt) * z * (1.0 - z)  # dL/da_z, sigma' = z (1 - z)
                carry[b, i] = ds[i] * z  # through z * s_{k-1}
            if reset_after:
                for i in range(H):
                    da_n = dA[k, b, 2, i]
                    r = gates[k, b, 0, i]
                    d[i] = da_n * r  # dL/dhn
                    dA[k, b, 0, i] = da_n * HN[k, b, i] * r * (1.0 - r)  # dL/da_r
                for j in range(H):  # carry += W_n^T dhn
                    dj = d[j]
                    for i in range(H):
                        carry[b, i] += dj * W[2, j, i]
            else:
                d[:] = 0
                for j in range(H):  # d = W_n^T da_n
                    dj = dA[k, b, 2, j]
                    for i in range(H):
                        d[i] += dj * W[2, j, i]
                for i in range(H):
                    r = gates[k, b, 0, i]
                    dA[k, b, 0, i] = d[i] * S_prev[k, b, i] * r * (1.0 - r)  # dL/da_r
                    carry[b, i] += d[i] * r
            for g in range(2):  # carry += W_r^T da_r + W_z^T da_z
                for j in range(H):
                    dj = dA[k, b, g, j]
                    for i in range(H):
                        carry[b, i] += dj * W[g, j, i]


def _lstm_back(W, gates, C_prev, TC, dLds, dA, carry, carry_c):  # type: ignore[no-untyped-def]
    # W (4, H, H); gates, dA (n, B, 4, H); C_prev, TC, dLds (n, B, H); carry, carry_c (B, H) in and out:
    # dL/ds_k and dL/dc_k from step k + 1. The arithmetic of gated._lstm_back, one step and one sequence
    # at a time.
    n, B, _, H = dA.shape
    for k in range(n - 1, -1, -1):
        for b in range(B):
            for i in range(H):
                ds = dLds[k, b, i] + carry[b, i]  # dL/ds_k
                ig, f, g, o = gates[k, b, 0, i], gates[k, b, 1, i], gates[k, b, 2, i], gates[k, b, 3, i]
                tc = TC[k, b, i]
                dc = carry_c[b, i] + ds * o * (1.0 - tc * tc)  # dL/dc_k
                dA[k, b, 0, i] = dc * g * ig * (1.0 - ig)  # dL/da_i
                dA[k, b, 1, i] = dc * C_prev[k, b, i] * f * (1.0 - f)  # dL/da_f
                dA[k, b, 2, i] = dc * ig * (1.0 - g * g)  # dL/da_g
                dA[k, b, 3, i] = ds * tc * o * (1.0 - o)  # dL/da_o
                carry_c[b, i] = dc * f  # dL/dc_{k-1}
                carry[b, i] = 0
            for g in range(4):  # carry = sum_g W_g^T da_g = dL/ds_{k-1}
                for j in range(H):
                    dj = dA[k, b, g, j]
                    for i in range(H):
                        carry[b, i] += dj * W[g, j, i]


def _columns(tokens, sums, out):  # type: ignore[no-untyped-def]
    # out (R, C): zeros, but out[:, tokens[u]] = sums[:, u], row by row, so that each row is written
    # while it is in the cache (zeroing all of out first, then scattering, misses the cache per entry).
    R, D = sums.shape
    for r in range(R):
        row = out[r]
        row[:] = 0
        for u in range(D):
            row[tokens[u]] = sums[r, u]


@functools.cache
def _compiled() -> Any:
    """The loops above compiled (lazily, per signature; warm_up compiles the engine's)."""
    import numba

    jit = numba.njit(nogil=True, fastmath=False, cache=bool(os.environ.get("NUMBA_CACHE_DIR")))
    from . import _streamed  # numba's intrinsics: imported with numba, not with the service

    streamed = jit(_streamed.columns)
    return jit(_gru_forward), jit(_lstm_forward), jit(_gru_back), jit(_lstm_back), jit(_columns), streamed


def pays(B: int, G: int, H: int) -> bool:
    """Whether the compiled loops beat numpy's for B sequences of a cell with G gates and H units."""
    return AVAILABLE and (B * G * H * H <= GATED_MAX_BGHH or (B == 1 and G * H * H <= GATED_MAX_GHH_ONE))


def _steps(B: int, G: int, H: int) -> int:
    return max(1, _CHUNK_FLOPS // (B * G * H * H))


def gru_forward(
    A: np.ndarray, W: np.ndarray, S0: np.ndarray, reset_after: bool, bhh_n: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """As ``gated._gru_forward``: A (T, B, 3, H) C-contiguous is overwritten by r, z, n;
    returns S (T, B, H) and, with ``reset_after``, HN (T, B, H) = W_n s_{t-1} + bhh_n."""
    T, B, _, H = A.shape
    WT = np.ascontiguousarray(W.reshape(3 * H, H).T)  # (H, 3H)
    S0 = _plain(S0)
    S = np.empty((T, B, H), dtype=A.dtype)
    HN = np.empty((T, B, H), dtype=A.dtype) if reset_after else np.empty((1, 1, 1), dtype=A.dtype)
    bhh = np.zeros(H, dtype=A.dtype) if bhh_n is None else _plain(np.asarray(bhh_n, dtype=A.dtype))
    loop = _compiled()[0]
    for span in _spans(T, _steps(B, 3, H)):
        prev = S0 if span.start == 0 else S[span.start - 1]
        loop(A[span], WT, bhh, prev, S[span], HN[span], reset_after)
    return S, HN if reset_after else None


def lstm_forward(
    A: np.ndarray, W: np.ndarray, S0: np.ndarray, C0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``gated._lstm_forward``: A (T, B, 4, H) C-contiguous is overwritten by i, f, g, o;
    returns S, CS and TC = tanh(CS), each (T, B, H)."""
    T, B, _, H = A.shape
    WT = np.ascontiguousarray(W.reshape(4 * H, H).T)  # (H, 4H)
    S0, C0 = _plain(S0), _plain(C0)
    S, CS, TC = (np.empty((T, B, H), dtype=A.dtype) for _ in range(3))
    loop = _compiled()[1]
    for span in _spans(T, _steps(B, 4, H)):
        prev, cprev = (S0, C0) if span.start == 0 else (S[span.start - 1], CS[span.start - 1])
        loop(A[span], WT, prev, cprev, S[span], CS[span], TC[span])
    return S, CS, TC


def gru_backward_full(
    W: np.ndarray, gates: np.ndarray, S_prev: np.ndarray, HN: np.ndarray | None, dLds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """As ``gated._backward_full`` for the GRU: dA (T, B, 3, H) and dL/ds0 (B, H)."""
    T, B, _, H = gates.shape
    W, gates, S_prev, dLds = _plain(W), _plain(gates), _plain(S_prev), _plain(dLds)
    reset_after = HN is not None
    hn = _plain(HN) if HN is not None else np.empty((T, 1, 1), dtype=gates.dtype)
    dA = np.empty_like(gates)
    carry = np.zeros((B, H), dtype=gates.dtype)  # dL/ds_k from step k + 1
    loop = _compiled()[2]
    for span in _spans(T, _steps(B, 3, H), backward=True):
        loop(W, gates[span], S_prev[span], hn[span], dLds[span], dA[span], carry, reset_after)
    return dA, carry


def lstm_backward_full(
    W: np.ndarray, gates: np.ndarray, C_prev: np.ndarray, TC: np.ndarray, dLds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``gated._backward_full`` for the LSTM: dA (T, B, 4, H), dL/ds0 and dL/dc0 (B, H)."""
    T, B, _, H = gates.shape
    W, gates, C_prev, TC, dLds = _plain(W), _plain(gates), _plain(C_prev), _plain(TC), _plain(dLds)
    dA = np.empty_like(gates)
    carry = np.zeros((B, H), dtype=gates.dtype)  # dL/ds_k from step k + 1
    carry_c = np.zeros((B, H), dtype=gates.dtype)  # dL/dc_k from c_{k+1}
    loop = _compiled()[3]
    for span in _spans(T, _steps(B, 4, H), backward=True):
        loop(W, gates[span], C_prev[span], TC[span], dLds[span], dA[span], carry, carry_c)
    return dA, carry, carry_c


def columns(tokens: np.ndarray, sums: np.ndarray, C: int) -> np.ndarray:
    """dLdU (R, C), zero but for the columns ``tokens`` (D,) distinct ids in increasing order, which hold
    ``sums`` (R, D); from STREAM_MIN_BYTES on, written with non-temporal stores (x86-64)."""
    out = np.empty((sums.shape[0], C), dtype=sums.dtype)
    _fill_columns(out, _plain(tokens), _plain(sums), streamed=STREAMED and out.nbytes >= STREAM_MIN_BYTES)
    return out


def sum_into_columns(rows: np.ndarray, x: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """dLdU (R, C) with dLdU[:, x[k]] += rows[k] (rows (N, R)), repeated tokens accumulating, and its nonzero
    columns (R, D), the sums for the D distinct tokens: those summed in one compiled pass
    (kernel.add_columns, into an R x D block), then dLdU written once, zeros included (``columns``).
    Both engines' dLdU, where it is large (engine._sum_into_columns) or a gated cell's (gated)."""
    tokens, slot = np.unique(x, return_inverse=True)  # (D,) sorted, (N,): x[k] = tokens[slot[k]]
    sums = add_columns(np.zeros((rows.shape[1], len(tokens)), dtype=rows.dtype), slot, rows)
    return columns(tokens, sums, C), sums


def _fill_columns(out: np.ndarray, tokens: np.ndarray, sums: np.ndarray, *, streamed: bool) -> None:
    if not streamed:
        _compiled()[4](tokens, sums, out)
        return
    L = 64 // out.itemsize  # entries of one 64-byte line
    head = min((-out.ctypes.data % 64) // out.itemsize, out.size)  # entries before the first line
    _compiled()[5](tokens, sums, out, head, np.zeros(L, out.dtype), np.empty(L, out.dtype))


def warm_up() -> None:
    """Compile every loop for float64 and float32 (seconds, once per process)."""
    if not AVAILABLE:
        return
    for dtype in (np.float64, np.float32):
        for reset_after in (False, True):
            A = np.zeros((2, 1, 3, 2), dtype)
            S, HN = gru_forward(A, np.zeros((3, 2, 2), dtype), np.zeros((1, 2), dtype), reset_after, None)
            gru_backward_full(np.zeros((3, 2, 2), dtype), A, S, HN, S)
        A = np.zeros((2, 1, 4, 2), dtype)
        S, CS, TC = lstm_forward(A, np.zeros((4, 2, 2), dtype), np.zeros((1, 2), dtype), np.zeros((1, 2), dtype))
        lstm_backward_full(np.zeros((4, 2, 2), dtype), A, CS, TC, S)
        for streamed in (False, STREAMED):
            _fill_columns(np.empty((2, 3), dtype), np.zeros(1, np.intp), np.zeros((2, 1), dtype), streamed=streamed)

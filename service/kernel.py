"""The engine's per-step loops, compiled by Numba: for small H, where numpy's call cost dominates.

``service.engine`` is the readable reference: numpy, one library call per
operation. At small B x H its recurrence is mostly the cost of calling numpy
(three calls a step forward and three backward, about a microsecond each).
The functions here do the same arithmetic in compiled loops, with the
signatures of the engine's numpy functions:

    recur(S, WT, S0)                  S[t] = tanh(S[t] + S[t-1] W^T), in place
    backward_full(W, dLds, dtanh)     dz_k = (dLds[k] + W^T dz_{k+1}) * dtanh[k]
    add_columns(dLdU, x, dz)          dLdU[:, x_k] += dz_k, in place
    bptt_one(U, V, W, x, y, ...)      engine._bptt_unchecked for one short sequence

``add_columns`` replaces the sort and group of ``engine._sum_into_columns``
(about ten numpy calls, 0.1 ms at any size) by one pass over the n x H entries.

``bptt_one`` is the whole computation of one short sequence in six calls: three
compiled loops (the forward recurrence; the softmax, with libm's exp; the
backward pass with the sums into dLdU and dLdW) around the output layer's three
BLAS products. At the sizes where it is chosen (``fused_pays``; a character
model, C = 65, H = 32, T = 25, is 0.2 M multiply-adds) the numpy engine's
hundred-odd calls cost several times the arithmetic. Its softmax is shifted by
each row's largest logit (the numpy engine shifts only the rows that need it,
``engine._scaled_delta_o``), with the same log1p form of the loss, so that small
losses keep their precision; its products take delta_o itself, not z_t delta_o as
the numpy engine's do, so in float32 there are weights past 1e38 whose gradients
the numpy engine refuses as overflowed and this path answers, finite. Its loss and
its overflow test sum in the arrays' dtype, so that a float32 sum that overflows
is refused as the numpy engine refuses it (tests/test_kernel.py).

Dimension letters as in service/engine.py. The products sum in the order of
a plain loop, not BLAS's blocking, so results differ from numpy's in the
last bits only (tests/test_kernel.py holds them to 1e-12 in float64).
``fastmath`` stays off: it would let LLVM reorder sums and drop NaN checks.

Where each loop pays (``pays``) was measured against the numpy loops
(docs/performance.md, "The compiled recurrence"): the forward loop calls
libm's scalar tanh, B x H times a step, while numpy's tanh is SIMD code, so
it wins only while B x H <= 64; the backward loop has no transcendental and
wins while B x H x H <= 20,000. Compiled versions of the truncated backward
(K large products, few calls) and of the softmax (numpy's exp is SIMD on
AVX-512) were measured slower and are not kept.

Numba is optional (the ``fast`` extra): without it ``AVAILABLE`` is False and
the engine runs its numpy loops. Compiling takes seconds, so ``warm_up``
compiles every signature the engine uses (float64 and float32) at start-up,
inside the readiness self-check (service/ops.py); nothing is cached on disk
unless NUMBA_CACHE_DIR names a writable directory, as a JIT cache is CPU-specific
and the container's filesystem is read-only.
The compiled loops release the GIL and cannot be interrupted: the wrappers
call them on chunks of time steps and check the request's deadline
(service.deadline) between chunks.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .deadline import checkpoint

__all__ = ["AVAILABLE", "add_columns", "backward_full", "bptt_one", "fused_pays", "pays", "recur", "warm_up"]

# Imported and compiled at the first use (warm_up), not at import: `import service` stays quick.
AVAILABLE = importlib.util.find_spec("numba") is not None

RECUR_MAX_BH = 64  # B x H up to which the compiled forward loop is faster (measured)
BACKWARD_MAX_BHH = 20_000  # B x H x H up to which the compiled backward loop is faster (measured)
# One sequence is computed by bptt_one where that was measured faster than the numpy engine (a grid of
# C in 32..4000, H in 16..128, T in 10..200, docs/performance.md): up to this many multiply-adds
# (``fused_work``; its loops cannot be interrupted, and this keeps them to about a millisecond), T x C
# exponentials (libm's exp, scalar, against numpy's SIMD one) and H units (libm's tanh, likewise).
FUSED_MAX_FLOPS = 1 << 21
FUSED_MAX_EXPS = 8192
FUSED_MAX_H = 100

# About this many multiply-adds per compiled call (a few milliseconds): the deadline is
# checked between calls.
_CHUNK_FLOPS = 1 << 22


def _recur(S, WT, prev):  # type: ignore[no-untyped-def]  # (n, B, H), (H, H), (B, H)
    n, B, H = S.shape
    acc = np.empty(H, S.dtype)
    for t in range(n):
        for b in range(B):
            h = prev[b] if t == 0 else S[t - 1, b]
            acc[:] = 0
            for j in range(H):  # acc = h W^T, row by row of W^T: the inner loop vectorises
                hj = h[j]
                for i in range(H):
                    acc[i] += hj * WT[j, i]
            for i in range(H):
                S[t, b, i] = math.tanh(S[t, b, i] + acc[i])  # s_t = tanh(U x_t (+ b) + W s_{t-1})


def _backward_full(W, dLds, dtanh, dz, carry):  # type: ignore[no-untyped-def]  # carry (B, H) in and out
    n, B, H = dz.shape
    for k in range(n - 1, -1, -1):
        for b in range(B):
            for i in range(H):
                dz[k, b, i] = (dLds[k, b, i] + carry[b, i]) * dtanh[k, b, i]
            carry[b, :] = 0
            for j in range(H):  # carry = dz_k W, that is W^T dz_k
                d = dz[k, b, j]
                for i in range(H):
                    carry[b, i] += d * W[j, i]


def _add_columns(dLdU, x, dz):  # type: ignore[no-untyped-def]  # (H, C), (n,), (n, H)
    n, H = dz.shape
    for k in range(n):
        c = x[k]
        if c < 0 or c >= dLdU.shape[1]:  # no bounds checks in compiled code: a bad id would write anywhere
            raise IndexError("a token id is out of range")
        for i in range(H):
            dLdU[i, c] += dz[k, i]  # dLdU[:, x_k] += dz_k, in the order of k


def _forward_one(U, WT, x, s0, b):  # type: ignore[no-untyped-def]
    # U (H, C), WT = W^T (H, H), x (T,), s0 and b (H,): the states S (T, H), s_t = tanh(U x_t + b + W s_{t-1}).
    T, H = x.shape[0], U.shape[0]
    S = np.empty((T, H), U.dtype)
    acc = np.empty(H, U.dtype)
    for t in range(T):
        if x[t] < 0 or x[t] >= U.shape[1]:  # no bounds checks in compiled code: a bad id would read anywhere
            raise IndexError("a token id is out of range")
        h = s0 if t == 0 else S[t - 1]
        acc[:] = 0
        for j in range(H):  # acc = W s_{t-1}, row by row of W^T: the inner loop vectorises
            hj = h[j]
            for i in range(H):
                acc[i] += hj * WT[j, i]
        for i in range(H):
            S[t, i] = math.tanh(U[i, x[t]] + b[i] + acc[i])
    return S


def _softmax_one(D, y, low):  # type: ignore[no-untyped-def]
    # D (T, C): the logits in, the seed's delta_o = o_t - onehot(y_t) out; returns the loss and each
    # token's -ln o_t[y_t] (T,). Each row is shifted by its largest logit; the target's own term is kept
    # out of the sum, so the loss (log1p) and delta_o[y] = -(others / z) have no cancellation.
    T, C = D.shape
    token_loss = np.empty(T, D.dtype)
    loss = D[0, 0] - D[0, 0]  # 0 in D's dtype, as the numpy engine sums the loss (0.0: float32 summed in float64)
    for t in range(T):
        a, yt = D[t], y[t]
        if yt < 0 or yt >= C:  # as in _forward_one (x, which _backward_one reads again, is checked there)
            raise IndexError("a target id is out of range")
        m = a[0]
        for k in range(C):
            if a[k] > m:
                m = a[k]
        shifted_y = a[yt] - m
        others = 0.0  # the sum of exp(a - m) but the target's
        for k in range(C):
            a[k] = math.exp(a[k] - m)
            if k != yt:
                others += a[k]
        e_y = a[yt]
        if e_y >= low:
            token_loss[t] = math.log1p(others / e_y)  # -ln o[y] = ln(z / e_y)
        else:  # exp(a_y - m) (nearly) underflowed: ln z - (a_y - m)
            token_loss[t] = math.log(others + e_y) - shifted_y
        loss += token_loss[t]
        r = 1.0 / (others + e_y)
        for k in range(C):
            a[k] *= r  # o_t
        a[yt] = -others * r  # o_t[y] - 1
    return loss, token_loss


def _backward_one(W, S, dLds, x, s0, C, K):  # type: ignore[no-untyped-def]
    # W (H, H), S and dLds (T, H), x (T,), s0 (H,); K < 0: full BPTT, else the truncation. Returns dz (T, H)
    # = dL/dz_k, dLdU (H, C), dLdW (H, H), dLds0 (H,) = W^T dz_0, and a sum that is finite when they are
    # (the caller's overflow test: dLdU's entries are sums of dz's, bounded by the sum of |dz|).
    T, H = S.shape
    dz = np.empty((T, H), S.dtype)
    carry = np.zeros(H, S.dtype)  # full BPTT: W^T dz_{k+1}
    for k in range(T - 1, -1, -1):
        for i in range(H):
            dz[k, i] = (dLds[k, i] + carry[i]) * (1.0 - S[k, i] * S[k, i])  # tanh' = 1 - s**2
        if K < 0:
            carry[:] = 0
            for j in range(H):  # carry = W^T dz_k, row by row of W
                d = dz[k, j]
                for i in range(H):
                    carry[i] += d * W[j, i]
    if K >= 0:  # the seed's truncation: output t's error reaches steps t .. max(0, t - K)
        delta = dz.copy()  # lag 0: delta[k] for output k
        for lag in range(1, K + 1):
            for k in range(T - lag):  # delta[k] = (W^T delta[k + 1]) * tanh'(z_k), in increasing k: in place
                carry[:] = 0
                for j in range(H):
                    d = delta[k + 1, j]
                    for i in range(H):
                        carry[i] += d * W[j, i]
                for i in range(H):
                    delta[k, i] = carry[i] * (1.0 - S[k, i] * S[k, i])
                    dz[k, i] += delta[k, i]
    dLdU = np.zeros((H, C), S.dtype)
    dLdW = np.zeros((H, H), S.dtype)
    dLds0 = np.zeros(H, S.dtype)
    for j in range(H):  # W^T dz_0
        d = dz[0, j]
        for i in range(H):
            dLds0[i] += d * W[j, i]
    total = dLds0[0] - dLds0[0]  # 0 in the arrays' dtype, in which their sums overflow (0.0: summed in float64)
    for k in range(T):  # dLdW += outer(dz_k, s_{k-1}), dLdU[:, x_k] += dz_k
        h = s0 if k == 0 else S[k - 1]
        for i in range(H):
            d = dz[k, i]
            total += abs(d)
            dLdU[i, x[k]] += d
            for j in range(H):
                dLdW[i, j] += d * h[j]
    for i in range(H):
        total += dLds0[i]
        for j in range(H):
            total += dLdW[i, j]
    return dz, dLdU, dLdW, dLds0, total


@functools.cache
def _compiled() -> Any:
    """The loops above compiled (lazily, per signature; warm_up compiles the engine's)."""
    import numba

    # Cached on disk only where asked, by NUMBA_CACHE_DIR (a writable directory; the tests set one, so
    # that each server they start loads the loops instead of compiling them for two seconds).
    jit = numba.njit(nogil=True, fastmath=False, cache=bool(os.environ.get("NUMBA_CACHE_DIR")))
    return jit(_recur), jit(_backward_full), jit(_add_columns), jit(_forward_one), jit(_softmax_one), jit(_backward_one)


def pays(B: int, H: int) -> tuple[bool, bool]:
    """Whether the compiled (forward, backward) loops beat numpy's for B sequences of H units."""
    return AVAILABLE and B * H <= RECUR_MAX_BH, AVAILABLE and B * H * H <= BACKWARD_MAX_BHH


def fused_work(T: int, H: int, C: int, K: int | None) -> int:
    """Multiply-adds of ``bptt_one``: the three output-layer products, the forward and backward
    recurrences and dLdW, and the truncated lags."""
    lags = 0 if K is None or K >= T - 1 else K
    return T * (3 * H * C + 3 * H * H) + lags * T * H * H


def fused_pays(T: int, H: int, C: int, K: int | None) -> bool:
    """Whether one sequence is computed in one compiled call (``bptt_one``)."""
    return AVAILABLE and H <= FUSED_MAX_H and T * C <= FUSED_MAX_EXPS and fused_work(T, H, C, K) <= FUSED_MAX_FLOPS


def _plain(a: np.ndarray) -> np.ndarray:
    """``a`` as a writable C-contiguous array: the one layout compiled (a read-only or strided
    array would be a new signature, compiled in the request)."""
    return a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a`` as a read-only C-contiguous view (a copy only if it is strided): one compiled signature for the
    inputs of ``bptt_one``, which only reads them, whether they came writable or read-only (a request's)."""
    if a.flags.c_contiguous and not a.flags.writeable:
        return a
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False
    return view


def _steps(B: int, H: int) -> int:
    return max(1, _CHUNK_FLOPS // (B * H * H))


def _spans(n: int, step: int, *, backward: bool = False) -> Iterator[slice]:
    """The slices of range(n), ``step`` long (from the end with ``backward``), that a compiled loop is called
    on: the request's deadline (service.deadline) is checked before each, as the loop cannot be interrupted."""
    for stop in range(n, 0, -step) if backward else range(step, n + step, step):
        checkpoint()
        yield slice(max(0, stop - step), min(n, stop))


def recur(S: np.ndarray, WT: np.ndarray, S0: np.ndarray) -> np.ndarray:
    """S[t] = tanh(S[t] + S[t-1] W^T) for t = 0..T-1, S[-1] = S0, in place.

    Parameters
    ----------
    S : (T, B, H) C-contiguous ndarray
        ``U[:, x_t] (+ b)`` on entry; the hidden states on return.
    WT : (H, H) C-contiguous ndarray, W transposed
    S0 : (B, H) ndarray
    """
    T, B, H = S.shape
    WT, S0 = _plain(WT), _plain(S0)
    compiled_recur = _compiled()[0]
    for span in _spans(T, _steps(B, H)):
        compiled_recur(S[span], WT, S0 if span.start == 0 else S[span.start - 1])
    return S


def backward_full(W: np.ndarray, dLds: np.ndarray, dtanh: np.ndarray) -> np.ndarray:
    """Exact BPTT as ``engine._backward_full``: dz (T, B, H) from dLds and dtanh (T, B, H)."""
    T, B, H = dLds.shape
    W, dLds, dtanh = _plain(W), _plain(dLds), _plain(dtanh)
    compiled_backward = _compiled()[1]
    dz = np.empty_like(dLds)
    carry = np.zeros_like(dLds[0])  # (B, H), W^T dz_{k+1}
    for span in _spans(T, _steps(B, H), backward=True):
        compiled_backward(W, dLds[span], dtanh[span], dz[span], carry)
    return dz


def add_columns(dLdU: np.ndarray, x: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """dLdU[:, x[k]] += dz[k] for every k, in place (repeated ids accumulate); return dLdU.

    Parameters
    ----------
    dLdU : (H, C) C-contiguous writable ndarray, float64 or float32
    x : (n,) integer ndarray, ids in [0, C) (IndexError otherwise)
    dz : (n, H) ndarray of dLdU's dtype
    """
    n, H = dz.shape
    x, dz = _plain(x.astype(np.intp, copy=False)), _plain(dz)
    compiled_add = _compiled()[2]
    for span in _spans(n, max(1, _CHUNK_FLOPS // H)):
        compiled_add(dLdU, x[span], dz[span])
    return dLdU


class OneSequence(NamedTuple):
    """What ``bptt_one`` computes."""

    loss: float  # sum_t -ln o_t[y_t]
    finite: bool  # every result is finite (else the caller names the first that is not)
    S: np.ndarray  # (T, H), s_t
    dz: np.ndarray  # (T, H), dL/dz_k
    token_loss: np.ndarray  # (T,), -ln o_t[y_t]
    dLdU: np.ndarray  # (H, C)
    dLdV: np.ndarray  # (C, H)
    dLdW: np.ndarray  # (H, H)
    dLds0: np.ndarray  # (H,)
    dLdb: np.ndarray | None  # (H,), None without b
    dLdc: np.ndarray | None  # (C,), None without c


def bptt_one(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    s0: np.ndarray,
    b: np.ndarray | None,
    c: np.ndarray | None,
    K: int | None,
) -> OneSequence:
    """The loss and gradients of one sequence, as ``engine._bptt_unchecked``: three compiled loops
    (forward, softmax, backward with the sums) around the output layer's three BLAS products.

    Parameters
    ----------
    U, V, W : (H, C), (C, H), (H, H) ndarrays of one dtype, float64 or float32
    x, y : (T,) integer ndarrays, ids in [0, C) (checked by the caller, which names the bad one; here an id
        out of range raises IndexError rather than reading or writing past an array)
    s0 : (H,) ndarray
    b, c : (H,) and (C,) ndarrays, or None
    K : None, or an int >= 0 (>= T - 1 is full BPTT): the truncation
    """
    H, C = U.shape
    T = len(x)
    dtype = U.dtype
    forward, softmax, backward = _compiled()[3:]
    x, y, s0 = _read_only(x.astype(np.intp, copy=False)), _read_only(y.astype(np.intp, copy=False)), _read_only(s0)
    checkpoint()  # the request's deadline; the loops are short (FUSED_MAX_FLOPS) and cannot be stopped
    S = forward(_read_only(U), _plain(W.T), x, s0, _read_only(np.zeros(H, dtype) if b is None else b))
    D = S @ V.T  # (T, H) x (H, C): the logits, then delta_o
    if c is not None:
        D += c
    loss, token_loss = softmax(D, y, _SQRT_TINY[dtype.type])
    dLdV = D.T @ S  # (C, T) x (T, H), sum_t outer(delta_o[t], s_t)
    dLds = D @ V  # (T, C) x (C, H), V^T delta_o[t]
    dz, dLdU, dLdW, dLds0, total = backward(_read_only(W), S, dLds, x, s0, C, -1 if K is None or K >= T - 1 else K)
    dLdb = None if b is None else dz.sum(axis=0)
    dLdc = None if c is None else D.sum(axis=0)
    finite = math.isfinite(total + loss)
    return OneSequence(loss, finite, S, dz, token_loss, dLdU, dLdV, dLdW, dLds0, dLdb, dLdc)


_SQRT_TINY = {t: float(np.sqrt(np.finfo(t).tiny)) for t in (np.float64, np.float32)}


def warm_up() -> None:
    """Compile every loop for float64 and float32, the gated engine's (service.gated_kernel) too
    (seconds, once per process)."""
    if not AVAILABLE:
        return
    for dtype in (np.float64, np.float32):
        S = np.zeros((3, 2, 2), dtype)
        W = np.zeros((2, 2), dtype)
        recur(S, W, S[0])
        backward_full(W, S, S)
        add_columns(W, np.zeros(3, np.intp), S[:, 0])
        for K in (None, 0):
            bptt_one(W, W, W, np.zeros(3, np.intp), np.zeros(3, np.intp), W[0], None, None, K)
    from . import gated_kernel  # imports this module: imported here, not at the top

    gated_kernel.warm_up()

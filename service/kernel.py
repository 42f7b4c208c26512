"""The engine's per-step loops, compiled by Numba: for small H, where numpy's call cost dominates.

``service.engine`` is the readable reference: numpy, one library call per
operation. At small B x H its recurrence is mostly the cost of calling numpy
(three calls a step forward and three backward, about a microsecond each).
The functions here do the same arithmetic in compiled loops, with the
signatures of the engine's numpy functions:

    recur(S, WT, S0)                  S[t] = tanh(S[t] + S[t-1] W^T), in place
    backward_full(W, dLds, dtanh)     dz_k = (dLds[k] + W^T dz_{k+1}) * dtanh[k]
    add_columns(dLdU, x, dz)          dLdU[:, x_k] += dz_k, in place

``add_columns`` replaces the sort and group of ``engine._sum_into_columns``
(about ten numpy calls, 0.1 ms at any size) by one pass over the n x H entries.

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
from typing import Any

import numpy as np

from .deadline import checkpoint

__all__ = ["AVAILABLE", "add_columns", "backward_full", "pays", "recur", "warm_up"]

# Imported and compiled at the first use (warm_up), not at import: `import service` stays quick.
AVAILABLE = importlib.util.find_spec("numba") is not None

RECUR_MAX_BH = 64  # B x H up to which the compiled forward loop is faster (measured)
BACKWARD_MAX_BHH = 20_000  # B x H x H up to which the compiled backward loop is faster (measured)

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


@functools.cache
def _compiled() -> Any:
    """The loops above compiled (lazily, per signature; warm_up compiles the engine's)."""
    import numba

    # Cached on disk only where asked, by NUMBA_CACHE_DIR (a writable directory; the tests set one, so
    # that each server they start loads the loops instead of compiling them for two seconds).
    jit = numba.njit(nogil=True, fastmath=False, cache=bool(os.environ.get("NUMBA_CACHE_DIR")))
    return jit(_recur), jit(_backward_full), jit(_add_columns)


def pays(B: int, H: int) -> tuple[bool, bool]:
    """Whether the compiled (forward, backward) loops beat numpy's for B sequences of H units."""
    return AVAILABLE and B * H <= RECUR_MAX_BH, AVAILABLE and B * H * H <= BACKWARD_MAX_BHH


def _plain(a: np.ndarray) -> np.ndarray:
    """``a`` as a writable C-contiguous array: the one layout compiled (a read-only or strided
    array would be a new signature, compiled in the request)."""
    return a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")


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
    from . import gated_kernel  # imports this module: imported here, not at the top

    gated_kernel.warm_up()

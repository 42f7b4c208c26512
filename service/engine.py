"""The vanilla RNN language model of the seed, forward and backward, in numpy.

This is the whole model in one file: numpy and the standard library only, no
web imports. Dimension letters, used in every shape comment below:

    T  sequence length (steps)      H  hidden units
    C  vocabulary size (classes)    K  truncation (lags kept)

The model (Denny Britz's ``RNNNumpy``; Goodfellow et al., Deep Learning, 10.2):

    z_t = U[:, x_t] + W s_{t-1}         pre-activation, s_{-1} = s0 (zeros)
    s_t = tanh(z_t)                     hidden state        (H,)
    o_t = softmax(V s_t)                output distribution (C,)
    L   = sum_t -ln o_t[y_t]            summed, natural log

``bptt`` returns L and dL/dU, dL/dV, dL/dW. With ``bptt_truncate=None`` the
gradients are exact (one backward pass over time); with an integer K they are
the seed's truncated gradients: the error of output t flows back through steps
t, t-1, ..., max(0, t-K) and no further. docs/derivation.md derives every line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ComputeError, InputError

__all__ = ["Gradients", "check_inputs", "forward", "bptt"]


@dataclass(frozen=True)
class Gradients:
    """The loss of one sequence and its gradients, as ``bptt`` returns them.

    Attributes
    ----------
    loss : float
        Summed cross-entropy ``sum_t -ln o_t[y_t]``.
    dLdU : (H, C) ndarray
    dLdV : (C, H) ndarray
    dLdW : (H, H) ndarray
    dLds0 : (H,) ndarray
        Gradient with respect to the initial state ``s0`` (for carrying state
        across chunks of a long text).
    final_state : (H,) ndarray
        ``s_{T-1}``, the hidden state after the last token.
    tokens : int
        T, the number of predicted tokens.
    """

    loss: float
    dLdU: np.ndarray
    dLdV: np.ndarray
    dLdW: np.ndarray
    dLds0: np.ndarray
    final_state: np.ndarray
    tokens: int

    @property
    def mean_loss(self) -> float:
        """Loss per predicted token, ``loss / T`` (the seed's ``calculate_loss``)."""
        return self.loss / self.tokens


def check_inputs(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray | None = None,
    s0: np.ndarray | None = None,
) -> tuple[int, int]:
    """Check that the shapes agree and the token ids are in range.

    Parameters
    ----------
    U : (H, C) ndarray
    V : (C, H) ndarray
    W : (H, H) ndarray
    x, y : (T,) integer ndarrays, ids in [0, C)
    s0 : (H,) ndarray or None

    Returns
    -------
    (H, C)

    Raises
    ------
    InputError
        Naming the field, the expected shape and the shape received.
    """
    for name, a in (("U", U), ("V", V), ("W", W)):
        if a.ndim != 2:
            raise InputError(f"{name} must be a matrix (2 dimensions), got {a.ndim}", field=name)
    H, C = U.shape
    if H == 0 or C == 0:
        raise InputError(f"U must be H x C with H >= 1 and C >= 1, got {H} x {C}", field="U")
    if V.shape != (C, H):
        raise InputError(
            f"V must be C x H = {C} x {H} (U is H x C = {H} x {C}), got {_dims(V)}", field="V"
        )
    if W.shape != (H, H):
        raise InputError(f"W must be H x H = {H} x {H}, got {_dims(W)}", field="W")
    _check_tokens("x", x, C)
    if y is not None:
        _check_tokens("y", y, C)
        if len(y) != len(x):
            raise InputError(
                f"y must have one target per input token: len(x) = {len(x)}, got len(y) = {len(y)}",
                field="y",
            )
    if s0 is not None and s0.shape != (H,):
        raise InputError(f"s0 must have H = {H} numbers, got {_dims(s0)}", field="s0")
    return H, C


def _dims(a: np.ndarray) -> str:
    return " x ".join(str(n) for n in a.shape) if a.ndim else "a scalar"


def _check_tokens(name: str, ids: np.ndarray, C: int) -> None:
    if ids.ndim != 1:
        raise InputError(f"{name} must be a list of token ids, got {ids.ndim} dimensions", field=name)
    if len(ids) == 0:
        raise InputError(f"{name} must hold at least one token id, got an empty list", field=name)
    bad = np.flatnonzero((ids < 0) | (ids >= C))
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"{name}[{i}] = {int(ids[i])} is out of range: token ids must be in [0, C) = [0, {C})",
            field=f"{name}[{i}]",
        )


def forward(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    s0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over one sequence.

    Parameters
    ----------
    U : (H, C) ndarray
    V : (C, H) ndarray
    W : (H, H) ndarray
    x : (T,) integer ndarray
    s0 : (H,) ndarray, optional
        Initial hidden state ``s_{-1}``; zeros when omitted.

    Returns
    -------
    o : (T, C) ndarray
        ``o[t]`` is the softmax distribution over the next token.
    s : (T, H) ndarray
        ``s[t]`` is the hidden state after reading ``x[t]``.
    """
    U, V, W, x, _, s0 = _prepare(U, V, W, x, None, s0)
    with np.errstate(over="ignore", invalid="ignore"):
        s = _hidden_states(U, W, x, s0)
        o = s @ V.T  # (T, H) x (H, C) -> (T, C), logits
        _softmax(o)
    return o, s


def bptt(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    bptt_truncate: int | None = None,
    s0: np.ndarray | None = None,
) -> Gradients:
    """Loss and backpropagation-through-time gradients of one sequence.

    Parameters
    ----------
    U : (H, C) ndarray
    V : (C, H) ndarray
    W : (H, H) ndarray
    x : (T,) integer ndarray
        Input token ids.
    y : (T,) integer ndarray
        Target token ids; ``y[t]`` is the token that should follow ``x[t]``.
    bptt_truncate : int >= 0 or None
        None (default): exact gradients. K: the seed's truncated BPTT, where
        the error of output t reaches steps t, ..., max(0, t - K) only.
    s0 : (H,) ndarray, optional
        Initial hidden state; zeros when omitted.

    Returns
    -------
    Gradients

    Raises
    ------
    InputError
        Shapes that disagree, token ids out of range, a negative truncation.
    ComputeError
        The loss or a gradient is not finite (weights too large for the dtype).

    Notes
    -----
    Vectorised: the output layer is three (T, H)-by-(H, C) matrix products;
    the recurrence loops once over time forward and once backward (or once
    per lag when truncated). The seed's loop is kept in tests/seed.py as the
    oracle this function is checked against.
    """
    if bptt_truncate is not None and (
        isinstance(bptt_truncate, bool) or int(bptt_truncate) != bptt_truncate or bptt_truncate < 0
    ):
        raise InputError(
            f"bptt_truncate must be an integer >= 0 or None, got {bptt_truncate!r}",
            field="bptt_truncate",
        )
    U, V, W, x, y, s0 = _prepare(U, V, W, x, y, s0)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_finite
        return _bptt(U, V, W, x, y, bptt_truncate, s0)


def _bptt(U, V, W, x, y, bptt_truncate, s0) -> Gradients:
    T = len(x)
    rows = np.arange(T)

    s = _hidden_states(U, W, x, s0)  # (T, H)

    # Output layer, all steps at once.  delta_o = o - onehot(y) is dL/d(V s_t),
    # the seed's delta_o (softmax + cross-entropy).
    delta_o = s @ V.T  # (T, H) x (H, C) -> (T, C), logits
    loss = _softmax(delta_o, y)  # delta_o now holds o
    delta_o[rows, y] -= 1.0
    dLdV = delta_o.T @ s  # (C, T) x (T, H) -> (C, H), sum_t outer(delta_o[t], s[t])
    dLds = delta_o @ V  # (T, C) x (C, H) -> (T, H), V^T delta_o[t]: error reaching s_t from o_t

    dtanh = 1.0 - s * s  # (T, H), tanh'(z_t) = 1 - tanh(z_t)**2
    if bptt_truncate is None or bptt_truncate >= T - 1:
        dz = _backward_full(W, dLds, dtanh)
    else:
        dz = _backward_truncated(W, dLds, dtanh, int(bptt_truncate))

    # dz[k] = dL/dz_k summed over the outputs that reach step k.
    s_prev = np.concatenate([s0[None, :], s[:-1]])  # (T, H), s_{k-1}
    dLdW = dz.T @ s_prev  # (H, T) x (T, H) -> (H, H), sum_k outer(dz[k], s_{k-1})
    dLdU = _sum_into_columns(dz, x, U.shape[1])  # dLdU[:, x[k]] += dz[k]
    dLds0 = dz[0] @ W  # (H,), W^T dz_0

    _check_finite(U, V, W, loss=loss, dz=dz, dLdW=dLdW, dLdU=dLdU[:, x], dLds0=dLds0)
    return Gradients(
        loss=loss,
        dLdU=dLdU,
        dLdV=dLdV,
        dLdW=dLdW,
        dLds0=dLds0,
        final_state=s[-1].copy(),
        tokens=T,
    )


def _prepare(U, V, W, x, y, s0):
    """Arrays of one float dtype (U's, float64 unless U is float32), checked."""
    dtype = np.float32 if np.asarray(U).dtype == np.float32 else np.float64
    U, V, W = (np.asarray(a, dtype=dtype) for a in (U, V, W))
    x = np.asarray(x)
    y = None if y is None else np.asarray(y)
    for name, ids in (("x", x), ("y", y)):
        if ids is not None and ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"{name} must hold integer token ids, got dtype {ids.dtype}", field=name)
    s0 = None if s0 is None else np.asarray(s0, dtype=dtype)
    H, _ = check_inputs(U, V, W, x, y, s0)
    if s0 is None:
        s0 = np.zeros(H, dtype=dtype)
    x = x.astype(np.intp, copy=False)
    y = None if y is None else y.astype(np.intp, copy=False)
    return U, V, W, x, y, s0


def _hidden_states(U: np.ndarray, W: np.ndarray, x: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """s[t] = tanh(U[:, x[t]] + W s[t-1]), one loop over time."""
    T, H = len(x), len(s0)
    s = U.T[x]  # (T, H): U[:, x[t]] in row t, overwritten in place by s_t
    WT = np.ascontiguousarray(W.T)
    dot, add, tanh = np.dot, np.add, np.tanh  # local names: this loop is the hot path
    buf = np.empty(H, dtype=s.dtype)
    h = s0
    for t in range(T):
        st = s[t]
        dot(h, WT, out=buf)  # W s_{t-1}
        add(st, buf, out=st)  # z_t
        tanh(st, out=st)  # s_t
        h = st
    return s


def _softmax(a: np.ndarray, y: np.ndarray | None = None) -> float:
    """Turn logits (T, C) into probabilities in place; return sum_t -ln o_t[y_t].

    Stable for logits of any finite size: log o = (a - max a) - ln sum exp(a - max a),
    and after the shift the largest logit is 0, so exp cannot overflow.
    """
    a -= a.max(axis=1, keepdims=True)
    shifted_y = 0.0 if y is None else float(a[np.arange(len(a)), y].sum())
    np.exp(a, out=a)
    z = a.sum(axis=1, keepdims=True)  # (T, 1), >= 1
    a /= z
    return float(np.log(z).sum()) - shifted_y


def _backward_full(W: np.ndarray, dLds: np.ndarray, dtanh: np.ndarray) -> np.ndarray:
    """Exact BPTT, one pass backward over time.

    The error reaching s_k is the output's own, dLds[k], plus what flows back
    from z_{k+1} through W:  dz_k = (dLds[k] + W^T dz_{k+1}) * (1 - s_k**2).
    """
    T, H = dLds.shape
    dz = np.empty_like(dLds)  # (T, H)
    carry = np.zeros(H, dtype=dLds.dtype)  # W^T dz_{k+1}
    dot, add, mul = np.dot, np.add, np.multiply
    for k in range(T - 1, -1, -1):
        dzk = dz[k]
        add(dLds[k], carry, out=dzk)
        mul(dzk, dtanh[k], out=dzk)
        dot(dzk, W, out=carry)  # dz_k W = W^T dz_k
    return dz


def _backward_truncated(W: np.ndarray, dLds: np.ndarray, dtanh: np.ndarray, K: int) -> np.ndarray:
    """The seed's truncated BPTT, one loop over the lags j = 0..K.

    ``delta[k]`` at lag j is the seed's ``delta_t`` for output t = k + j when
    its loop is at step k; every output moves back one step per lag at once.
    """
    delta = dLds * dtanh  # (T, H), lag 0: delta at step k for output k
    dz = delta.copy()
    T = len(delta)
    for j in range(1, K + 1):
        # delta_{k} = (W^T delta_{k+1}) * (1 - s_k**2), for outputs t = k + j
        delta = delta[1:] @ W  # (T-j, H) x (H, H) -> (T-j, H)
        delta *= dtanh[: T - j]
        dz[: T - j] += delta
    return dz


def _sum_into_columns(dz: np.ndarray, x: np.ndarray, C: int) -> np.ndarray:
    """dLdU (H, C) with dLdU[:, x[k]] += dz[k]; repeated tokens accumulate."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sums = np.add.reduceat(dz[order], starts, axis=0)  # (distinct tokens, H)
    dLdU = np.zeros((dz.shape[1], C), dtype=dz.dtype)
    dLdU[:, xs[starts]] = sums.T
    return dLdU


def _check_finite(U: np.ndarray, V: np.ndarray, W: np.ndarray, **parts) -> None:
    """Raise ComputeError if the computation overflowed.

    Checking the small parts is enough: a finite loss means every row of the
    logits was finite (a NaN or infinite logit makes its row's log-softmax NaN),
    so |delta_o| <= 1, |s| <= 1 and |dLdV| <= T; dLdU is nonzero only in the
    columns x, passed here.
    """
    for name, value in parts.items():
        if not np.isfinite(value).all():
            largest = max(float(np.abs(a).max()) for a in (U, V, W))
            raise ComputeError(
                f"{name} is not finite: the computation overflowed in {U.dtype} "
                f"(largest weight magnitude {largest:.3g}); scale the weights down "
                "or compute in float64",
                field=name,
            )

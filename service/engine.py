"""The vanilla RNN language model of the seed, forward and backward, in numpy.

This is the whole model in one file: numpy and the standard library only, no
web imports. Where they are faster, its two per-step loops (``_recur``,
``_backward_full``), the scatter of dLdU's columns (``_sum_into_columns``) and
all of one short sequence (``_bptt_one``: kernel.bptt_one)
run compiled instead: service/kernel.py, the same loops in Numba, optional
(``use_kernel`` chooses; by default numba when installed, compiled at the
first call or by ``kernel.warm_up()``). Dimension letters, used in every shape
comment below:

    T  sequence length (steps)      H  hidden units
    C  vocabulary size (classes)    B  batch (sequences)
    N  predicted tokens in a batch  K  truncation (lags kept)

The model (Denny Britz's ``RNNNumpy``; Goodfellow et al., Deep Learning, 10.2):

    z_t = U[:, x_t] + W s_{t-1}         pre-activation, s_{-1} = s0 (zeros)
    s_t = tanh(z_t)                     hidden state        (H,)
    o_t = softmax(V s_t)                output distribution (C,)
    L   = sum_t -ln o_t[y_t]            summed, natural log

``bptt`` returns L and dL/dU, dL/dV, dL/dW for one sequence, ``bptt_batch``
the sums over several sequences of different lengths (one computation, the
batch in the rows of every matrix product). With ``bptt_truncate=None`` the
gradients are exact (one backward pass over time); with an integer K they are
the seed's truncated gradients: the error of output t flows back through steps
t, t-1, ..., max(0, t-K) and no further. docs/derivation.md derives every line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from . import gated_kernel, kernel
from .deadline import checkpoint
from .errors import ComputeError, InputError

Floating = type[np.floating[Any]]
Loop = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # recur(S, WT, S0), backward(W, dLds, dtanh)

__all__ = [
    "BatchGradients",
    "Gradients",
    "Trace",
    "bptt",
    "bptt_batch",
    "check_inputs",
    "forward",
    "kernel_in_use",
    "lag_summary",
    "loss",
    "trace",
    "use_kernel",
]

_kernel = kernel.AVAILABLE  # the compiled loops where they pay (service.kernel); use_kernel switches


def use_kernel(name: str) -> str:
    """Choose the per-step loops: ``"numba"`` (compiled where measured faster, numpy elsewhere),
    ``"numpy"`` (always numpy), or ``"auto"`` (numba when installed); return the one in use.

    Raises
    ------
    ValueError
        ``"numba"`` without numba installed (``pip install 'bptt-service[fast]'``), or another name.
    """
    global _kernel
    if name not in ("auto", "numba", "numpy"):
        raise ValueError(f'the kernel must be "auto", "numba" or "numpy", got {name!r}')
    if name == "numba" and not kernel.AVAILABLE:
        raise ValueError("the numba kernel is not installed: pip install 'bptt-service[fast]', or use \"numpy\"")
    _kernel = kernel.AVAILABLE and name != "numpy"
    return kernel_in_use()


def kernel_in_use() -> str:
    """``"numba"`` or ``"numpy"``: the per-step loops ``use_kernel`` chose."""
    return "numba" if _kernel else "numpy"


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
    dLdb : (H,) ndarray or None
        With the bias b (``z_t = U x_t + W s_{t-1} + b``); None without.
    dLdc : (C,) ndarray or None
        With the bias c (``o_t = softmax(V s_t + c)``); None without.
    clipped : dict or None
        With ``clip``: how many entries of each parameter's gradient were
        clipped to [-clip, clip]; None without.
    """

    loss: float
    dLdU: np.ndarray
    dLdV: np.ndarray
    dLdW: np.ndarray
    dLds0: np.ndarray
    final_state: np.ndarray
    tokens: int
    dLdb: np.ndarray | None = None
    dLdc: np.ndarray | None = None
    clipped: dict[str, int] | None = None

    @property
    def mean_loss(self) -> float:
        """Loss per predicted token, ``loss / T`` (the seed's ``calculate_loss``)."""
        return self.loss / self.tokens


@dataclass(frozen=True)
class BatchGradients:
    """Losses and gradients of B sequences, as ``bptt_batch`` returns them.

    Attributes
    ----------
    loss : float
        Sum of ``losses``.
    losses : (B,) ndarray
        Each sequence's summed cross-entropy.
    lengths : (B,) ndarray
        Each sequence's T.
    dLdU, dLdV, dLdW : ndarrays, the shapes of U, V, W
        Gradients of ``loss``: the sums of the sequences' gradients.
    dLds0 : (B, H) ndarray
        Each sequence's gradient with respect to its initial state.
    final_state : (B, H) ndarray
        Each sequence's last hidden state.
    dLdb, dLdc, clipped
        As in ``Gradients``.
    """

    loss: float
    losses: np.ndarray
    lengths: np.ndarray
    dLdU: np.ndarray
    dLdV: np.ndarray
    dLdW: np.ndarray
    dLds0: np.ndarray
    final_state: np.ndarray
    dLdb: np.ndarray | None = None
    dLdc: np.ndarray | None = None
    clipped: dict[str, int] | None = None

    @property
    def tokens(self) -> int:
        """N, the number of predicted tokens in the batch."""
        return int(self.lengths.sum())

    @property
    def mean_loss(self) -> float:
        """Loss per predicted token over the whole batch."""
        return self.loss / self.tokens


def check_inputs(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray | None = None,
    s0: np.ndarray | None = None,
    *,
    where: str = "",
) -> tuple[int, int]:
    """Check that the shapes agree and the token ids are in range.

    Parameters
    ----------
    U : (H, C) ndarray
    V : (C, H) ndarray
    W : (H, H) ndarray
    x, y : (T,) integer ndarrays, ids in [0, C)
    s0 : (H,) ndarray or None
    where : str
        Prefix of the names of x, y and s0 in messages (``"sequences[3]."``).

    Returns
    -------
    (H, C)

    Raises
    ------
    InputError
        Naming the field, the expected shape and the shape received.
    """
    H, C = check_weights(U, V, W)
    _check_tokens(f"{where}x", x, C)
    if y is not None:
        _check_tokens(f"{where}y", y, C)
        if len(y) != len(x):
            raise InputError(
                f"{where}y must have one target per input token: len({where}x) = {len(x)}, "
                f"got len({where}y) = {len(y)}",
                field=f"{where}y",
            )
    if s0 is not None and s0.shape != (H,):
        raise InputError(f"{where}s0 must have H = {H} numbers, got {_dims(s0)}", field=f"{where}s0")
    return H, C


def check_weights(U: np.ndarray, V: np.ndarray, W: np.ndarray) -> tuple[int, int]:
    """Check that U is (H, C), V is (C, H) and W is (H, H); return (H, C)."""
    for name, a in (("U", U), ("V", V), ("W", W)):
        if a.ndim != 2:
            raise InputError(f"{name} must be a matrix (2 dimensions), got {a.ndim}", field=name)
    H, C = U.shape
    if H == 0 or C == 0:
        raise InputError(f"U must be H x C with H >= 1 and C >= 1, got {H} x {C}", field="U")
    if V.shape != (C, H) and H != C:
        # Shapes that fit a transposition: say which matrix looks transposed.
        if V.shape == U.shape and W.shape == (C, C):  # U sent as C x H
            raise InputError(
                f"is U transposed? U must be H x C = {C} x {H} (V is C x H = {H} x {C}, W is H x H = {C} x {C}), "
                f"got {H} x {C}",
                field="U",
            )
        if V.shape == (H, C) and W.shape == (H, H):  # V sent as H x C
            raise InputError(f"is V transposed? V must be C x H = {C} x {H}, got {H} x {C}", field="V")
    if V.shape != (C, H):
        raise InputError(f"V must be C x H = {C} x {H} (U is H x C = {H} x {C}), got {_dims(V)}", field="V")
    if W.shape != (H, H):
        raise InputError(f"W must be H x H = {H} x {H}, got {_dims(W)}", field="W")
    return H, C


def _dims(a: np.ndarray) -> str:
    return " x ".join(str(n) for n in a.shape) if a.ndim else "a scalar"


def _check_tokens(name: str, ids: np.ndarray, C: int) -> None:
    if ids.ndim != 1:
        raise InputError(f"{name} must be a list of token ids, got {ids.ndim} dimensions", field=name)
    if len(ids) == 0:
        raise InputError(f"{name} must hold at least one token id, got an empty list", field=name)
    if ids.dtype.kind not in "iu":  # numpy's integer kinds (np.issubdtype: 3 us a call)
        raise InputError(f"{name} must hold integer token ids, got dtype {ids.dtype}", field=name)
    if ids.min() < 0 or ids.max() >= C:  # two reductions; the first bad id only when there is one
        bad = np.flatnonzero((ids < 0) | (ids >= C))
        i = int(bad[0])
        raise InputError(
            f"{name}[{i}] = {int(ids[i])} is out of range: token ids must be in [0, C) = [0, {C})",
            field=f"{name}[{i}]",
        )


def _check_truncate(bptt_truncate: int | None) -> int | None:
    if bptt_truncate is None:
        return None
    if isinstance(bptt_truncate, bool) or int(bptt_truncate) != bptt_truncate or bptt_truncate < 0:
        raise InputError(
            f"bptt_truncate must be an integer >= 0 or None, got {bptt_truncate!r}",
            field="bptt_truncate",
        )
    return int(bptt_truncate)


def forward(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    s0: np.ndarray | None = None,
    *,
    b: np.ndarray | None = None,
    c: np.ndarray | None = None,
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
    b : (H,) ndarray, optional
        Hidden bias: ``z_t = U x_t + W s_{t-1} + b``.
    c : (C,) ndarray, optional
        Output bias: ``o_t = softmax(V s_t + c)``.

    Returns
    -------
    o : (T, C) ndarray
        ``o[t]`` is the softmax distribution over the next token.
    s : (T, H) ndarray
        ``s[t]`` is the hidden state after reading ``x[t]``.
    """
    batch = _Batch.of(U, V, W, [x], None, None if s0 is None else [s0], b=b, c=c)
    with np.errstate(over="ignore", invalid="ignore"):
        s = _hidden_states(batch)[:, 0]  # (T, H)
        o = _logits(batch, s)  # (T, C)
        _softmax(o)
    return o, s


def loss(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    s0: np.ndarray | None = None,
    *,
    b: np.ndarray | None = None,
    c: np.ndarray | None = None,
) -> float:
    """The summed loss ``sum_t -ln o_t[y_t]`` alone (a forward pass; for numerical derivatives)."""
    batch = _Batch.of(U, V, W, [x], [y], None if s0 is None else [s0], b=b, c=c)
    with np.errstate(over="ignore", invalid="ignore"):
        S = _hidden_states(batch)[:, 0]
        return float(_softmax(_logits(batch, S), batch.targets[:, 0]).sum())


def bptt(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    bptt_truncate: int | None = None,
    s0: np.ndarray | None = None,
    *,
    b: np.ndarray | None = None,
    c: np.ndarray | None = None,
    clip: float | None = None,
) -> Gradients:
    """Loss and backpropagation-through-time gradients of one sequence.

    Parameters
    ----------
    U : (H, C) ndarray
        float64, or float32 to compute in float32.
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
    b, c : (H,) and (C,) ndarrays, optional
        Biases, as in ``forward``; their gradients come back as dLdb, dLdc.
    clip : float > 0, optional
        Clip every entry of dLdU, dLdV, dLdW (dLdb, dLdc) to [-clip, clip]
        after computing them (Pascanu et al. 2013 clip the norm; the
        tutorial's successors clip entries); counted in ``clipped``.

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
    K = _check_truncate(bptt_truncate)
    g = _bptt(_Batch.of(U, V, W, [x], [y], None if s0 is None else [s0], b=b, c=c), K, _check_clip(clip))
    return Gradients(
        loss=g.loss,
        dLdU=g.dLdU,
        dLdV=g.dLdV,
        dLdW=g.dLdW,
        dLds0=g.dLds0[0],
        final_state=g.final_state[0],
        tokens=int(g.lengths[0]),
        dLdb=g.dLdb,
        dLdc=g.dLdc,
        clipped=g.clipped,
    )


def bptt_batch(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    bptt_truncate: int | None = None,
    s0: Sequence[np.ndarray | None] | np.ndarray | None = None,
    *,
    b: np.ndarray | None = None,
    c: np.ndarray | None = None,
    clip: float | None = None,
) -> BatchGradients:
    """Losses and summed gradients of B sequences, which may differ in length.

    The same as B calls of ``bptt`` summed, computed at once: the recurrence
    is (B, H)-by-(H, H) per step, shorter sequences masked; the output layer
    is one (N, H)-by-(H, C) product over the N real tokens.

    Parameters
    ----------
    U, V, W : as for ``bptt``
    xs, ys : B integer ndarrays each
        ``xs[b]`` and ``ys[b]`` of one length T_b >= 1.
    bptt_truncate : int >= 0 or None
        As for ``bptt``, for every sequence.
    s0 : (B, H) ndarray, or B of (H,) ndarrays or None, optional
        Initial states; zeros where omitted.
    b, c, clip : as for ``bptt``

    Returns
    -------
    BatchGradients
    """
    K = _check_truncate(bptt_truncate)
    return _bptt(_Batch.of(U, V, W, xs, ys, s0, b=b, c=c, batched=True), K, _check_clip(clip))


@dataclass(frozen=True)
class Trace:
    """The seed's deltas for one sequence: what BPTT passes back, step by step.

    Attributes
    ----------
    delta_o : (T, C) ndarray
        The seed's ``delta_o``: ``o_t - onehot(y_t)``, dE_t/d(V s_t).
    deltas : list of T ndarrays
        ``deltas[t]`` is (L_t, H): row j is the seed's ``delta_t`` for output t
        at step t - j, that is dE_t/dz_{t-j}, for j = 0 .. min(t, K).
    norms : (T, L) ndarray
        ``norms[t, j]`` = ||deltas[t][j]||; NaN where output t does not reach
        back j steps (j > t, or j > K). L = min(T, K + 1).
    """

    delta_o: np.ndarray
    deltas: list[np.ndarray]
    norms: np.ndarray

    def lag_summary(self) -> list[dict[str, float | int]]:
        """Per lag j: how many outputs reach back j steps, and the mean and
        largest ||dE_t/dz_{t-j}||: the vanishing (or exploding) curve."""
        return lag_summary(self.norms)


def lag_summary(norms: np.ndarray) -> list[dict[str, float | int]]:
    """Per column j of a (T, L) table of norms, NaN where output t does not reach back j steps: how
    many outputs reach back j steps, and the mean and largest norm (every cell's traces use it)."""
    out: list[dict[str, float | int]] = []
    for j in range(norms.shape[1]):
        col = norms[:, j]
        col = col[~np.isnan(col)]
        out.append({"lag": j, "outputs": len(col), "mean_norm": float(col.mean()), "max_norm": float(col.max())})
    return out


def trace(
    U: np.ndarray,
    V: np.ndarray,
    W: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    bptt_truncate: int | None = None,
    s0: np.ndarray | None = None,
    *,
    b: np.ndarray | None = None,
    c: np.ndarray | None = None,
) -> Trace:
    """The seed's ``delta_o`` and every ``delta_t`` of its loop, for one sequence.

    Costs O(T L H) memory (L = min(T, K + 1) lags): meant for learning on
    small problems, beside ``bptt``. Arguments as for ``bptt``.
    """
    K = _check_truncate(bptt_truncate)
    batch = _Batch.of(U, V, W, [x], [y], None if s0 is None else [s0], b=b, c=c)
    with np.errstate(over="ignore", invalid="ignore"):
        S = _hidden_states(batch)[:, 0]  # (T, H)
        delta_o = _logits(batch, S)  # (T, C)
        y = batch.targets[:, 0]
        _softmax(delta_o, y)
        delta_o[np.arange(len(y)), y] -= 1.0
        dtanh = 1.0 - S * S  # (T, H)
        T = len(S)
        L = T if K is None else min(T, K + 1)
        # Lag j holds dE_{k+j}/dz_k in row k, as in _backward_truncated.
        lag = (delta_o @ batch.V) * dtanh  # (T, H), j = 0
        by_lag = [lag]
        for j in range(1, L):
            checkpoint()
            lag = (lag[1:] @ batch.W) * dtanh[: T - j]  # (T-j, H)
            by_lag.append(lag)
    deltas = [np.stack([by_lag[j][t - j] for j in range(min(t + 1, L))]) for t in range(T)]
    norms = np.full((T, L), np.nan)
    for j, rows in enumerate(by_lag):
        norms[j:, j] = np.linalg.norm(rows, axis=1)
    return Trace(delta_o=delta_o, deltas=deltas, norms=norms)


@dataclass(frozen=True)
class _Batch:
    """Checked inputs, sequences padded at the end into time-major (T, B) arrays."""

    U: np.ndarray  # (H, C)
    V: np.ndarray  # (C, H)
    W: np.ndarray  # (H, H)
    X: np.ndarray  # (T, B) input ids, 0 past each sequence's end
    Y: np.ndarray | None  # (T, B) target ids
    S0: np.ndarray  # (B, H)
    lengths: np.ndarray  # (B,)
    b: np.ndarray | None  # (H,)
    c: np.ndarray | None  # (C,)

    @property
    def targets(self) -> np.ndarray:
        """Y, for the functions that score the outputs (every batch built with targets has it)."""
        if self.Y is None:
            raise TypeError("this batch was built without targets")
        return self.Y

    @classmethod
    def of(
        cls,
        U: ArrayLike,
        V: ArrayLike,
        W: ArrayLike,
        xs: Sequence[ArrayLike],
        ys: Sequence[ArrayLike] | None,
        s0s: Sequence[ArrayLike | None] | np.ndarray | None,
        *,
        b: ArrayLike | None = None,
        c: ArrayLike | None = None,
        batched: bool = False,
    ) -> _Batch:
        """Check and pad; messages name ``sequences[b].x`` when ``batched``, else ``x``."""
        dtype: Floating = np.float32 if np.asarray(U).dtype == np.float32 else np.float64
        Ua, Va, Wa = (np.asarray(a, dtype=dtype) for a in (U, V, W))
        H, C = check_weights(Ua, Va, Wa)
        b_hidden = _bias(b, "b", H, "H", dtype)
        c_output = _bias(c, "c", C, "C", dtype)
        B = len(xs)
        if B == 0:
            raise InputError("sequences must hold at least one sequence, got none", field="sequences")
        if ys is not None and len(ys) != B:
            raise InputError(f"ys must hold one target sequence per input sequence: {B}, got {len(ys)}", field="ys")
        S0 = np.zeros((B, H), dtype=dtype)
        if s0s is not None and len(s0s) != B:
            raise InputError(f"s0 must hold one state per sequence, B = {B}, got {len(s0s)}", field="s0")
        xa = [np.asarray(x) for x in xs]
        ya = None if ys is None else [np.asarray(y) for y in ys]
        for i in range(B):
            s0 = None if s0s is None or s0s[i] is None else np.asarray(s0s[i], dtype=dtype)
            where = f"sequences[{i}]." if batched else ""
            check_inputs(Ua, Va, Wa, xa[i], None if ya is None else ya[i], s0, where=where)
            if s0 is not None:
                S0[i] = s0
        lengths = np.array([len(x) for x in xa])
        T = int(lengths.max())
        Y: np.ndarray | None
        if B == 1:
            X = xa[0].astype(np.intp).reshape(T, 1)
            Y = None if ya is None else ya[0].astype(np.intp).reshape(T, 1)
        else:
            X = np.zeros((T, B), dtype=np.intp)
            Y = None if ya is None else np.zeros((T, B), dtype=np.intp)
            for i in range(B):
                X[: lengths[i], i] = xa[i]
                if Y is not None and ya is not None:
                    Y[: lengths[i], i] = ya[i]
        return cls(U=Ua, V=Va, W=Wa, X=X, Y=Y, S0=S0, lengths=lengths, b=b_hidden, c=c_output)


def _bias(value: ArrayLike | None, name: str, n: int, letter: str, dtype: Floating) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value, dtype=dtype)
    if a.shape != (n,):
        raise InputError(f"{name} must have {letter} = {n} numbers, got {_dims(a)}", field=name)
    return a


def _check_clip(clip: float | None) -> float | None:
    if clip is None:
        return None
    if isinstance(clip, bool) or not np.isfinite(clip) or clip <= 0:
        raise InputError(f"clip must be a number > 0 or None, got {clip!r}", field="clip")
    return float(clip)


def _bptt(batch: _Batch, K: int | None, clip: float | None = None) -> BatchGradients:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_finite
        g = _bptt_unchecked(batch, K)
    if clip is None:
        return g
    clipped = {}
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdc"):
        grad = getattr(g, name)
        if grad is not None:
            bound = min(clip, float(np.finfo(grad.dtype).max))  # a float32 gradient cannot exceed its max
            clipped[name] = int(np.count_nonzero(np.abs(grad) > bound))
            np.clip(grad, -bound, bound, out=grad)
    return replace(g, clipped=clipped)


def _bptt_unchecked(batch: _Batch, K: int | None) -> BatchGradients:
    U, V, W, X, S0, lengths = batch.U, batch.V, batch.W, batch.X, batch.S0, batch.lengths
    T, B = X.shape
    H, C = U.shape
    if _kernel and B == 1 and kernel.fused_pays(T, H, C, K):
        return _bptt_one(batch, K)  # the same arithmetic in one compiled call

    S = _hidden_states(batch)  # (T, B, H)

    # The N real tokens, as rows (t, b) in time-major order; padding is skipped.
    padded = lengths.min() < T
    valid = (np.arange(T)[:, None] < lengths[None, :]).ravel() if padded else slice(None)
    s_rows = S.reshape(T * B, H)[valid]  # (N, H)
    y_rows = batch.targets.ravel()[valid]  # (N,)

    token_loss, dLdV, dLds_rows, dLdc = _output_layer(batch, s_rows, y_rows)  # (N,), (C, H), (N, H), (C,)
    if padded:
        dLds = np.zeros((T * B, H), dtype=S.dtype)
        dLds[valid] = dLds_rows
        dLds = dLds.reshape(T, B, H)  # zero past each sequence's end
    else:
        dLds = dLds_rows.reshape(T, B, H)

    dtanh = 1.0 - S * S  # (T, B, H), tanh'(z_t) = 1 - tanh(z_t)**2
    backward_full = _loops(S)[1]
    dz = backward_full(W, dLds, dtanh) if K is None or K >= T - 1 else _backward_truncated(W, dLds, dtanh, K)
    # dz[k, b] = dL/dz_k of sequence b, summed over the outputs that reach step k;
    # zero past the sequence's end, where dLds is zero and nothing flows back.

    s_prev = np.concatenate([S0[None], S[:-1]])  # (T, B, H), s_{k-1}
    dLdW = dz.reshape(-1, H).T @ s_prev.reshape(-1, H)  # (H, TB) x (TB, H), sum_k outer(dz_k, s_{k-1})
    dz_rows = dz.reshape(T * B, H)[valid]  # (N, H)
    x_rows = X.ravel()[valid]
    dLdU = _sum_into_columns(dz_rows, x_rows, C)  # dLdU[:, x[k]] += dz[k]
    dLds0 = dz[0] @ W  # (B, H), W^T dz_0

    if B == 1:
        losses = np.array([token_loss.sum()])
    else:
        seq_of_row = np.broadcast_to(np.arange(B), (T, B)).ravel()[valid]
        losses = np.bincount(seq_of_row, weights=token_loss, minlength=B).astype(token_loss.dtype)
    loss = float(losses.sum())
    final_state = S[lengths - 1, np.arange(B)]  # (B, H)

    dLdb = None if batch.b is None else dz_rows.sum(axis=0)  # (H,), sum_k dz_k

    _check_finite(
        U,
        V,
        W,
        **{"the loss": loss, "the gradient flowing back through time": dz_rows, "dLdW": dLdW, "dLdU": dLdU[:, x_rows]},
        dLds0=dLds0,
        **_bias_gradient(dLdb),
    )
    return BatchGradients(
        dLdb=dLdb,
        dLdc=dLdc,
        loss=loss,
        losses=losses,
        lengths=lengths,
        dLdU=dLdU,
        dLdV=dLdV,
        dLdW=dLdW,
        dLds0=dLds0,
        final_state=final_state,
    )


def _bptt_one(batch: _Batch, K: int | None) -> BatchGradients:
    """``_bptt_unchecked`` for one short sequence, computed by service.kernel.bptt_one in one call."""
    x, y = batch.X[:, 0], batch.targets[:, 0]
    one = kernel.bptt_one(batch.U, batch.V, batch.W, x, y, batch.S0[0], batch.b, batch.c, K)
    dLds0 = one.dLds0[None]  # (1, H)
    if not one.finite:  # name what overflowed
        flowing: dict[str, np.ndarray | float] = {
            "the loss": one.loss,
            "the gradient flowing back through time": one.dz,
        }
        _check_finite(
            batch.U, batch.V, batch.W, **flowing, dLdW=one.dLdW, dLdU=one.dLdU[:, x], dLds0=dLds0,
            **_bias_gradient(one.dLdb),
        )  # fmt: skip
    return BatchGradients(
        dLdb=one.dLdb,
        dLdc=one.dLdc,
        loss=one.loss,
        losses=np.array([one.loss], dtype=one.token_loss.dtype),
        lengths=batch.lengths,
        dLdU=one.dLdU,
        dLdV=one.dLdV,
        dLdW=one.dLdW,
        dLds0=dLds0,
        final_state=one.S[-1:],  # (1, H)
    )


def _hidden_states(batch: _Batch) -> np.ndarray:
    """S[t] = tanh(U[:, X[t]] + W S[t-1] (+ b)) for every sequence, one loop over time.

    Returns (T, B, H). Rows past a sequence's end are computed (from padding
    id 0) and never used.
    """
    S: np.ndarray = batch.U.T[batch.X]  # (T, B, H): U[:, x_t] in S[t], overwritten in place by s_t
    if batch.b is not None:
        S += batch.b
    recur = _loops(S)[0]
    return recur(S, np.ascontiguousarray(batch.W.T), batch.S0)


def _recur(S: np.ndarray, WT: np.ndarray, S0: np.ndarray) -> np.ndarray:
    """S[t] = tanh(S[t] + W S[t-1]) in place, S[-1] = S0: (T, B, H), (H, H) W^T, (B, H)."""
    dot, add, tanh = np.dot, np.add, np.tanh  # local names: this loop is the hot path
    buf = np.empty_like(S0)
    h = S0
    for st in S:
        checkpoint()  # between time steps: past the request's deadline, stop (service.deadline)
        dot(h, WT, out=buf)  # (B, H) x (H, H): W s_{t-1}, each row
        add(st, buf, out=st)  # z_t
        tanh(st, out=st)  # s_t
        h = st
    return S


def _loops(S: np.ndarray) -> tuple[Loop, Loop]:
    """The (forward, full backward) loops for states S (T, B, H): numpy's, or service.kernel's
    compiled ones where they were measured faster (small B x H; ``use_kernel`` chooses)."""
    fast_forward, fast_backward = kernel.pays(S.shape[1], S.shape[2]) if _kernel else (False, False)
    return (
        kernel.recur if fast_forward else _recur,
        kernel.backward_full if fast_backward else _backward_full,
    )


class _OutputWeights(Protocol):
    """What the output layer reads of a request: ``_Batch``, and service.gated's inputs, which share it."""

    @property
    def V(self) -> np.ndarray: ...  # (C, H)

    @property
    def c(self) -> np.ndarray | None: ...  # (C,)


def _logits(batch: _OutputWeights, s_rows: np.ndarray) -> np.ndarray:
    """V s_t (+ c) for rows of states: (N, H) x (H, C) -> (N, C)."""
    a: np.ndarray = s_rows @ batch.V.T
    if batch.c is not None:
        a += batch.c
    return a


def _softmax(a: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Turn logits (N, C) into probabilities in place; return each row's -ln o[y].

    Stable for logits of any finite size: log o = (a - max a) - ln sum exp(a - max a),
    and after the shift the largest logit is 0, so exp cannot overflow.
    """
    a -= a.max(axis=1, keepdims=True)
    shifted_y = 0.0 if y is None else a[np.arange(len(a)), y]
    np.exp(a, out=a)
    z = a.sum(axis=1)  # (N,), >= 1
    a /= z[:, None]
    losses: np.ndarray = np.log(z) - shifted_y
    return losses


# Rows of the output layer computed at once (``_output_layer``): their (rows, C) exponentials stay under
# this many bytes. All N rows of a large batch at once were an (N, C) array mapped fresh and faulted in at
# every call (glibc maps arrays past 32 MiB) and streamed through memory five times: a batch of 4,000
# tokens at C = 8,000 (256 MB) took 484 ms, in chunks of 256 rows 413 ms (benchmarks/bench_output.py).
OUTPUT_CHUNK_BYTES = 16 << 20


def _output_layer(
    batch: _OutputWeights, s_rows: np.ndarray, y_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The output layer over rows of states s_t (N, H) with targets y (N,), in chunks of rows.

    Returns each row's -ln o_t[y_t] (N,), dLdV (C, H) = sum_t outer(delta_o[t], s_t), the error
    reaching each s_t from its output, V^T delta_o[t] (N, H), and dLdc (C,) = sum_t delta_o[t] (None
    without the bias c). delta_o = o - onehot(y) is dL/d(V s_t), the seed's delta_o (softmax and
    cross-entropy). With o_t = E_t / z_t (E the exponentials, z their row sums), the products take
    z_t delta_o[t] = E_t - z_t onehot(y_t), and the division by z_t moves onto their (n, H) sides: a
    pass over (n, C) saved.
    """
    N, H = s_rows.shape
    C = batch.V.shape[0]
    step = max(1, OUTPUT_CHUNK_BYTES // (C * s_rows.itemsize))
    token_loss = np.empty(N, s_rows.dtype)
    dLds_rows = np.empty((N, H), s_rows.dtype)
    dLdV: np.ndarray | None = None
    dLdc: np.ndarray | None = None
    for start in range(0, N, step):
        checkpoint()  # between chunks: past the request's deadline, stop (service.deadline)
        rows = slice(start, min(N, start + step))
        s = s_rows[rows]
        D, z, token_loss[rows] = _scaled_delta_o(batch, s, y_rows[rows])  # (n, C) z_t delta_o[t], (n,), (n,)
        r = 1 / z  # (n,)
        part = D.T @ (s * r[:, None])  # (C, n) x (n, H) -> (C, H)
        dLdV = part if dLdV is None else np.add(dLdV, part, out=dLdV)
        np.matmul(D, batch.V, out=dLds_rows[rows])  # (n, C) x (C, H) -> (n, H), z_t V^T delta_o[t]
        dLds_rows[rows] *= r[:, None]  # V^T delta_o[t]
        if batch.c is not None:
            c_part = r @ D  # (n,) x (n, C) -> (C,)
            dLdc = c_part if dLdc is None else np.add(dLdc, c_part, out=dLdc)
        del D  # before the next chunk's is made: one (n, C) array at a time
    assert dLdV is not None  # N >= 1
    return token_loss, dLdV, dLds_rows, dLdc


def _scaled_delta_o(
    batch: _OutputWeights, s_rows: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's delta_o = o - onehot(y) for rows of states, each row times its softmax's
    normaliser z: ``D = z[:, None] * delta_o`` (N, C), z (N,), and each row's loss -ln o[y] (N,).

    With E = exp(a) for logits a, o = E / z and z = sum_c E[c], so D = E - z onehot(y):
    no pass dividing (N, C) by z (the caller divides its (N, H) products), and no shift
    by the row's max as in ``_softmax`` (two passes more), wherever that is exact: z and
    E[y] in [tiny**0.5, tiny**-0.5], so that no exp overflowed and 1/z is a normal
    number (logits up to about 350 in float64, 43 in float32). Rows outside, or not
    finite, are computed again the shifted way (z = 1). The target's own term is kept
    out of the sum, so D[y] = -(z - E[y]) and the loss, ln(z / E[y]) = log1p((z - E[y]) / E[y]),
    have no cancellation: small losses keep their relative precision (C = 1 gives 0).
    """
    # In float32 the logits are computed as (C, N), V s_t in columns, and D is its (N, C) view: sgemm
    # measured 20% faster that way round at C = 8000 (dgemm 20% slower); the row sums are then a
    # matrix-vector product (measured faster than numpy's sum over the strided axis).
    f32 = s_rows.dtype == np.float32
    D = (batch.V @ s_rows.T).T if f32 else s_rows @ batch.V.T  # (N, C)
    if batch.c is not None:
        D += batch.c
    rows = np.arange(len(D))
    np.exp(D, out=D)
    e_y = D[rows, y]  # (N,), E[y]
    D[rows, y] = 0.0
    others: np.ndarray = D @ np.ones(D.shape[1], D.dtype) if f32 else D.sum(axis=1)  # (N,), z - E[y]
    D[rows, y] = -others  # E[y] - z
    z: np.ndarray = others + e_y
    with np.errstate(divide="ignore"):  # E[y] = 0: a row for the shifted path below
        losses: np.ndarray = np.log1p(others / e_y)
    low = _SUM_LOW[D.dtype.type]
    shifted = np.flatnonzero(~((e_y >= low) & (z <= 1 / low)))  # and NaN
    if len(shifted):
        o = _logits(batch, s_rows[shifted])  # (n, C), computed again
        losses[shifted] = _softmax(o, y[shifted])
        o[np.arange(len(shifted)), y[shifted]] -= 1.0
        D[shifted] = o
        z[shifted] = 1.0
    return D, z, losses


_SUM_LOW = {t: float(np.sqrt(np.finfo(t).tiny)) for t in (np.float64, np.float32)}  # _scaled_delta_o's range of z


def _backward_full(W: np.ndarray, dLds: np.ndarray, dtanh: np.ndarray) -> np.ndarray:
    """Exact BPTT, one pass backward over time, every sequence at once.

    The error reaching s_k is the output's own, dLds[k], plus what flows back
    from z_{k+1} through W:  dz_k = (dLds[k] + W^T dz_{k+1}) * (1 - s_k**2).
    """
    dz = np.empty_like(dLds)  # (T, B, H)
    carry = np.zeros_like(dLds[0])  # (B, H), W^T dz_{k+1}
    dot, add, mul = np.dot, np.add, np.multiply
    for k in range(len(dz) - 1, -1, -1):
        checkpoint()
        dzk = dz[k]
        add(dLds[k], carry, out=dzk)
        mul(dzk, dtanh[k], out=dzk)
        dot(dzk, W, out=carry)  # dz_k W = W^T dz_k, each row
    return dz


def _backward_truncated(W: np.ndarray, dLds: np.ndarray, dtanh: np.ndarray, K: int) -> np.ndarray:
    """The seed's truncated BPTT, one loop over the lags j = 0..K.

    ``delta[k]`` at lag j is the seed's ``delta_t`` for output t = k + j when
    its loop is at step k; every output moves back one step per lag at once.
    """
    delta: np.ndarray = dLds * dtanh  # (T, B, H), lag 0: delta at step k for output k
    dz = delta.copy()
    T = len(delta)
    for j in range(1, K + 1):
        checkpoint()
        # delta_k = (W^T delta_{k+1}) * (1 - s_k**2), for outputs t = k + j
        delta = delta[1:] @ W  # (T-j, B, H) x (H, H) -> (T-j, B, H)
        delta *= dtanh[: T - j]
        dz[: T - j] += delta
    return dz


def _sum_into_columns(dz: np.ndarray, x: np.ndarray, C: int) -> np.ndarray:
    """dLdU (H, C) with dLdU[:, x[k]] += dz[k]; repeated tokens accumulate."""
    H = dz.shape[1]
    if _kernel and dz.dtype in (np.float64, np.float32):
        if H * C * dz.itemsize < gated_kernel.STREAM_MIN_BYTES:
            return kernel.add_columns(np.zeros((H, C), dtype=dz.dtype), x, dz)  # one compiled pass (service.kernel)
        # Larger (6.4 MB at the tutorial's size): the distinct tokens' sums, then dLdU written once, zeros
        # included, by the gated engine's writer, not zeroed first and written again.
        return gated_kernel.sum_into_columns(dz, x, C)[0]
    dLdU = np.zeros((H, C), dtype=dz.dtype)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sums = np.add.reduceat(dz[order], starts, axis=0)  # (distinct tokens, H)
    dLdU[:, xs[starts]] = sums.T
    return dLdU


def _bias_gradient(dLdb: np.ndarray | None) -> dict[str, np.ndarray]:
    """dLdb, when there is one, for ``_check_finite``: a sum of finite dz_k can still overflow. (dLdc needs
    no check: it sums delta_o, |delta_o| <= 1 when the loss is finite, so |dLdc| <= N.)"""
    return {} if dLdb is None else {"dLdb": dLdb}


def _check_finite(U: np.ndarray, V: np.ndarray, W: np.ndarray, **parts: np.ndarray | float) -> None:
    """Raise ComputeError if the computation overflowed.

    Checking the small parts is enough: a finite loss means every row of the
    logits was finite (a NaN or infinite logit makes its row's log-softmax NaN),
    so |delta_o| <= 1, |s| <= 1 and |dLdV| <= N; dLdU is nonzero only in the
    columns x, passed here. ``parts`` are named as the user knows them ("the
    loss", "dLdW"); the message names the weight to scale and fits the dtype.
    """
    for name, value in parts.items():
        if not np.isfinite(value).all():
            sizes = {n: float(np.abs(a).max()) for n, a in (("U", U), ("V", V), ("W", W))}
            largest = max(sizes, key=lambda n: sizes[n])
            advice = (
                f"scale {largest} down, or compute in float64" if U.dtype == np.float32 else f"scale {largest} down"
            )
            raise ComputeError(
                f"the computation overflowed in {U.dtype}: {name} is not finite (the largest weight is "
                f"{largest}, magnitude {sizes[largest]:.3g}); {advice}",
                field=largest,
            )

"""Gated recurrent language models, GRU and LSTM, forward and exact BPTT, in numpy.

The vanilla model of ``service.engine`` with its tanh cell replaced by a gated
one; numpy and the standard library only. Dimension letters, used in every
shape comment below:

    T  sequence length (steps)      H  hidden units
    C  vocabulary size (classes)    B  batch (sequences)
    G  gates: 3 (GRU), 4 (LSTM)     N  predicted tokens in a batch
    K  truncation (lags kept)

Inputs are token ids, one-hot vectors in effect, so ``U[g] x_t`` is the column
``U[g, :, x_t]``. The weights are stacked by gate in PyTorch's order, so that
``weight_ih_l0.reshape(G, H, C)`` and ``weight_hh_l0.reshape(G, H, H)`` of an
``nn.GRU`` / ``nn.LSTM`` fed one-hot vectors pass as they are; ``b`` is its
``bias_ih`` and ``b_hh`` its ``bias_hh``, both (G, H).

GRU, gates r, z, n (Cho et al. 2014; the WildML tutorial's form, the reset
applied to the state before the product):

    r_t = sigma(U_r[:, x_t] + W_r s_{t-1} + b_r + bhh_r)
    z_t = sigma(U_z[:, x_t] + W_z s_{t-1} + b_z + bhh_z)
    n_t = tanh(U_n[:, x_t] + W_n (r_t * s_{t-1}) + b_n + bhh_n)
    s_t = (1 - z_t) * n_t + z_t * s_{t-1}

and with ``reset_after=True`` the cuDNN / ``torch.nn.GRU`` form

    n_t = tanh(U_n[:, x_t] + b_n + r_t * (W_n s_{t-1} + bhh_n)).

LSTM, gates i, f, g, o (Hochreiter & Schmidhuber 1997 with the forget gate of
Gers et al. 2000, no peepholes; ``torch.nn.LSTM``):

    i_t = sigma(U_i[:, x_t] + W_i s_{t-1} + b_i + bhh_i)      f_t, o_t likewise
    g_t = tanh(U_g[:, x_t] + W_g s_{t-1} + b_g + bhh_g)
    c_t = f_t * c_{t-1} + i_t * g_t                           cell state
    s_t = o_t * tanh(c_t)                                     hidden state

Both: ``o_t = softmax(V s_t + c)``, ``L = sum_t -ln o_t[y_t]``; ``s_{-1} = s0``
and ``c_{-1} = c0``, zeros when omitted.

``bptt`` returns L and its gradients for one sequence, ``bptt_batch`` the sums
over B sequences of different lengths (one computation, the batch in the rows
of every matrix product). With ``bptt_truncate=None`` the gradients are exact
(one backward pass over time); with an integer K they are the seed's truncated
gradients: the error of output t flows back through steps t, t-1, ...,
max(0, t-K) and no further, through s and (LSTM) through c alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import engine, gated_kernel
from .deadline import checkpoint
from .engine import _check_clip, _check_tokens, _check_truncate, _dims, lag_summary
from .engine import _output_layer as engine_output_layer
from .errors import ComputeError, InputError

__all__ = [
    "GATES",
    "Cell",
    "GatedBatchGradients",
    "GatedGradients",
    "GatedTrace",
    "bptt",
    "bptt_batch",
    "loss",
    "trace",
]

FloatArray: TypeAlias = NDArray[np.floating[Any]]
IntArray: TypeAlias = NDArray[np.intp]
Cell: TypeAlias = Literal["gru", "lstm"]
States: TypeAlias = Sequence[ArrayLike | None] | ArrayLike | None

GATES: dict[str, tuple[str, ...]] = {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
"""The gates of each cell, in the order they are stacked along G."""


@dataclass(frozen=True)
class GatedGradients:
    """The loss of one sequence and its gradients, as ``bptt`` returns them.

    Attributes
    ----------
    loss : float
        Summed cross-entropy ``sum_t -ln o_t[y_t]``.
    tokens : int
        T, the number of predicted tokens.
    dLdU : (G, H, C) ndarray
    dLdV : (C, H) ndarray
    dLdW : (G, H, H) ndarray
    dLds0 : (H,) ndarray
        Gradient with respect to the initial hidden state ``s0``.
    final_state : (H,) ndarray
        ``s_{T-1}``, the hidden state after the last token.
    dLdb, dLdb_hh : (G, H) ndarrays or None
        Gradients of the biases ``b`` and ``b_hh``; None when not given.
    dLdc : (C,) ndarray or None
        Gradient of the output bias ``c``; None when not given.
    dLdc0 : (H,) ndarray or None
        LSTM: gradient with respect to the initial cell state ``c0``; GRU: None.
    final_cell : (H,) ndarray or None
        LSTM: ``c_{T-1}``, the cell state after the last token; GRU: None.
    clipped : dict or None
        With ``clip``: how many entries of each parameter's gradient were
        clipped to [-clip, clip]; None without.
    """

    loss: float
    tokens: int
    dLdU: FloatArray
    dLdV: FloatArray
    dLdW: FloatArray
    dLds0: FloatArray
    final_state: FloatArray
    dLdb: FloatArray | None = None
    dLdb_hh: FloatArray | None = None
    dLdc: FloatArray | None = None
    dLdc0: FloatArray | None = None
    final_cell: FloatArray | None = None
    clipped: dict[str, int] | None = None

    @property
    def mean_loss(self) -> float:
        """Loss per predicted token, ``loss / T``."""
        return self.loss / self.tokens


@dataclass(frozen=True)
class GatedBatchGradients:
    """Losses and summed gradients of B sequences, as ``bptt_batch`` returns them.

    Attributes
    ----------
    loss : float
        Sum of ``losses``.
    losses : (B,) ndarray
        Each sequence's summed cross-entropy.
    lengths : (B,) ndarray
        Each sequence's T.
    dLdU, dLdV, dLdW : (G, H, C), (C, H), (G, H, H) ndarrays
        Gradients of ``loss``: the sums of the sequences' gradients.
    dLds0 : (B, H) ndarray
        Each sequence's gradient with respect to its initial hidden state.
    final_state : (B, H) ndarray
        Each sequence's last hidden state.
    dLdb, dLdb_hh, dLdc, clipped
        As in ``GatedGradients``.
    dLdc0, final_cell : (B, H) ndarrays or None
        LSTM: per sequence, as in ``GatedGradients``; GRU: None.
    """

    loss: float
    losses: FloatArray
    lengths: IntArray
    dLdU: FloatArray
    dLdV: FloatArray
    dLdW: FloatArray
    dLds0: FloatArray
    final_state: FloatArray
    dLdb: FloatArray | None = None
    dLdb_hh: FloatArray | None = None
    dLdc: FloatArray | None = None
    dLdc0: FloatArray | None = None
    final_cell: FloatArray | None = None
    clipped: dict[str, int] | None = None

    @property
    def tokens(self) -> int:
        """N, the number of predicted tokens in the batch."""
        return int(self.lengths.sum())

    @property
    def mean_loss(self) -> float:
        """Loss per predicted token over the whole batch."""
        return self.loss / self.tokens


@dataclass(frozen=True)
class GatedTrace:
    """What full BPTT passes back through one sequence, state by state.

    Attributes
    ----------
    dLds : (T, H) ndarray
        ``dLds[k]`` = dL/ds_k, the gradient of the whole loss with respect to
        the hidden state after step k (its own output's error plus all that
        flows back from later steps).
    dLdc : (T, H) ndarray or None
        LSTM: ``dLdc[k]`` = dL/dc_k, with respect to the cell state; GRU: None.
    norms : (T, T) ndarray or None
        ``norms[t, j]`` = ||dE_t/ds_{t-j}||, E_t the loss of output t alone:
        how much of output t's error reaches j steps back. NaN for j > t.
        None when not asked for.
    """

    dLds: FloatArray
    dLdc: FloatArray | None
    norms: FloatArray | None

    def lag_summary(self) -> list[dict[str, float | int]]:
        """Per lag j: how many outputs reach back j steps, and the mean and
        largest ||dE_t/ds_{t-j}||: the vanishing (or exploding) curve."""
        if self.norms is None:
            raise ValueError("lag_summary needs the norms: call trace(..., norms=True)")
        return lag_summary(self.norms)


def bptt(
    cell: Cell,
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    bptt_truncate: int | None = None,
    s0: ArrayLike | None = None,
    c0: ArrayLike | None = None,
    b: ArrayLike | None = None,
    b_hh: ArrayLike | None = None,
    c: ArrayLike | None = None,
    reset_after: bool = False,
    clip: float | None = None,
) -> GatedGradients:
    """Loss and backpropagation-through-time gradients of one sequence.

    Parameters
    ----------
    cell : "gru" or "lstm"
    U : (G, H, C) ndarray
        Input weights, stacked by gate (``GATES[cell]``). float64, or float32
        to compute everything in float32.
    V : (C, H) ndarray
        Output weights.
    W : (G, H, H) ndarray
        Recurrent weights, stacked by gate.
    x : (T,) integer ndarray
        Input token ids in [0, C).
    y : (T,) integer ndarray
        Target token ids; ``y[t]`` is the token that should follow ``x[t]``.
    bptt_truncate : int >= 0 or None
        None (default): exact gradients. K: the seed's truncated BPTT, where the
        error of output t reaches steps t, ..., max(0, t - K) only.
    s0 : (H,) ndarray, optional
        Initial hidden state; zeros when omitted.
    c0 : (H,) ndarray, optional
        LSTM only: initial cell state; zeros when omitted.
    b, b_hh : (G, H) ndarrays, optional
        Input-side and hidden-side biases (PyTorch's ``bias_ih``, ``bias_hh``).
        They add up, except in the GRU's ``reset_after`` form, where ``b_hh[2]``
        is inside the product with r.
    c : (C,) ndarray, optional
        Output bias: ``o_t = softmax(V s_t + c)``.
    reset_after : bool
        GRU only: False (default) for the tutorial's form, True for
        ``torch.nn.GRU``'s (see the module docstring).
    clip : float > 0, optional
        Clip every entry of dLdU, dLdV, dLdW (dLdb, dLdb_hh, dLdc) to
        [-clip, clip] after computing them; counted in ``clipped``.

    Returns
    -------
    GatedGradients

    Raises
    ------
    InputError
        Unknown cell, shapes that disagree, token ids out of range, a negative
        truncation, a bad clip.
    ComputeError
        The loss or a gradient is not finite (weights too large for the dtype).
    """
    K = _check_truncate(bptt_truncate)
    clip = _check_clip(clip)
    inputs = _Inputs.one(cell, U, V, W, x, y, s0=s0, c0=c0, b=b, b_hh=b_hh, c=c, reset_after=reset_after)
    g = _bptt(inputs, K, clip)
    return GatedGradients(
        loss=g.loss,
        tokens=g.tokens,
        dLdU=g.dLdU,
        dLdV=g.dLdV,
        dLdW=g.dLdW,
        dLds0=g.dLds0[0],
        final_state=g.final_state[0],
        dLdb=g.dLdb,
        dLdb_hh=g.dLdb_hh,
        dLdc=g.dLdc,
        dLdc0=None if g.dLdc0 is None else g.dLdc0[0],
        final_cell=None if g.final_cell is None else g.final_cell[0],
        clipped=g.clipped,
    )


def bptt_batch(
    cell: Cell,
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    xs: Sequence[ArrayLike],
    ys: Sequence[ArrayLike],
    *,
    bptt_truncate: int | None = None,
    s0: States = None,
    c0: States = None,
    b: ArrayLike | None = None,
    b_hh: ArrayLike | None = None,
    c: ArrayLike | None = None,
    reset_after: bool = False,
    clip: float | None = None,
) -> GatedBatchGradients:
    """Losses and summed gradients of B sequences, which may differ in length.

    The same as B calls of ``bptt`` summed, computed at once: the recurrence
    is (B, H)-by-(H, GH) per step, shorter sequences masked; the input side is
    one gather and the output layer one (N, H)-by-(H, C) product over the N
    real tokens.

    Parameters
    ----------
    cell, U, V, W : as for ``bptt``
    xs, ys : B integer ndarrays each
        ``xs[b]`` and ``ys[b]`` of one length T_b >= 1.
    s0, c0 : (B, H) ndarray, or B of (H,) ndarrays or None, optional
        Initial hidden (and, LSTM, cell) states; zeros where omitted.
    bptt_truncate, b, b_hh, c, reset_after, clip : as for ``bptt``

    Returns
    -------
    GatedBatchGradients
    """
    K = _check_truncate(bptt_truncate)
    clip = _check_clip(clip)
    inputs = _Inputs.of(cell, U, V, W, xs, ys, s0, c0, b=b, b_hh=b_hh, c=c, reset_after=reset_after, batched=True)
    return _bptt(inputs, K, clip)


def loss(
    cell: Cell,
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None = None,
    c0: ArrayLike | None = None,
    b: ArrayLike | None = None,
    b_hh: ArrayLike | None = None,
    c: ArrayLike | None = None,
    reset_after: bool = False,
) -> float:
    """The loss ``sum_t -ln o_t[y_t]`` of one sequence, forward pass only (for central differences);
    arguments as for ``bptt``. Not finite when the weights overflow the dtype: no error is raised."""
    inputs = _Inputs.one(cell, U, V, W, x, y, s0=s0, c0=c0, b=b, b_hh=b_hh, c=c, reset_after=reset_after)
    with np.errstate(over="ignore", invalid="ignore"):
        fwd = _forward(inputs)
        return float(_output_layer(inputs, fwd.S).token_loss.sum())


def trace(
    cell: Cell,
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None = None,
    c0: ArrayLike | None = None,
    b: ArrayLike | None = None,
    b_hh: ArrayLike | None = None,
    c: ArrayLike | None = None,
    reset_after: bool = False,
    norms: bool = True,
) -> GatedTrace:
    """dL/ds_k (and, LSTM, dL/dc_k) at every step of one sequence, from full BPTT.

    With ``norms`` (default), also ||dE_t/ds_{t-j}|| for every output t and
    lag j, which costs O(T^2 H) time and O(T^2) memory: meant for learning on
    small problems, beside ``bptt``. Arguments as for ``bptt``.
    """
    inputs = _Inputs.one(cell, U, V, W, x, y, s0=s0, c0=c0, b=b, b_hh=b_hh, c=c, reset_after=reset_after)
    with np.errstate(over="ignore", invalid="ignore"):
        fwd = _forward(inputs)
        out = _output_layer(inputs, fwd.S)
        T = len(fwd.S)
        dLds = np.empty_like(fwd.S)  # (T, 1, H), total dL/ds_k
        dLdc = None if fwd.CS is None else np.empty_like(fwd.S)  # (T, 1, H), total dL/dc_k
        _backward_full(fwd, out.dLds, record_ds=dLds, record_dc=dLdc)
        lag_norms = None
        if norms:
            lag_norms = np.full((T, T), np.nan)
            _backward_lags(fwd, out.dLds, T - 1, norms=lag_norms)
    return GatedTrace(dLds=dLds[:, 0], dLdc=None if dLdc is None else dLdc[:, 0], norms=lag_norms)


# --- Inputs --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """Checked inputs, sequences padded at the end into time-major (T, B) arrays."""

    cell: Cell
    reset_after: bool
    U: FloatArray  # (G, H, C)
    V: FloatArray  # (C, H)
    W: FloatArray  # (G, H, H)
    X: IntArray  # (T, B) input ids, 0 past each sequence's end
    Y: IntArray  # (T, B) target ids, 0 past each sequence's end
    S0: FloatArray  # (B, H)
    C0: FloatArray | None  # (B, H), LSTM only
    lengths: IntArray  # (B,)
    b: FloatArray | None  # (G, H)
    b_hh: FloatArray | None  # (G, H)
    c: FloatArray | None  # (C,)

    @classmethod
    def one(
        cls,
        cell: str,
        U: ArrayLike,
        V: ArrayLike,
        W: ArrayLike,
        x: ArrayLike,
        y: ArrayLike,
        *,
        s0: ArrayLike | None,
        c0: ArrayLike | None,
        b: ArrayLike | None,
        b_hh: ArrayLike | None,
        c: ArrayLike | None,
        reset_after: bool,
    ) -> _Inputs:
        """One sequence, as ``bptt``, ``loss`` and ``trace`` take it."""
        s0s = None if s0 is None else [s0]
        c0s = None if c0 is None else [c0]
        return cls.of(cell, U, V, W, [x], [y], s0s, c0s, b=b, b_hh=b_hh, c=c, reset_after=reset_after)

    @classmethod
    def of(
        cls,
        cell: str,
        U: ArrayLike,
        V: ArrayLike,
        W: ArrayLike,
        xs: Sequence[ArrayLike],
        ys: Sequence[ArrayLike],
        s0s: States,
        c0s: States,
        *,
        b: ArrayLike | None,
        b_hh: ArrayLike | None,
        c: ArrayLike | None,
        reset_after: bool,
        batched: bool = False,
    ) -> _Inputs:
        """Check and pad; messages name ``sequences[b].x`` when ``batched``, else ``x``."""
        if cell not in GATES:
            raise InputError(f"cell must be 'gru' or 'lstm', got {cell!r}", field="cell")
        kind: Cell = "gru" if cell == "gru" else "lstm"
        if reset_after and kind != "gru":
            raise InputError(
                f"reset_after is an option of cell 'gru' only, got reset_after=True for cell {kind!r}",
                field="reset_after",
            )
        dtype = np.float32 if np.asarray(U).dtype == np.float32 else np.float64
        Ua, Va, Wa = (_floats(a, dtype) for a in (U, V, W))
        H, C = _check_weights(kind, Ua, Va, Wa)
        G = len(GATES[kind])
        gate_bias = f"be G x H = {G} x {H} for cell {kind!r}"
        b_in = _vector("b", b, (G, H), gate_bias, dtype)
        b_hid = _vector("b_hh", b_hh, (G, H), gate_bias, dtype)
        c_out = _vector("c", c, (C,), f"have C = {C} numbers", dtype)

        B = len(xs)
        if B == 0:
            raise InputError("sequences must hold at least one sequence, got none", field="sequences")
        if len(ys) != B:
            raise InputError(f"ys must hold one target sequence per input sequence: {B}, got {len(ys)}", field="ys")
        prefix = "sequences[{}]." if batched else ""
        x_list = [np.asarray(x) for x in xs]
        y_list = [np.asarray(y) for y in ys]
        for i, (x, y) in enumerate(zip(x_list, y_list, strict=True)):
            where = prefix.format(i)
            _check_tokens(f"{where}x", x, C)
            _check_tokens(f"{where}y", y, C)
            if len(y) != len(x):
                raise InputError(
                    f"{where}y must have one target per input token: len({where}x) = {len(x)}, "
                    f"got len({where}y) = {len(y)}",
                    field=f"{where}y",
                )
        S0 = _states("s0", s0s, B, H, kind, prefix, dtype)
        if kind == "gru" and c0s is not None:
            raise InputError("c0 is the LSTM's initial cell state: cell 'gru' has none, got one", field="c0")
        C0 = _states("c0", c0s, B, H, kind, prefix, dtype) if kind == "lstm" else None

        lengths = np.array([len(x) for x in x_list], dtype=np.intp)
        T = int(lengths.max())
        X = np.zeros((T, B), dtype=np.intp)
        Y = np.zeros((T, B), dtype=np.intp)
        for i in range(B):
            X[: lengths[i], i] = x_list[i]
            Y[: lengths[i], i] = y_list[i]
        return cls(
            cell=kind,
            reset_after=bool(reset_after),
            U=Ua,
            V=Va,
            W=Wa,
            X=X,
            Y=Y,
            S0=S0,
            C0=C0,
            lengths=lengths,
            b=b_in,
            b_hh=b_hid,
            c=c_out,
        )


def _check_weights(cell: Cell, U: FloatArray, V: FloatArray, W: FloatArray) -> tuple[int, int]:
    """Check that U is (G, H, C), V is (C, H) and W is (G, H, H); return (H, C)."""
    G = len(GATES[cell])
    gates = ", ".join(GATES[cell])
    if U.ndim != 3 or U.shape[0] != G:
        raise InputError(
            f"U must be G x H x C with G = {G} gates ({gates}) for cell {cell!r}, got {_dims(U)}", field="U"
        )
    _, H, C = U.shape
    if H == 0 or C == 0:
        raise InputError(f"U must be G x H x C with H >= 1 and C >= 1, got {_dims(U)}", field="U")
    if V.shape != (C, H):
        raise InputError(
            f"V must be C x H = {C} x {H} (U is G x H x C = {G} x {H} x {C} for cell {cell!r}), got {_dims(V)}",
            field="V",
        )
    if W.shape != (G, H, H):
        raise InputError(f"W must be G x H x H = {G} x {H} x {H} for cell {cell!r}, got {_dims(W)}", field="W")
    return H, C


def _floats(a: ArrayLike, dtype: type[np.floating[Any]]) -> FloatArray:
    return np.asarray(a, dtype=dtype)


def _vector(
    name: str, value: ArrayLike | None, shape: tuple[int, ...], expected: str, dtype: type[np.floating[Any]]
) -> FloatArray | None:
    if value is None:
        return None
    a = np.asarray(value, dtype=dtype)
    if a.shape != shape:
        raise InputError(f"{name} must {expected}, got {_dims(a)}", field=name)
    return a


def _states(
    name: str, given: States, B: int, H: int, cell: Cell, prefix: str, dtype: type[np.floating[Any]]
) -> FloatArray:
    """(B, H) initial states from None, a (B, H) array or B of (H,) arrays or None."""
    out = np.zeros((B, H), dtype=dtype)
    if given is None:
        return out
    rows: Sequence[ArrayLike | None]
    if isinstance(given, np.ndarray):
        rows = list(given)  # (B, H): its rows
    elif isinstance(given, Sequence):
        rows = given
    else:
        raise InputError(f"{name} must be B x H or a list of B states, got {type(given).__name__}", field=name)
    if len(rows) != B:
        raise InputError(f"{name} must hold one state per sequence, B = {B}, got {len(rows)}", field=name)
    for i, row in enumerate(rows):
        if row is None:
            continue
        a = np.asarray(row, dtype=dtype)
        where = f"{prefix.format(i)}{name}"
        if a.shape != (H,):
            raise InputError(f"{where} must have H = {H} numbers for cell {cell!r}, got {_dims(a)}", field=where)
        out[i] = a
    return out


# --- Forward, and one step back, of each cell ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Forward:
    """What the backward pass needs of the forward pass; rows past a sequence's end are zero."""

    cell: Cell
    reset_after: bool
    W: FloatArray  # (G, H, H)
    gates: FloatArray  # (T, B, G, H): r, z, n (GRU) or i, f, g, o (LSTM), activated
    S: FloatArray  # (T, B, H), s_t
    S_prev: FloatArray  # (T, B, H), s_{t-1}
    HN: FloatArray | None  # (T, B, H), GRU reset_after: W_n s_{t-1} + bhh_n
    CS: FloatArray | None  # (T, B, H), LSTM: c_t
    C_prev: FloatArray | None  # (T, B, H), LSTM: c_{t-1}
    TC: FloatArray | None  # (T, B, H), LSTM: tanh(c_t)
    final_state: FloatArray  # (B, H)
    final_cell: FloatArray | None  # (B, H)

    def back(
        self, k: int | slice, ds: FloatArray, dc: FloatArray | None, out: FloatArray
    ) -> tuple[FloatArray, FloatArray | None]:
        """One step backward at step(s) k: from dL/ds_k (and dL/dc_k from step k+1) to the
        pre-activations of step k, written to ``out`` (..., B, G, H), and to s_{k-1} (and c_{k-1}).

        Linear in (ds, dc), so the same code serves one error at a time (full BPTT) and one
        lag for all steps at once (truncated BPTT, trace): ``k`` an int or a slice of steps.
        """
        if self.cell == "gru":
            return _gru_back(self, k, ds, out), None
        assert dc is not None
        return _lstm_back(self, k, ds, dc, out)


def _forward(inputs: _Inputs) -> _Forward:
    """Run the cell over every sequence at once, one loop over time."""
    U, W, X = inputs.U, inputs.W, inputs.X
    T, B = X.shape
    # The input side of every step as one gather: A[t, b] = U[:, :, x_t] (+ biases), (G, H).
    # Gathered from U as it is: a transposed copy of all of U first cost more than the rest of the
    # forward pass at C = 8000 (25 MB copied for the T columns read).
    A = np.ascontiguousarray(U[:, :, X].transpose(2, 3, 0, 1))  # (G, H, T, B) -> (T, B, G, H)
    if inputs.b is not None:
        A += inputs.b
    bhh_n = None  # GRU reset_after: bhh_n stays inside the product with r
    if inputs.b_hh is not None:
        if inputs.cell == "gru" and inputs.reset_after:
            A[..., :2, :] += inputs.b_hh[:2]
            bhh_n = inputs.b_hh[2]
        else:
            A += inputs.b_hh
    HN = CS = C_prev = TC = final_cell = None
    compiled = _compiled(A.shape)
    if inputs.cell == "gru":
        gru_forward = gated_kernel.gru_forward if compiled else _gru_forward
        S, HN = gru_forward(A, W, inputs.S0, inputs.reset_after, bhh_n)
    else:
        assert inputs.C0 is not None
        if compiled:
            S, CS, TC = gated_kernel.lstm_forward(A, W, inputs.S0, inputs.C0)  # and tanh(c_t)
        else:
            S, CS = _lstm_forward(A, W, inputs.S0, inputs.C0)

    rows, cols = inputs.lengths - 1, np.arange(B)
    final_state = S[rows, cols]  # (B, H), copies
    if CS is not None:
        final_cell = CS[rows, cols]
    if inputs.lengths.min() < T:
        # Steps past a sequence's end were computed from padding id 0; zero them so that
        # nothing (not even an overflow there) reaches the real steps in the backward pass.
        pad = np.arange(T)[:, None] >= inputs.lengths[None, :]  # (T, B)
        for arr in (A, S, HN, CS, TC):
            if arr is not None:
                arr[pad] = 0.0
    S_prev = np.concatenate([inputs.S0[None], S[:-1]])  # (T, B, H)
    if CS is not None:
        assert inputs.C0 is not None
        C_prev = np.concatenate([inputs.C0[None], CS[:-1]])  # (T, B, H)
        if TC is None:
            TC = np.tanh(CS)
    return _Forward(
        cell=inputs.cell,
        reset_after=inputs.reset_after,
        W=W,
        gates=A,
        S=S,
        S_prev=S_prev,
        HN=HN,
        CS=CS,
        C_prev=C_prev,
        TC=TC,
        final_state=final_state,
        final_cell=final_cell,
    )


def _compiled(shape: tuple[int, ...]) -> bool:
    """Whether the per-step loops of gates of this (T, B, G, H) shape run compiled (service.gated_kernel):
    where they were measured faster, when the engine's kernel is numba (``engine.use_kernel``)."""
    _, B, G, H = shape
    return engine.kernel_in_use() == "numba" and gated_kernel.pays(B, G, H)


def _gru_forward(
    A: FloatArray, W: FloatArray, S0: FloatArray, reset_after: bool, bhh_n: FloatArray | None
) -> tuple[FloatArray, FloatArray | None]:
    """The GRU over time. A (T, B, 3, H) holds the input side and is overwritten by r, z, n.

    Returns S (T, B, H) and, with ``reset_after``, HN (T, B, H) = W_n s_{t-1} + bhh_n.
    """
    T, B, _, H = A.shape
    W_rzT = np.ascontiguousarray(W[:2].reshape(2 * H, H).T)  # (H, 2H)
    W_nT = np.ascontiguousarray(W[2].T)  # (H, H)
    S = np.empty((T, B, H), dtype=A.dtype)
    HN = np.empty((T, B, H), dtype=A.dtype) if reset_after else None
    h = S0  # (B, H), s_{t-1}
    for t in range(T):
        checkpoint()  # the request's deadline (service.deadline)
        a = A[t]  # (B, 3, H): the input side, overwritten by r_t, z_t, n_t
        a[:, :2] += (h @ W_rzT).reshape(B, 2, H)  # + W_r s_{t-1}, W_z s_{t-1}
        _sigmoid(a[:, :2])  # r_t, z_t = sigma(...)
        r, z = a[:, 0], a[:, 1]
        if HN is not None:
            hn = HN[t]
            np.dot(h, W_nT, out=hn)  # W_n s_{t-1}
            if bhh_n is not None:
                hn += bhh_n  # + bhh_n
            a[:, 2] += r * hn  # a_n = U_n x_t + b_n + r_t * (W_n s_{t-1} + bhh_n)
        else:
            a[:, 2] += (r * h) @ W_nT  # a_n = U_n x_t + W_n (r_t * s_{t-1}) + b_n + bhh_n
        n = np.tanh(a[:, 2], out=a[:, 2])  # n_t = tanh(a_n)
        np.add((1.0 - z) * n, z * h, out=S[t])  # s_t = (1 - z_t) * n_t + z_t * s_{t-1}
        h = S[t]
    return S, HN


def _gru_back(fwd: _Forward, k: int | slice, ds: FloatArray, out: FloatArray) -> FloatArray:
    """The GRU's step k backward: dL/ds_k (..., B, H) -> dL/da (..., B, 3, H) in ``out``; returns dL/ds_{k-1}."""
    G = fwd.gates[k]  # (..., B, 3, H)
    r, z, n = G[..., 0, :], G[..., 1, :], G[..., 2, :]
    h = fwd.S_prev[k]  # (..., B, H), s_{k-1}
    W = fwd.W
    H = W.shape[-1]
    # s = (1 - z) * n + z * h:  ds/dn = 1 - z,  ds/dz = h - n,  ds/dh = z (directly)
    # n = tanh(a_n):  tanh'(a_n) = 1 - n**2;  z = sigma(a_z):  sigma'(a_z) = z (1 - z)
    da_n = ds * (1.0 - z) * (1.0 - n * n)  # (..., B, H), dL/da_n
    out[..., 1, :] = ds * (h - n) * z * (1.0 - z)  # dL/da_z
    ds_prev = ds * z  # (..., B, H), through z * s_{k-1}
    if fwd.HN is not None:
        # reset_after: a_n = U_n x + b_n + r * hn,  hn = W_n h + bhh_n
        dhn = da_n * r  # dL/dhn
        dr = da_n * fwd.HN[k]  # dL/dr
        ds_prev += dhn @ W[2]  # (..., B, H) x (H, H): W_n^T dhn, each row
    else:
        # a_n = U_n x + W_n (r * h) + b_n
        drh = da_n @ W[2]  # (..., B, H) x (H, H): dL/d(r * h) = W_n^T da_n
        dr = drh * h
        ds_prev += drh * r
    out[..., 0, :] = dr * r * (1.0 - r)  # dL/da_r, sigma'(a_r) = r (1 - r)
    out[..., 2, :] = da_n
    # a_r, a_z = W_r h + ..., W_z h + ...:  dL/dh += W_r^T da_r + W_z^T da_z
    da_rz = out[..., :2, :].reshape((*out.shape[:-2], 2 * H))  # (..., B, 2H)
    ds_prev += da_rz @ W[:2].reshape(2 * H, H)  # (..., B, 2H) x (2H, H)
    return ds_prev


def _lstm_forward(A: FloatArray, W: FloatArray, S0: FloatArray, C0: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The LSTM over time. A (T, B, 4, H) holds the input side and is overwritten by i, f, g, o.

    Returns S (T, B, H) and the cell states CS (T, B, H).
    """
    T, B, _, H = A.shape
    WT = np.ascontiguousarray(W.reshape(4 * H, H).T)  # (H, 4H)
    S = np.empty((T, B, H), dtype=A.dtype)
    CS = np.empty((T, B, H), dtype=A.dtype)
    h, cp = S0, C0  # (B, H), s_{t-1} and c_{t-1}
    for t in range(T):
        checkpoint()  # the request's deadline (service.deadline)
        a = A[t]  # (B, 4, H): the input side, overwritten by i_t, f_t, g_t, o_t
        a += (h @ WT).reshape(B, 4, H)  # + W_g s_{t-1} for every gate g
        _sigmoid(a[:, :2])  # i_t, f_t = sigma(...)
        np.tanh(a[:, 2], out=a[:, 2])  # g_t = tanh(...)
        _sigmoid(a[:, 3])  # o_t = sigma(...)
        cs = CS[t]
        np.multiply(a[:, 1], cp, out=cs)
        cs += a[:, 0] * a[:, 2]  # c_t = f_t * c_{t-1} + i_t * g_t
        np.tanh(cs, out=S[t])
        S[t] *= a[:, 3]  # s_t = o_t * tanh(c_t)
        h, cp = S[t], cs
    return S, CS


def _lstm_back(
    fwd: _Forward, k: int | slice, ds: FloatArray, dc: FloatArray, out: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The LSTM's step k backward: dL/ds_k and what reaches c_k from c_{k+1} (..., B, H) -> dL/da
    (..., B, 4, H) in ``out``; returns dL/ds_{k-1} and dL/dc_{k-1}."""
    assert fwd.C_prev is not None and fwd.TC is not None
    G = fwd.gates[k]  # (..., B, 4, H)
    i, f, g, o = G[..., 0, :], G[..., 1, :], G[..., 2, :], G[..., 3, :]
    tc = fwd.TC[k]  # (..., B, H), tanh(c_k)
    W = fwd.W
    H = W.shape[-1]
    # s = o * tanh(c):  ds/do = tanh(c),  ds/dc = o (1 - tanh(c)**2), added to what c_{k+1} sends
    dc = dc + ds * o * (1.0 - tc * tc)  # (..., B, H), dL/dc_k
    # c = f * c_prev + i * g:  dc/di = g,  dc/df = c_prev,  dc/dg = i,  dc/dc_prev = f
    out[..., 0, :] = dc * g * i * (1.0 - i)  # dL/da_i, sigma' = i (1 - i)
    out[..., 1, :] = dc * fwd.C_prev[k] * f * (1.0 - f)  # dL/da_f
    out[..., 2, :] = dc * i * (1.0 - g * g)  # dL/da_g, tanh' = 1 - g**2
    out[..., 3, :] = ds * tc * o * (1.0 - o)  # dL/da_o
    dc_prev = dc * f  # dL/dc_{k-1}, through f * c_{k-1}
    # a_g = U_g x + W_g s_{k-1} + ...:  dL/ds_{k-1} = sum_g W_g^T da_g
    ds_prev = out.reshape((*out.shape[:-2], 4 * H)) @ W.reshape(4 * H, H)  # (..., B, 4H) x (4H, H)
    return ds_prev, dc_prev


def _sigmoid(a: FloatArray) -> None:
    """a <- sigma(a) = 1 / (1 + exp(-a)), in place (exp may overflow to inf: sigma -> 0)."""
    # Not np.negative(a, out=a): numpy 2.4 reads a float32 (B, 1) view of stride (16, 4) at the wrong
    # stride in place (the LSTM's o gate at H = 1); a multiplication by -1 is as exact.
    np.multiply(a, -1, out=a)
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)


@dataclass(frozen=True)
class _Output:
    """The output layer over the N real tokens, all at once."""

    token_loss: FloatArray  # (N,), -ln o_t[y_t]
    dLdV: FloatArray  # (C, H)
    dLdc: FloatArray | None  # (C,), sum_t delta_o[t]; None without the output bias c
    dLds: FloatArray  # (T, B, H), V^T delta_o: the error reaching s_t from o_t; zero past the ends
    valid: NDArray[np.bool_] | slice  # which of the T * B rows (t, b) are real tokens


def _output_layer(inputs: _Inputs, S: FloatArray) -> _Output:
    T, B, H = S.shape
    padded = inputs.lengths.min() < T
    valid = (np.arange(T)[:, None] < inputs.lengths[None, :]).ravel() if padded else slice(None)
    s_rows = S.reshape(T * B, H)[valid]  # (N, H)
    y_rows = inputs.Y.ravel()[valid]  # (N,)
    # The vanilla cell's output layer: -ln o_t[y_t], dLdV, V^T delta_o[t] and dLdc, delta_o[t] = o_t - onehot(y_t)
    token_loss, dLdV, dLds_rows, dLdc = engine_output_layer(inputs, s_rows, y_rows)  # (N,), (C, H), (N, H), (C,)
    if padded:
        dLds = np.zeros((T * B, H), dtype=S.dtype)
        dLds[valid] = dLds_rows
    else:
        dLds = dLds_rows
    return _Output(token_loss=token_loss, dLdV=dLdV, dLdc=dLdc, dLds=dLds.reshape(T, B, H), valid=valid)


# --- Backward ------------------------------------------------------------------------------------------------------


def _backward_full(
    fwd: _Forward,
    dLds: FloatArray,
    *,
    record_ds: FloatArray | None = None,
    record_dc: FloatArray | None = None,
    compiled: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Exact BPTT, one pass backward over time, every sequence at once.

    The error reaching s_k is the output's own, dLds[k], plus what flows back from
    step k+1; for the LSTM, c_k also receives what flows back from c_{k+1}.

    Returns dA (T, B, G, H), dL/d(pre-activations) of every step, and dL/ds0,
    dL/dc0 (B, H) (the latter None for the GRU). ``record_ds`` / ``record_dc``
    (T, B, H), when given, receive dL/ds_k and dL/dc_k.

    With ``compiled`` (and no records), the same loop runs compiled (service.gated_kernel), with the
    cell's own step backward (``_Forward.back``, which the checks' mistaken forms override, is not called).
    """
    if compiled and record_ds is None and record_dc is None:
        return _backward_full_compiled(fwd, dLds)
    dA = np.empty_like(fwd.gates)  # (T, B, G, H)
    ds_carry = np.zeros_like(dLds[0])  # (B, H), dL/ds_k from step k+1
    dc_carry = np.zeros_like(dLds[0]) if fwd.cell == "lstm" else None  # (B, H), dL/dc_k from c_{k+1}
    for k in range(len(dA) - 1, -1, -1):
        checkpoint()  # the request's deadline (service.deadline)
        ds = dLds[k] + ds_carry  # dL/ds_k
        if record_ds is not None:
            record_ds[k] = ds
        if record_dc is not None and fwd.TC is not None and dc_carry is not None:
            record_dc[k] = dc_carry + ds * fwd.gates[k, :, 3] * (1.0 - fwd.TC[k] ** 2)  # dL/dc_k
        ds_carry, dc_carry = fwd.back(k, ds, dc_carry, dA[k])
    return dA, ds_carry, dc_carry


def _backward_full_compiled(fwd: _Forward, dLds: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """``_backward_full`` (without the records) in service.gated_kernel's compiled loops."""
    if fwd.cell == "gru":
        dA, dLds0 = gated_kernel.gru_backward_full(fwd.W, fwd.gates, fwd.S_prev, fwd.HN, dLds)
        return dA, dLds0, None
    assert fwd.C_prev is not None and fwd.TC is not None
    return gated_kernel.lstm_backward_full(fwd.W, fwd.gates, fwd.C_prev, fwd.TC, dLds)


def _backward_lags(
    fwd: _Forward, dLds: FloatArray, K: int, *, norms: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """The seed's truncated BPTT, one loop over the lags j = 0..K.

    At lag j, row k of ``ds`` is dE_{k+j}/ds_k, output k + j's error when it has
    come back j steps to step k; one ``back`` moves every output one step further
    at once. Output t's error stops after step max(0, t - K): the gradient of the
    loss with s_{t-K-1} (and c_{t-K-1}) held constant.

    Returns as ``_backward_full``. ``norms`` (T, T), for one sequence, receives
    ``norms[t, j]`` = ||dE_t/ds_{t-j}||.
    """
    T = len(dLds)
    dA = np.zeros_like(fwd.gates)  # (T, B, G, H)
    dLds0 = np.zeros_like(dLds[0])  # (B, H)
    dLdc0 = np.zeros_like(dLds[0]) if fwd.cell == "lstm" else None
    ds = dLds  # (T - j, B, H), lag 0: each output's own error at its own step
    dc = np.zeros_like(dLds) if fwd.cell == "lstm" else None
    for j in range(min(K, T - 1) + 1):
        checkpoint()  # the request's deadline (service.deadline)
        m = T - j  # steps 0 .. m-1 receive errors from outputs j .. T-1
        if norms is not None:
            norms[j:, j] = np.linalg.norm(ds[:, 0], axis=-1)
        dA_j = np.empty_like(fwd.gates[:m])
        ds_prev, dc_prev = fwd.back(slice(0, m), ds, dc, dA_j)
        dA[:m] += dA_j
        dLds0 += ds_prev[0]  # output j's error reaching s_{-1} = s0
        ds = ds_prev[1:]  # row k now for step k, output k + j + 1
        if dc_prev is not None and dLdc0 is not None:
            dLdc0 += dc_prev[0]
            dc = dc_prev[1:]
    return dA, dLds0, dLdc0


def _bptt(inputs: _Inputs, K: int | None, clip: float | None) -> GatedBatchGradients:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_finite
        g, dLdU_columns = _bptt_parts(inputs, K)
    _check_finite(inputs, g, dLdU_columns)
    if clip is None:
        return g
    clipped = {}
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc"):
        grad = getattr(g, name)
        if grad is not None:
            bound = min(clip, float(np.finfo(grad.dtype).max))  # a float32 gradient cannot exceed its max
            clipped[name] = int(np.count_nonzero(np.abs(grad) > bound))
            np.clip(grad, -bound, bound, out=grad)
    return replace(g, clipped=clipped)


def _bptt_unchecked(inputs: _Inputs, K: int | None) -> GatedBatchGradients:
    return _bptt_parts(inputs, K)[0]


def _bptt_parts(inputs: _Inputs, K: int | None) -> tuple[GatedBatchGradients, FloatArray]:
    """The gradients, and dLdU's nonzero columns (GH, D) for the D distinct tokens read."""
    fwd = _forward(inputs)
    T, B, G, H = fwd.gates.shape
    C = inputs.V.shape[0]
    out = _output_layer(inputs, fwd.S)
    if K is None or K >= T - 1:
        dA, dLds0, dLdc0 = _backward_full(fwd, out.dLds, compiled=_compiled(fwd.gates.shape))
    else:
        dA, dLds0, dLdc0 = _backward_lags(fwd, out.dLds, K)
    # dA[k, b, g] = dL/da_g at step k of sequence b, summed over the outputs that reach
    # step k; zero past the sequence's end.

    # Input side, a_g = U_g[:, x_k] + b_g + ...:  dLdU[g][:, x_k] += dA[k, g], dLdb = sum_k dA[k]
    dA_rows = dA.reshape(T * B, G * H)[out.valid]  # (N, GH)
    x_rows = inputs.X.ravel()[out.valid]  # (N,)
    dLdU_flat, dLdU_columns = _sum_into_columns(dA_rows, x_rows, C)
    dLdU = dLdU_flat.reshape(G, H, C)
    dLdb = None if inputs.b is None else dA_rows.sum(axis=0).reshape(G, H)

    # Hidden side, a_g = ... + W_g h_g + bhh_g: dLdW[g] = sum_k outer(dL/d(W_g h_g), h_g), where
    # h_g = s_{k-1}, except (r * s_{k-1}) for the tutorial GRU's n; and in the reset_after GRU,
    # n's hidden product is r * (W_n s_{k-1} + bhh_n), so its error is r * dA_n.
    dA_hh = dA
    if inputs.cell == "gru" and inputs.reset_after:
        dA_hh = dA.copy()
        dA_hh[:, :, 2] *= fwd.gates[:, :, 0]  # dL/dhn = r * dL/da_n
    flat_hh = dA_hh.reshape(T * B, G * H)  # (TB, GH), zero in padding rows
    h_rows = fwd.S_prev.reshape(T * B, H)  # (TB, H)
    dLdW = (flat_hh.T @ h_rows).reshape(G, H, H)  # (GH, TB) x (TB, H)
    if inputs.cell == "gru" and not inputs.reset_after:
        rh_rows = (fwd.gates[:, :, 0] * fwd.S_prev).reshape(T * B, H)  # r_k * s_{k-1}
        dLdW[2] = dA[:, :, 2].reshape(T * B, H).T @ rh_rows  # (H, TB) x (TB, H)
    dLdb_hh = None if inputs.b_hh is None else flat_hh.sum(axis=0).reshape(G, H)

    lengths = inputs.lengths
    if B == 1:
        losses = np.array([out.token_loss.sum()])
    else:
        seq_of_row = np.broadcast_to(np.arange(B), (T, B)).ravel()[out.valid]
        losses = np.bincount(seq_of_row, weights=out.token_loss, minlength=B)
    g = GatedBatchGradients(
        loss=float(losses.sum()),
        losses=losses,
        lengths=lengths,
        dLdU=dLdU,
        dLdV=out.dLdV,
        dLdW=dLdW,
        dLds0=dLds0,
        final_state=fwd.final_state,
        dLdb=dLdb,
        dLdb_hh=dLdb_hh,
        dLdc=out.dLdc,
        dLdc0=dLdc0,
        final_cell=fwd.final_cell,
    )
    return g, dLdU_columns


def _sum_into_columns(rows: FloatArray, x: IntArray, C: int) -> tuple[FloatArray, FloatArray]:
    """dLdU (GH, C) with dLdU[:, x[k]] += rows[k] (rows (N, GH)), repeated tokens accumulating; and its
    nonzero columns (GH, D), the sums for the D distinct tokens (engine._sum_into_columns, which returns
    only the first)."""
    if engine.kernel_in_use() == "numba":
        return gated_kernel.sum_into_columns(rows, x, C)  # dLdU of 19 to 26 MB at C = 8000, written once
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    sums = np.add.reduceat(rows[order], starts, axis=0)  # (D, GH)
    dLdU = np.zeros((rows.shape[1], C), dtype=rows.dtype)
    dLdU[:, xs[starts]] = sums.T
    return dLdU, sums.T


def _check_finite(inputs: _Inputs, g: GatedBatchGradients, dLdU_columns: FloatArray) -> None:
    """Raise ComputeError, naming the first result that is not finite, if the computation overflowed.
    ``dLdU_columns`` (GH, D): dLdU's columns of the tokens read (the rest is zero).

    dLdV (C x H, the largest) is read only when a bound does not settle it: a finite loss means every
    logit was finite (a NaN or infinite one makes its row's loss NaN), so |delta_o| <= 1, and every
    state is finite with |s_t| <= max(1, max|s0|) (the LSTM's s = o tanh(c); the GRU's a convex
    combination of n_t and s_{t-1}), so |dLdV| <= N max(1, max|s0|), as in engine._check_finite.
    """
    s_max = max(1.0, float(np.abs(inputs.S0).max()))
    dLdV_bounded = np.isfinite(g.loss) and g.tokens * s_max < float(np.finfo(g.dLdV.dtype).max) / 4
    parts: list[tuple[str, float | FloatArray | None]] = [
        ("loss", g.loss),
        ("dLdU", dLdU_columns),
        ("dLdV", None if dLdV_bounded else g.dLdV),
        ("dLdW", g.dLdW),
        ("dLdb", g.dLdb),
        ("dLdb_hh", g.dLdb_hh),
        ("dLdc", g.dLdc),
        ("dLds0", g.dLds0),
        ("dLdc0", g.dLdc0),
        ("final_state", g.final_state),
        ("final_cell", g.final_cell),
    ]
    for name, value in parts:
        if value is not None and not np.isfinite(value).all():
            weights = [a for a in (inputs.U, inputs.V, inputs.W, inputs.b, inputs.b_hh, inputs.c) if a is not None]
            largest = max(float(np.abs(a).max()) for a in weights)
            fix = "scale the weights down" + (" or compute in float64" if inputs.U.dtype == np.float32 else "")
            raise ComputeError(
                f"{name} is not finite: the {inputs.cell.upper()} computation overflowed in {inputs.U.dtype} "
                f"(largest weight magnitude {largest:.3g}); {fix}",
                field=name,
            )

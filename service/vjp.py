"""The recurrence's vector-Jacobian product, in the course assignments' conventions.

CS231n's ``rnn_backward`` / ``lstm_backward`` and the Coursera deep-learning
specialisation's "Building your Recurrent Neural Network - Step by Step"
(``rnn_backward``, ``lstm_backward``) take dense inputs and an upstream gradient
of the hidden states (no softmax, no targets) and return the gradients of the
inputs, the initial state and the weights. This module computes them in either
layout, for learners to check their answers against, and recomputes them with
the classic mistakes made (``MISTAKES``, ``diagnose``). numpy and the standard
library only.

Dimension letters, used in every shape comment below:

    N  examples (the batch; Coursera's m)     T  steps (Coursera's T_x)
    D  input features (Coursera's n_x)        H  hidden units (Coursera's n_a)
    G  gates of the LSTM (4: i, f, o, g)

Layouts (the answer comes back in the layout of the question):

``"cs231n"`` (default), row vectors::

    x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,), dh (N, T, H)
    h_t = tanh(x_t Wx + h_{t-1} Wh + b)
    LSTM: Wx (D, 4H), Wh (H, 4H), b (4H,), gates stacked i, f, o, g;
    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t),  c0 (N, H) zeros unless given

``"coursera"``, column vectors (their names in brackets)::

    x (D, N, T), h0 [a0] (H, N), Wx [Wax] (H, D), Wh [Waa] (H, H), b [ba] (H, 1), dh [da] (H, N, T)
    a_t = tanh(Wax x_t + Waa a_{t-1} + ba)
    LSTM: Wf, Wi, Wc, Wo (H, H + D) acting on concat = [a_{t-1}; x_t], bf, bi, bc, bo (H, 1);
    c_t = f * c_{t-1} + i * cct,  a_t = o * tanh(c_t)

Both are converted to one canonical, time-major layout -- x (T, N, D),
h0 (N, H), Wx (D, H) or (D, 4H), Wh (H, H) or (H, 4H), b (H,) or (4H,),
dh (T, N, H) -- computed there (one loop over time forward, one backward,
vectorised over N; the products that do not recur are one matrix product
each, outside the loops) and converted back.

The vector-Jacobian product of the states ``h = (h_0 .. h_{T-1})`` with the
upstream ``dh`` is the gradient of the scalar ``sum_t <dh_t, h_t>``:
dh[t] is added to the gradient flowing back from step t + 1 (CS231n's
``dh[:, t] + dprev_h``, Coursera's ``da[:, :, t] + da_prevt``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import ComputeError, InputError

__all__ = [
    "COURSERA_NAMES",
    "DESCRIPTIONS",
    "LSTM_WEIGHTS",
    "MISTAKES",
    "Layout",
    "LstmVjp",
    "Mistake",
    "RnnVjp",
    "diagnose",
    "lstm_vjp",
    "matches",
    "rnn_vjp",
]

Array = NDArray[np.floating[Any]]


class Layout(enum.StrEnum):
    """The assignment whose array conventions the arrays follow."""

    CS231N = "cs231n"
    COURSERA = "coursera"


# What the Coursera notebook calls our arrays (for messages and ``as_dict``).
COURSERA_NAMES: dict[str, str] = {
    "h0": "a0",
    "Wx": "Wax",
    "Wh": "Waa",
    "b": "ba",
    "dh": "da",
    "h": "a",
    "dh0": "da0",
    "dWx": "dWax",
    "dWh": "dWaa",
    "db": "dba",
    "c0": "c0",
    "dc0": "dc0",
}

# The LSTM's weights by layout, in the order they are checked.
LSTM_WEIGHTS: dict[Layout, tuple[str, ...]] = {
    Layout.CS231N: ("Wx", "Wh", "b"),
    Layout.COURSERA: ("Wf", "Wi", "Wc", "Wo", "bf", "bi", "bc", "bo"),
}
# Coursera's weight of each canonical gate block (CS231n's order i, f, o, g).
_COURSERA_GATES = ("i", "f", "o", "c")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RnnVjp:
    """States and gradients of the vanilla recurrence, in the layout's shapes.

    Attributes
    ----------
    layout : Layout
    h : ndarray
        The hidden states: cs231n (N, T, H); coursera (H, N, T) (their ``a``).
    dx : ndarray
        cs231n (N, T, D); coursera (D, N, T).
    dh0 : ndarray
        cs231n (N, H); coursera (H, N) (their ``da0``).
    dWx : ndarray
        cs231n (D, H); coursera (H, D) (their ``dWax``).
    dWh : (H, H) ndarray
        Coursera's ``dWaa``.
    db : ndarray
        cs231n (H,); coursera (H, 1) (their ``dba``). Only the
        ``Mistake.DB_WRONG_AXIS`` recomputation differs: (N,) and (1, N).
    """

    layout: Layout
    h: Array
    dx: Array
    dh0: Array
    dWx: Array
    dWh: Array
    db: Array

    def as_dict(self, *, layout_names: bool = False) -> dict[str, Array]:
        """The arrays by name; with ``layout_names`` Coursera's names (``da0``, ``dWax``...)."""
        out = {k: getattr(self, k) for k in ("h", "dx", "dh0", "dWx", "dWh", "db")}
        if layout_names and self.layout is Layout.COURSERA:
            return {COURSERA_NAMES.get(k, k): v for k, v in out.items()}
        return out


@dataclass(frozen=True)
class LstmVjp:
    """States and gradients of the LSTM, in the layout's shapes.

    Attributes
    ----------
    layout : Layout
    h, c : ndarrays
        Hidden and cell states: cs231n (N, T, H); coursera (H, N, T).
    dx : ndarray
        cs231n (N, T, D); coursera (D, N, T).
    dh0, dc0 : ndarrays
        Gradients of the initial states: cs231n (N, H); coursera (H, N).
        (The assignments fix c0 = 0 and do not return dc0; it is here for c0 given.)
    dW : dict of ndarrays
        The weights' gradients by the layout's names: cs231n ``dWx`` (D, 4H),
        ``dWh`` (H, 4H), ``db`` (4H,); coursera ``dWf``, ``dWi``, ``dWc``,
        ``dWo`` (H, H + D) and ``dbf``, ``dbi``, ``dbc``, ``dbo`` (H, 1).
    """

    layout: Layout
    h: Array
    c: Array
    dx: Array
    dh0: Array
    dc0: Array
    dW: dict[str, Array] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Array]:
        """Every array by name (Coursera's ``da0`` is ``dh0`` here), the weights' gradients flattened in."""
        return {"h": self.h, "c": self.c, "dx": self.dx, "dh0": self.dh0, "dc0": self.dc0, **self.dW}


# --------------------------------------------------------------------------- checks


def _layout(layout: Layout | str) -> Layout:
    try:
        return Layout(layout)
    except ValueError:
        choices = ", ".join(repr(v.value) for v in Layout)
        raise InputError(f"layout must be one of {choices}, got {layout!r}", field="layout") from None


def _dims(a: np.ndarray[Any, Any]) -> str:
    return " x ".join(str(n) for n in a.shape) if a.ndim else "a scalar"


def _label(name: str, layout: Layout) -> str:
    """``dh`` in the cs231n layout, ``dh (da)`` in the coursera one."""
    alias = COURSERA_NAMES.get(name, name) if layout is Layout.COURSERA else name
    return name if alias == name else f"{name} ({alias})"


def _array(name: str, value: ArrayLike, dtype: type[np.floating[Any]], layout: Layout) -> Array:
    """``value`` as an ndarray of ``dtype``; InputError if it is not numbers or not finite."""
    try:
        a: Array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{_label(name, layout)} must be an array of numbers, got {type(value).__name__} ({exc})", field=name
        ) from None
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{_label(name, layout)} must hold finite numbers, got {a[where]} at index {where}", field=name
        )
    return a


class _Shapes:
    """Checks arrays against shapes written in dimension letters, binding each letter once.

    A shape is a tuple of terms: a letter (``"N"``), a multiple (``"4H"``), a sum
    (``"H + D"``) or a literal size (``"1"``). The first array that shows a
    letter alone binds it; later terms are computed from the bound letters.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.sizes: dict[str, int] = {}

    def _size(self, term: str) -> int | None:
        if term.isdigit():
            return int(term)
        if " + " in term:
            parts = [self._size(p) for p in term.split(" + ")]
            return None if None in parts else sum(p for p in parts if p is not None)
        if term[:-1].isdigit():
            n = self.sizes.get(term[-1])
            return None if n is None else int(term[:-1]) * n
        return self.sizes.get(term)

    def check(self, name: str, a: Array, shape: tuple[str, ...]) -> None:
        letters = " x ".join(f"({t})" if " + " in t else t for t in shape)
        where = f"in the {self.layout} layout, got {_dims(a)}"
        if a.ndim == len(shape):  # bind the letters this array shows first
            fresh = [t for t in shape if t.isalpha() and t not in self.sizes]
            for t, n in zip(shape, a.shape, strict=True):
                if t in fresh:
                    self.sizes.setdefault(t, n)
            if any(self.sizes[t] == 0 for t in fresh):
                raise InputError(
                    f"{_label(name, self.layout)} must be {letters} with every size >= 1 {where}", field=name
                )
        expected = [self._size(t) for t in shape]
        if a.ndim == len(shape) and all(e == n for e, n in zip(expected, a.shape, strict=True)):
            return
        if all(e is not None for e in expected):
            numbers = " x ".join(str(e) for e in expected)
            raise InputError(f"{_label(name, self.layout)} must be {letters} = {numbers} {where}", field=name)
        known = ", ".join(f"{k} = {v}" for k, v in self.sizes.items() if any(k in t for t in shape))
        also = f" with {known}" if known else ""
        raise InputError(f"{_label(name, self.layout)} must be {letters}{also} {where}", field=name)


def _dtype(x: ArrayLike) -> type[np.floating[Any]]:
    """float32 when x is float32, else float64: the computation's dtype."""
    dtype = getattr(x, "dtype", None)  # an ndarray's; lists and scalars compute in float64
    return np.float32 if dtype == np.float32 else np.float64


# The shapes of the vanilla recurrence's inputs, in the order they are checked.
_RNN_SHAPES: dict[Layout, dict[str, tuple[str, ...]]] = {
    Layout.CS231N: {
        "x": ("N", "T", "D"),
        "Wx": ("D", "H"),
        "Wh": ("H", "H"),
        "b": ("H",),
        "h0": ("N", "H"),
        "dh": ("N", "T", "H"),
    },
    Layout.COURSERA: {
        "x": ("D", "N", "T"),
        "Wx": ("H", "D"),
        "Wh": ("H", "H"),
        "b": ("H", "1"),
        "h0": ("H", "N"),
        "dh": ("H", "N", "T"),
    },
}


@dataclass(frozen=True)
class _Rnn:
    """One vanilla problem in the canonical layout."""

    layout: Layout
    x: Array  # (T, N, D)
    h0: Array  # (N, H)
    Wx: Array  # (D, H)
    Wh: Array  # (H, H)
    b: Array  # (H,)
    dh: Array  # (T, N, H)


def _rnn_problem(
    x: ArrayLike, h0: ArrayLike, Wx: ArrayLike, Wh: ArrayLike, b: ArrayLike, dh: ArrayLike, layout: Layout | str
) -> _Rnn:
    """Check the shapes in the layout and convert to the canonical layout."""
    lay = _layout(layout)
    dtype = _dtype(x)
    given = {"x": x, "Wx": Wx, "Wh": Wh, "b": b, "h0": h0, "dh": dh}
    shapes = _Shapes(lay)
    a: dict[str, Array] = {}
    for name, shape in _RNN_SHAPES[lay].items():
        a[name] = _array(name, given[name], dtype, lay)
        shapes.check(name, a[name], shape)
    if lay is Layout.CS231N:
        return _Rnn(lay, a["x"].transpose(1, 0, 2), a["h0"], a["Wx"], a["Wh"], a["b"], a["dh"].transpose(1, 0, 2))
    # coursera: (D, N, T) -> (T, N, D); column vectors -> rows, so every matrix is transposed
    return _Rnn(lay, a["x"].T, a["h0"].T, a["Wx"].T, a["Wh"].T, a["b"][:, 0], a["dh"].T)


def _steps_out(a: Array, layout: Layout) -> Array:
    """(T, N, K) canonical -> cs231n (N, T, K), coursera (K, N, T)."""
    return np.ascontiguousarray(a.transpose(1, 0, 2) if layout is Layout.CS231N else a.T)


def _check_finite(dtype: np.dtype[Any], scale: float, **arrays: Array) -> None:
    """Raise ComputeError naming the first result that is not finite."""
    for name, value in arrays.items():
        if not np.isfinite(value).all():
            raise ComputeError(
                f"{name} is not finite: the computation overflowed in {dtype} (largest input magnitude "
                f"{scale:.3g}); scale the inputs down or compute in float64",
                field=name,
            )


def _largest(*arrays: Array) -> float:
    return max(float(np.abs(a).max(initial=0.0)) for a in arrays)


# --------------------------------------------------------------------------- vanilla RNN


def _rnn_forward(p: _Rnn) -> tuple[Array, Array]:
    """Pre-activations and states, one loop over time.

    Returns Z, S: (T, N, H) each, ``S[t] = tanh(Z[t])``.
    """
    Z = p.x @ p.Wx + p.b  # (T, N, D) x (D, H) -> (T, N, H): x_t Wx + b, every step at once
    S = np.empty_like(Z)
    h = p.h0
    for t in range(len(Z)):
        Z[t] += h @ p.Wh  # (N, H) x (H, H): z_t = x_t Wx + h_{t-1} Wh + b
        h = S[t] = np.tanh(Z[t])  # h_t
    return Z, S


def _rnn_backward(p: _Rnn, S: Array) -> tuple[Array, Array]:
    """dL/dz_t for every step, one loop backward; and dL/dh0.

    ``dz_t = (dh_t + dz_{t+1} Wh^T) * (1 - h_t**2)``: the upstream gradient plus what
    flows back from step t + 1, times tanh'(z_t) = 1 - tanh(z_t)**2 = 1 - h_t**2.
    """
    dZ = np.empty_like(S)  # (T, N, H)
    carry = np.zeros_like(p.h0)  # (N, H), dL/dh_t through step t + 1
    WhT = p.Wh.T
    for t in range(len(S) - 1, -1, -1):
        dZ[t] = (p.dh[t] + carry) * (1.0 - S[t] * S[t])
        carry = dZ[t] @ WhT  # (N, H) x (H, H): dL/dh_{t-1} = dz_t Wh^T
    return dZ, carry


def _rnn_result(p: _Rnn, S: Array, dZ: Array, dh0: Array, dWh: Array | None = None) -> RnnVjp:
    """The non-recurrent products of dZ, then the layout's shapes."""
    T, N, H = S.shape
    D = p.x.shape[2]
    S_prev = np.concatenate([p.h0[None], S[:-1]])  # (T, N, H), h_{t-1}
    dz = dZ.reshape(T * N, H)
    dx = dZ @ p.Wx.T  # (T, N, H) x (H, D) -> (T, N, D), dx_t = dz_t Wx^T
    dWx = p.x.reshape(T * N, D).T @ dz  # (D, TN) x (TN, H) -> (D, H), sum_t x_t^T dz_t
    if dWh is None:
        dWh = S_prev.reshape(T * N, H).T @ dz  # (H, TN) x (TN, H) -> (H, H), sum_t h_{t-1}^T dz_t
    db = dz.sum(axis=0)  # (H,), sum over t and n
    _check_finite(S.dtype, _largest(p.x, p.h0, p.Wx, p.Wh, p.b, p.dh), dx=dx, dh0=dh0, dWx=dWx, dWh=dWh, db=db)
    if p.layout is Layout.CS231N:
        return RnnVjp(p.layout, _steps_out(S, p.layout), _steps_out(dx, p.layout), dh0, dWx, dWh, db)
    return RnnVjp(p.layout, _steps_out(S, p.layout), _steps_out(dx, p.layout), dh0.T, dWx.T, dWh.T, db[:, None])


def rnn_vjp(
    x: ArrayLike,
    h0: ArrayLike,
    Wx: ArrayLike,
    Wh: ArrayLike,
    b: ArrayLike,
    dh: ArrayLike,
    *,
    layout: Layout | str = Layout.CS231N,
) -> RnnVjp:
    """States and vector-Jacobian product of ``h_t = tanh(x_t Wx + h_{t-1} Wh + b)``.

    CS231n's ``rnn_forward`` + ``rnn_backward``, or Coursera's ``rnn_forward`` +
    ``rnn_backward``, in one call.

    Parameters
    ----------
    x : ndarray
        Inputs: cs231n (N, T, D); coursera (D, N, T). float32 computes in
        float32, anything else in float64.
    h0 : ndarray
        Initial state: cs231n (N, H); coursera (H, N) (their ``a0``).
    Wx : ndarray
        cs231n (D, H); coursera (H, D) (their ``Wax``).
    Wh : (H, H) ndarray
        Coursera's ``Waa`` (the transpose of CS231n's Wh for the same network).
    b : ndarray
        cs231n (H,); coursera (H, 1) (their ``ba``).
    dh : ndarray
        Upstream gradient of every state: cs231n (N, T, H); coursera (H, N, T) (their ``da``).
    layout : {"cs231n", "coursera"}

    Returns
    -------
    RnnVjp
        h, dx, dh0, dWx, dWh, db in the layout's shapes.

    Raises
    ------
    InputError
        A shape that disagrees (the message names the field, the layout and the
        expected shape), numbers that are not finite, an unknown layout.
    ComputeError
        A result is not finite (the inputs are too large for the dtype).
    """
    p = _rnn_problem(x, h0, Wx, Wh, b, dh, layout)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_finite
        _, S = _rnn_forward(p)
        dZ, dh0 = _rnn_backward(p, S)
        return _rnn_result(p, S, dZ, dh0)


# --------------------------------------------------------------------------- the classic mistakes


class Mistake(enum.StrEnum):
    """Classic mistakes in the assignments' ``rnn_backward``, each recomputed by ``MISTAKES``.

    Each is described in the canonical row layout (CS231n's); Coursera's
    column layout makes the same mistake transposed. ``DESCRIPTIONS`` says
    what each one is, in a sentence for a learner.
    """

    UPSTREAM_NOT_ADDED = "upstream_not_added"
    NEXT_STEP_NOT_ADDED = "next_step_not_added"
    TANH_OF_PREACTIVATION = "tanh_of_preactivation"
    DWH_WITH_CURRENT_STATE = "dwh_with_current_state"
    WH_NOT_TRANSPOSED = "wh_not_transposed"
    DB_WRONG_AXIS = "db_wrong_axis"
    DH0_NOT_RETURNED = "dh0_not_returned"


DESCRIPTIONS: dict[Mistake, str] = {
    Mistake.UPSTREAM_NOT_ADDED: (
        "the upstream dh[:, t] is not added to the gradient flowing back from step t + 1: "
        "h_t receives only what flows back (dh is read at the last step only)"
    ),
    Mistake.NEXT_STEP_NOT_ADDED: (
        "the gradient flowing back from step t + 1 is not added to the upstream dh[:, t]: "
        "each step sees its own dh only, nothing is backpropagated through time"
    ),
    Mistake.TANH_OF_PREACTIVATION: "tanh' taken of the pre-activation, 1 - z_t**2, instead of 1 - h_t**2",
    Mistake.DWH_WITH_CURRENT_STATE: (
        "dWh accumulated with the current state h_t instead of the previous one h_{t-1} "
        "(Coursera: a_next instead of a_prev)"
    ),
    Mistake.WH_NOT_TRANSPOSED: (
        "Wh instead of its transpose in the recursion: dprev_h = dz Wh (CS231n), da_prev = Waa @ dtanh (Coursera)"
    ),
    Mistake.DB_WRONG_AXIS: (
        "db summed over H instead of N: one total per example, (N,) in the cs231n layout "
        "(np.sum(dz, axis=1)), (1, N) in the coursera layout (np.sum(dtanh, axis=0, keepdims=True))"
    ),
    Mistake.DH0_NOT_RETURNED: "the gradient of the first step's h_prev is not returned: dh0 (Coursera's da0) left zero",
}


def _mistaken(p: _Rnn, mistake: Mistake) -> RnnVjp:
    """The vanilla VJP recomputed with one mistake made (``_rnn_backward``, changed in one place)."""
    Z, S = _rnn_forward(p)
    dZ = np.empty_like(S)  # (T, N, H)
    carry = np.zeros_like(p.h0)  # (N, H)
    T = len(S)
    Wback = p.Wh if mistake is Mistake.WH_NOT_TRANSPOSED else p.Wh.T
    A = Z if mistake is Mistake.TANH_OF_PREACTIVATION else S  # 1 - A**2 is taken as tanh'(z)
    for t in range(T - 1, -1, -1):
        if mistake is Mistake.UPSTREAM_NOT_ADDED:
            upstream = carry if t < T - 1 else p.dh[t]
        elif mistake is Mistake.NEXT_STEP_NOT_ADDED:
            upstream = p.dh[t]
        else:
            upstream = p.dh[t] + carry
        dZ[t] = upstream * (1.0 - A[t] * A[t])
        carry = dZ[t] @ Wback
    dWh = None
    if mistake is Mistake.DWH_WITH_CURRENT_STATE:
        H = S.shape[2]
        dWh = S.reshape(-1, H).T @ dZ.reshape(-1, H)  # sum_t h_t^T dz_t
    elif mistake is Mistake.DH0_NOT_RETURNED:
        carry = np.zeros_like(carry)
    result = _rnn_result(p, S, dZ, carry, dWh=dWh)
    if mistake is Mistake.DB_WRONG_AXIS:
        db = dZ.sum(axis=(0, 2))  # (N,): over t and H, one total per example
        result = replace(result, db=db if p.layout is Layout.CS231N else db[None, :])  # coursera (1, N)
    return result


def _mistake_function(mistake: Mistake) -> Callable[..., RnnVjp]:
    def recompute(
        x: ArrayLike,
        h0: ArrayLike,
        Wx: ArrayLike,
        Wh: ArrayLike,
        b: ArrayLike,
        dh: ArrayLike,
        *,
        layout: Layout | str = Layout.CS231N,
    ) -> RnnVjp:
        p = _rnn_problem(x, h0, Wx, Wh, b, dh, layout)
        with np.errstate(over="ignore", invalid="ignore"):
            return _mistaken(p, mistake)

    recompute.__name__ = recompute.__qualname__ = f"rnn_vjp_{mistake.value}"
    recompute.__doc__ = f"``rnn_vjp`` with this mistake made: {DESCRIPTIONS[mistake]}."
    return recompute


MISTAKES: dict[Mistake, Callable[..., RnnVjp]] = {m: _mistake_function(m) for m in Mistake}
"""Each mistake's recomputation, called as ``rnn_vjp`` is; returns what a learner making it would."""

_GRADIENTS = ("dx", "dh0", "dWx", "dWh", "db")


def matches(submitted: ArrayLike, expected: Array, tolerance: float) -> bool:
    """The same shape and ``max|a - e| <= tolerance * max(max|a|, max|e|)`` (zero matches zero only)."""
    a = np.asarray(submitted, dtype=np.float64)
    if a.shape != expected.shape or not np.isfinite(a).all():
        return False
    e = expected.astype(np.float64)
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(e).max(initial=0.0)))
    return float(np.abs(a - e).max(initial=0.0)) <= tolerance * scale


def diagnose(
    submitted: Mapping[str, ArrayLike],
    x: ArrayLike,
    h0: ArrayLike,
    Wx: ArrayLike,
    Wh: ArrayLike,
    b: ArrayLike,
    dh: ArrayLike,
    *,
    layout: Layout | str = Layout.CS231N,
    tolerance: float = 1e-6,
) -> list[Mistake]:
    """Which classic mistakes explain a learner's gradients.

    Parameters
    ----------
    submitted : dict of ndarrays
        The learner's answer: any of ``dx``, ``dh0``, ``dWx``, ``dWh``, ``db``
        (in the coursera layout also by their names ``da0``, ``dWax``,
        ``dWaa``, ``dba``), in the layout's shapes.
    x, h0, Wx, Wh, b, dh, layout
        The problem, as for ``rnn_vjp``.
    tolerance : float
        Relative: an array matches when ``max|a - e| <= tolerance * max(max|a|, max|e|)``.

    Returns
    -------
    list of Mistake
        Every mistake whose recomputation matches every submitted array, in
        ``Mistake`` order; several when several fit. A mistake that changes none
        of the submitted arrays cannot be told from a correct answer and is not
        reported; an empty list means a correct answer or a mistake not listed
        (compare with ``rnn_vjp`` and ``matches`` to tell which).

    Raises
    ------
    InputError
        A submitted name that is not a gradient, nothing submitted, a bad
        tolerance, or the problem's own errors (as ``rnn_vjp``).
    """
    lay = _layout(layout)
    if isinstance(tolerance, bool) or not np.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"tolerance must be a number >= 0, got {tolerance!r}", field="tolerance")
    aliases = {COURSERA_NAMES[g]: g for g in _GRADIENTS if g in COURSERA_NAMES} if lay is Layout.COURSERA else {}
    answer: dict[str, NDArray[np.float64]] = {}
    for name, value in submitted.items():
        key = aliases.get(name, name)
        if key not in _GRADIENTS:
            names = ", ".join([*_GRADIENTS, *aliases])
            raise InputError(
                f"submitted must name gradients among {names} in the {lay} layout, got {name!r}",
                field=f"submitted.{name}",
            )
        try:
            answer[key] = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"submitted.{name} must be an array of numbers, got {type(value).__name__} ({exc})",
                field=f"submitted.{name}",
            ) from None
    if not answer:
        raise InputError(f"submitted must hold at least one of {', '.join(_GRADIENTS)}, got none", field="submitted")
    p = _rnn_problem(x, h0, Wx, Wh, b, dh, lay)
    with np.errstate(over="ignore", invalid="ignore"):
        _, S = _rnn_forward(p)
        dZ, dh0 = _rnn_backward(p, S)
        correct = _rnn_result(p, S, dZ, dh0)
        found = []
        for mistake in Mistake:
            wrong = _mistaken(p, mistake)
            if all(matches(v, getattr(wrong, k), tolerance) for k, v in answer.items()) and not all(
                matches(getattr(wrong, k), getattr(correct, k), tolerance) for k in answer
            ):
                found.append(mistake)
    return found


# --------------------------------------------------------------------------- LSTM


@dataclass(frozen=True)
class _Lstm:
    """One LSTM problem in the canonical (CS231n, time-major) layout."""

    layout: Layout
    x: Array  # (T, N, D)
    h0: Array  # (N, H)
    c0: Array  # (N, H)
    Wx: Array  # (D, 4H), gate blocks i, f, o, g
    Wh: Array  # (H, 4H)
    b: Array  # (4H,)
    dh: Array  # (T, N, H)


def _lstm_problem(
    x: ArrayLike,
    h0: ArrayLike,
    weights: Mapping[str, ArrayLike],
    dh: ArrayLike,
    c0: ArrayLike | None,
    layout: Layout | str,
) -> _Lstm:
    lay = _layout(layout)
    dtype = _dtype(x)
    names = LSTM_WEIGHTS[lay]
    missing = [n for n in names if n not in weights]
    extra = [n for n in weights if n not in names]
    if missing or extra:
        got = "missing " + ", ".join(missing) if missing else "unexpected " + ", ".join(extra)
        raise InputError(
            f"weights must hold {', '.join(names)} in the {lay} layout, {got}", field=(missing or extra)[0]
        )
    shapes = _Shapes(lay)
    a = {n: _array(n, weights[n], dtype, lay) for n in names}
    xa = _array("x", x, dtype, lay)
    if lay is Layout.CS231N:
        shapes.check("x", xa, ("N", "T", "D"))
        Wx = a["Wx"]
        if Wx.ndim == 2 and Wx.shape[1] % 4:
            raise InputError(
                f"Wx must be D x 4H in the {lay} layout, got {_dims(Wx)} ({Wx.shape[1]} is not a multiple of 4)",
                field="Wx",
            )
        if Wx.ndim == 2:
            shapes.sizes.setdefault("H", Wx.shape[1] // 4)
        shapes.check("Wx", Wx, ("D", "4H"))
        shapes.check("Wh", a["Wh"], ("H", "4H"))
        shapes.check("b", a["b"], ("4H",))
        state = ("N", "H")
    else:
        shapes.check("x", xa, ("D", "N", "T"))
        for n in names:  # Wf binds H
            shapes.check(n, a[n], ("H", "H + D") if n[0] == "W" else ("H", "1"))
        state = ("H", "N")
    h0a = _array("h0", h0, dtype, lay)
    shapes.check("h0", h0a, state)
    c0a = np.zeros_like(h0a) if c0 is None else _array("c0", c0, dtype, lay)
    shapes.check("c0", c0a, state)
    dha = _array("dh", dh, dtype, lay)
    shapes.check("dh", dha, ("N", "T", "H") if lay is Layout.CS231N else ("H", "N", "T"))
    if lay is Layout.CS231N:
        return _Lstm(lay, xa.transpose(1, 0, 2), h0a, c0a, a["Wx"], a["Wh"], a["b"], dha.transpose(1, 0, 2))
    H = shapes.sizes["H"]
    # Coursera's W_k @ [a_prev; x_t] = (a_prev^T W_k[:, :H]^T + x_t^T W_k[:, H:]^T)^T: the row layout's
    # gate block k is W_k[:, H:]^T in Wx and W_k[:, :H]^T in Wh; Coursera's cct is CS231n's g.
    Wx_c = np.concatenate([a[f"W{k}"][:, H:].T for k in _COURSERA_GATES], axis=1)  # (D, 4H)
    Wh_c = np.concatenate([a[f"W{k}"][:, :H].T for k in _COURSERA_GATES], axis=1)  # (H, 4H)
    b_c = np.concatenate([a[f"b{k}"][:, 0] for k in _COURSERA_GATES])  # (4H,)
    return _Lstm(lay, xa.T, h0a.T, c0a.T, Wx_c, Wh_c, b_c, dha.T)


def _sigmoid(a: Array) -> Array:
    """1 / (1 + exp(-a)) without overflow: exp(-|a|) <= 1 on both branches."""
    e = np.exp(-np.abs(a))
    out: Array = np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def lstm_vjp(
    x: ArrayLike,
    h0: ArrayLike,
    weights: Mapping[str, ArrayLike],
    dh: ArrayLike,
    *,
    layout: Layout | str = Layout.CS231N,
    c0: ArrayLike | None = None,
) -> LstmVjp:
    """States and vector-Jacobian product of the LSTM, in either assignment's layout.

    Parameters
    ----------
    x : ndarray
        Inputs: cs231n (N, T, D); coursera (D, N, T). float32 computes in float32.
    h0 : ndarray
        Initial hidden state: cs231n (N, H); coursera (H, N) (their ``a0``).
    weights : dict of ndarrays
        cs231n: ``Wx`` (D, 4H), ``Wh`` (H, 4H), ``b`` (4H,), gate blocks i, f, o, g.
        coursera: ``Wf``, ``Wi``, ``Wc``, ``Wo`` (H, H + D) acting on
        ``concat = [a_prev; x_t]``, ``bf``, ``bi``, ``bc``, ``bo`` (H, 1).
    dh : ndarray
        Upstream gradient of every hidden state (not of the cell):
        cs231n (N, T, H); coursera (H, N, T) (their ``da``).
    layout : {"cs231n", "coursera"}
    c0 : ndarray, optional
        Initial cell state, the shape of h0; zeros (the assignments') when omitted.

    Returns
    -------
    LstmVjp
        h, c, dx, dh0, dc0 and ``dW`` with the layout's weight gradients.

    Raises
    ------
    InputError, ComputeError
        As for ``rnn_vjp``; also missing or unexpected weight names.

    Notes
    -----
    Forward, gates stacked in a (N, 4H) row::

        a_t = x_t Wx + h_{t-1} Wh + b
        i, f, o = sigmoid(a_t[:, :H]), sigmoid(a_t[:, H:2H]), sigmoid(a_t[:, 2H:3H]);  g = tanh(a_t[:, 3H:])
        c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

    Backward, with dh_t the upstream plus what flows back from step t + 1 and
    dc_t what flows back to c_t from c_{t+1}::

        do = dh_t * tanh(c_t);  dc = dc_t + dh_t * o * (1 - tanh(c_t)**2)
        di = dc * g;  df = dc * c_{t-1};  dg = dc * i;  dc_{t-1} = dc * f
        da = [di * i (1 - i), df * f (1 - f), do * o (1 - o), dg * (1 - g**2)]
        dh_{t-1} = da Wh^T
    """
    p = _lstm_problem(x, h0, weights, dh, c0, layout)
    T, N, D = p.x.shape
    H = p.h0.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        # Forward: gates after their nonlinearities, cell states, hidden states.
        A = p.x @ p.Wx + p.b  # (T, N, D) x (D, 4H) -> (T, N, 4H), x_t Wx + b at every step
        C = np.empty((T, N, H), dtype=A.dtype)
        S = np.empty_like(C)
        h, c = p.h0, p.c0
        for t in range(T):
            a = A[t]  # (N, 4H), overwritten with the gates
            a += h @ p.Wh  # (N, H) x (H, 4H)
            a[:, : 3 * H] = _sigmoid(a[:, : 3 * H])  # i, f, o
            a[:, 3 * H :] = np.tanh(a[:, 3 * H :])  # g
            i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            c = C[t] = f * c + i * g  # c_t
            h = S[t] = o * np.tanh(c)  # h_t

        # Backward: dL/da_t for every step, then the non-recurrent products.
        dA = np.empty_like(A)  # (T, N, 4H)
        dh_next = np.zeros_like(p.h0)  # (N, H), through step t + 1
        dc_next = np.zeros_like(p.c0)  # (N, H)
        WhT = p.Wh.T
        for t in range(T - 1, -1, -1):
            i, f, o, g = A[t, :, :H], A[t, :, H : 2 * H], A[t, :, 2 * H : 3 * H], A[t, :, 3 * H :]
            c_prev = C[t - 1] if t else p.c0
            tc = np.tanh(C[t])
            dht = p.dh[t] + dh_next  # the upstream plus what flows back from step t + 1
            dct = dc_next + dht * o * (1.0 - tc * tc)  # tanh'(c_t) = 1 - tanh(c_t)**2
            da = dA[t]
            da[:, :H] = dct * g * i * (1.0 - i)  # sigmoid' = s (1 - s)
            da[:, H : 2 * H] = dct * c_prev * f * (1.0 - f)
            da[:, 2 * H : 3 * H] = dht * tc * o * (1.0 - o)
            da[:, 3 * H :] = dct * i * (1.0 - g * g)
            dc_next = dct * f  # dL/dc_{t-1}
            dh_next = da @ WhT  # (N, 4H) x (4H, H): dL/dh_{t-1}
        S_prev = np.concatenate([p.h0[None], S[:-1]])  # (T, N, H)
        da_rows = dA.reshape(T * N, 4 * H)
        dx = dA @ p.Wx.T  # (T, N, 4H) x (4H, D) -> (T, N, D)
        dWx = p.x.reshape(T * N, D).T @ da_rows  # (D, TN) x (TN, 4H) -> (D, 4H)
        dWh = S_prev.reshape(T * N, H).T @ da_rows  # (H, TN) x (TN, 4H) -> (H, 4H)
        db = da_rows.sum(axis=0)  # (4H,)
    scale = _largest(p.x, p.h0, p.c0, p.Wx, p.Wh, p.b, p.dh)
    _check_finite(A.dtype, scale, c=C, dx=dx, dh0=dh_next, dc0=dc_next, dWx=dWx, dWh=dWh, db=db)
    lay = p.layout
    h_out, c_out, dx_out = _steps_out(S, lay), _steps_out(C, lay), _steps_out(dx, lay)
    if lay is Layout.CS231N:
        return LstmVjp(lay, h_out, c_out, dx_out, dh_next, dc_next, {"dWx": dWx, "dWh": dWh, "db": db})
    dW: dict[str, Array] = {}
    for k, name in enumerate(_COURSERA_GATES):  # block k back to Coursera's (H, H + D) on [a_prev; x_t]
        block = slice(k * H, (k + 1) * H)
        dW[f"dW{name}"] = np.concatenate([dWh[:, block].T, dWx[:, block].T], axis=1)
    for k, name in enumerate(_COURSERA_GATES):
        dW[f"db{name}"] = np.ascontiguousarray(db[k * H : (k + 1) * H, None])  # (H, 1)
    order = [f"dW{k}" for k in "fico"] + [f"db{k}" for k in "fico"]  # Coursera's order: f, i, c, o
    return LstmVjp(lay, h_out, c_out, dx_out, dh_next.T, dc_next.T, {k: dW[k] for k in order})

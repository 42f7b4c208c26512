"""Gradient flow made measurable: Jacobian products, per-lag gradients, truncation bias.

The seed's chapter "Backpropagation Through Time and Vanishing Gradients" in
numbers, for one sequence (the numpy computation behind ``POST /bptt/flow``).
numpy and the standard library only. Dimension letters, used in every shape
comment below:

    T  sequence length (steps)      H  hidden units
    C  vocabulary size (classes)    G  gates: 3 (GRU), 4 (LSTM)
    D  state size: H (rnn, GRU), 2H (LSTM: s and c)
    K  truncation (lags kept)       M  distinct input tokens of the sequence

The vanilla cell (``service.engine``), ``s_k = tanh(U[:, x_k] + W s_{k-1} + b)``,
has the step Jacobian

    J_k = d s_k / d s_{k-1} = diag(1 - s_k**2) W                       (H, H)

and the error of output t reaches step k through the product

    d s_t / d s_k = J_t J_{t-1} ... J_{k+1}          (identity for k = t)

whose norm shrinks or grows geometrically with t - k: vanishing and exploding
gradients (Pascanu et al. 2013; Goodfellow et al., Deep Learning, 10.7). For
the gated cells (``service.gated``) J_k is the GRU's d s_k / d s_{k-1} and the
LSTM's d (s_k, c_k) / d (s_{k-1}, c_{k-1}) (2H, 2H), the state taken as the
pair [s; c].

The gradients split by lag: output t's error, having travelled l steps back to
step k = t - l, adds the seed's ``outer(delta_t, s_{k-1})`` to dL/dW and
``delta_t`` to column x_k of dL/dU. Summed over every lag that is the full
gradient; summed over lags l <= K it is the seed's truncated-K gradient, so one
pass over the lags gives every truncation's bias (its relative error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import engine, gated
from .errors import InputError

__all__ = ["CELLS", "NORMS", "Flow", "flow", "lag_gradients", "log10_product_norms"]

FloatArray: TypeAlias = NDArray[np.floating[Any]]
Norm: TypeAlias = Literal["spectral", "frobenius"]

NORMS: tuple[str, ...] = ("spectral", "frobenius")
"""The matrix norms ``flow`` can take of the Jacobian products."""

CELLS: tuple[str, ...] = ("rnn", "gru", "lstm")
"""The cells ``flow`` knows: the vanilla RNN of ``service.engine`` and the gated ones of ``service.gated``."""

_GATED_OPTIONS = ("c0", "b_hh", "reset_after")


@dataclass(frozen=True)
class Flow:
    """How the error flows back through one sequence.

    Attributes
    ----------
    log10_jacobian_norms : (T, T) ndarray
        Row t, column k <= t: log10 ||d s_t / d s_k|| in the chosen norm (for
        the LSTM, of d (s_t, c_t) / d (s_k, c_k)). NaN above the diagonal; on
        it the identity's norm, 0 (spectral) or log10 sqrt(D) (Frobenius);
        -inf where the product is exactly zero (a saturated unit, a zero W).
        Finite where the product itself would overflow or underflow float64.
    step_jacobian_sigma : (T,) ndarray
        Largest singular value of each step Jacobian J_k (k = 0 with
        s_{-1} = s0, and c_{-1} = c0 for the LSTM).
    W_spectral_radius : float
        max |eigenvalue| of W (rnn), of the candidate block W[2] (W_n of the
        GRU, W_g of the LSTM).
    W_sigma_max : float
        Largest singular value of the same matrix.
    lag_contributions : dict
        ``{"lag": [0 .. T-1], "dLdW": [...], "dLdU": [...]}``: the Frobenius
        norms of the parts of dL/dW and dL/dU brought by errors that travelled
        exactly ``lag`` steps back.
    truncation_bias : dict
        ``{"K": [0 .. T-1], "dLdU": [...], "dLdW": [...], "dLds0": [...]}``,
        plus ``"dLdb"`` with the bias b, ``"dLdb_hh"`` with the gated cells'
        b_hh and ``"dLdc0"`` for the LSTM: ||g_K - g|| / ||g|| (Frobenius) of
        the truncated-K gradient g_K against the full g; 0 where both are 0.

    Notes
    -----
    Everything is computed in float64, whatever the dtype of the weights. The
    gradient parts are not in logarithms: where float64 overflows (weights that
    explode the gradient) their norms are inf or NaN and the biases NaN; the
    Jacobian norms stay finite.
    """

    log10_jacobian_norms: FloatArray
    step_jacobian_sigma: FloatArray
    W_spectral_radius: float
    W_sigma_max: float
    lag_contributions: dict[str, list[float]]
    truncation_bias: dict[str, list[float]]


def flow(
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None = None,
    b: ArrayLike | None = None,
    c: ArrayLike | None = None,
    norm: str = "spectral",
    cell: str = "rnn",
    **gated_kwargs: Any,
) -> Flow:
    """Jacobian norms, per-lag gradients and truncation biases of one sequence.

    Parameters
    ----------
    U : (H, C) ndarray, or (G, H, C) for a gated cell
    V : (C, H) ndarray
    W : (H, H) ndarray, or (G, H, H) for a gated cell
    x, y : (T,) integer ndarrays
        Input and target token ids in [0, C).
    s0 : (H,) ndarray, optional
        Initial state; zeros when omitted.
    b : (H,) ndarray, or (G, H) for a gated cell, optional
    c : (C,) ndarray, optional
        Biases, as in ``engine.bptt`` / ``gated.bptt``.
    norm : "spectral" or "frobenius"
        The norm of the Jacobian products d s_t / d s_k.
    cell : "rnn", "gru" or "lstm"
    **gated_kwargs
        Gated cells only: ``c0`` (H,) (LSTM), ``b_hh`` (G, H), ``reset_after``
        (GRU), as in ``gated.bptt``.

    Returns
    -------
    Flow

    Raises
    ------
    InputError
        An unknown norm, cell or option, shapes that disagree, token ids out of
        range, numbers that are not finite; naming the field.

    Notes
    -----
    Cost O(T^2 D^3) time (a product of Jacobians per (t, k), a singular value
    decomposition per product with the spectral norm) and O(T D^2 + T^2) memory;
    the gradient parts O(T^2 H^2 G) time and O(T G H (H + C)) memory.
    """
    if norm not in NORMS:
        raise InputError(f"norm must be 'spectral' or 'frobenius', got {norm!r}", field="norm")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        model = _prepare(U, V, W, x, y, s0=s0, b=b, c=c, cell=cell, options=gated_kwargs)
        log10_norms = log10_product_norms(model.jacobians, "spectral" if norm == "spectral" else "frobenius")
        sigma = np.linalg.norm(model.jacobians, ord=2, axis=(1, 2))  # (T,)
        radius = float(np.abs(np.linalg.eigvals(model.W_block)).max())
        sigma_max = float(np.linalg.norm(model.W_block, ord=2))
        lags, bias = _lag_sums(model)
    return Flow(
        log10_jacobian_norms=log10_norms,
        step_jacobian_sigma=sigma,
        W_spectral_radius=radius,
        W_sigma_max=sigma_max,
        lag_contributions=lags,
        truncation_bias=bias,
    )


def log10_product_norms(J: FloatArray, norm: Norm = "spectral") -> FloatArray:
    """log10 ||J_t J_{t-1} ... J_{k+1}|| for every k <= t, in logarithms throughout.

    Parameters
    ----------
    J : (T, D, D) ndarray
        The step Jacobians J_k = d s_k / d s_{k-1}.
    norm : "spectral" or "frobenius"

    Returns
    -------
    (T, T) ndarray
        Row t, column k: log10 of the norm of d s_t / d s_k (the identity's on
        the diagonal, NaN above it, -inf where the product is exactly zero).

    Notes
    -----
    One loop over t. Column block k holds P_k = d s_t / d s_k divided by its
    norm, and ``logscale[k]`` the log10 of what was divided out; moving to t+1
    is one batched product J_{t+1} P_k for every k at once, after which each
    block is renormalised. J_t enters divided by its largest entry (its log10
    added to the scale), so no product overflows or underflows, whatever the
    weights.
    """
    if norm not in NORMS:
        raise InputError(f"norm must be 'spectral' or 'frobenius', got {norm!r}", field="norm")
    if J.ndim != 3 or J.shape[1] != J.shape[2] or not len(J):
        raise InputError(f"J must be T x D x D with T >= 1, got {engine._dims(J)}", field="J")
    T, D, _ = J.shape
    out = np.full((T, T), np.nan)
    out[np.diag_indices(T)] = 0.0 if norm == "spectral" else np.log10(np.sqrt(D))  # ||I||
    with np.errstate(divide="ignore"):
        top = np.abs(J).max(axis=(1, 2))  # (T,), largest entry of each J_t
        J_unit = J / np.where(top > 0, top, 1.0)[:, None, None]  # (T, D, D), entries in [-1, 1]
        log_top = np.log10(top)  # (T,), -inf for a zero J_t
        P = np.empty((T, D, D))  # P[k], k < t: d s_t / d s_k, normalised
        logscale = np.zeros(T)  # (T,): log10 ||d s_t / d s_k|| = logscale[k] + log10 ||P[k]||
        for t in range(1, T):
            P[t - 1] = np.eye(D)  # d s_{t-1} / d s_{t-1}
            P[:t] = J_unit[t] @ P[:t]  # (D, D) x (t, D, D): d s_t / d s_k = J_t d s_{t-1} / d s_k
            logscale[:t] += log_top[t]
            n = _norms(P[:t], norm)  # (t,)
            out[t, :t] = logscale[:t] + np.log10(n)
            P[:t] /= np.where(n > 0, n, 1.0)[:, None, None]  # renormalise; a zero block stays zero
            logscale[:t] += np.log10(n)
    return out


def lag_gradients(
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None = None,
    b: ArrayLike | None = None,
    c: ArrayLike | None = None,
    cell: str = "rnn",
    **gated_kwargs: Any,
) -> Iterator[dict[str, FloatArray]]:
    """The gradients lag by lag: what the errors that travelled exactly l steps back bring.

    Yields, for l = 0 .. T-1, a dict of arrays shaped as the gradients:
    ``"dLdU"`` (H, C) or (G, H, C), ``"dLdW"`` (H, H) or (G, H, H),
    ``"dLds0"`` (H,), and ``"dLdb"`` (with b), ``"dLdb_hh"`` (with b_hh),
    ``"dLdc0"`` (LSTM). Their sum over all l is ``engine.bptt``'s (``gated.bptt``'s)
    full gradient; over l <= K the truncated-K one. Arguments as for ``flow``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        model = _prepare(U, V, W, x, y, s0=s0, b=b, c=c, cell=cell, options=gated_kwargs)  # raises here, not later

    def expanded() -> Iterator[dict[str, FloatArray]]:
        with np.errstate(over="ignore", invalid="ignore"):
            for terms in model.lags():
                yield {name: model.expand(name, value) for name, value in terms.items()}

    return expanded()


# --- The model, prepared -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """What ``flow`` needs of one sequence, whichever the cell.

    dL/dU is kept in the M columns of the tokens the sequence reads
    (``tokens``), the others being zero.
    """

    jacobians: FloatArray  # (T, D, D), J_k
    W_block: FloatArray  # (H, H), the matrix of W_spectral_radius
    full: dict[str, FloatArray]  # the full gradients, dLdU in columns ``tokens``
    lags: Callable[[], Iterator[dict[str, FloatArray]]]  # per lag l = 0 .. T-1, the same keys
    tokens: NDArray[np.intp]  # (M,), the distinct ids of x
    C: int

    def expand(self, name: str, value: FloatArray) -> FloatArray:
        """dL/dU back from M columns to C; the other gradients as they are."""
        if name != "dLdU":
            return value
        full = np.zeros((*value.shape[:-1], self.C))  # (H, C) or (G, H, C)
        full[..., self.tokens] = value
        return full


def _prepare(
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None,
    b: ArrayLike | None,
    c: ArrayLike | None,
    cell: str,
    options: Mapping[str, Any],
) -> _Model:
    if cell not in CELLS:
        raise InputError(f"cell must be one of 'rnn', 'gru', 'lstm', got {cell!r}", field="cell")
    for name in options:
        if cell == "rnn" or name not in _GATED_OPTIONS:
            expected = (
                "none (c0, b_hh and reset_after are the gated cells')"
                if cell == "rnn"
                else "one of " + ", ".join(_GATED_OPTIONS)
            )
            raise InputError(
                f"{name} is not an option of the flow of cell {cell!r}: beyond U, V, W, x, y, s0, b, c and norm it "
                f"takes {expected}, got {name}",
                field=name,
            )
    arrays = {"U": U, "V": V, "W": W, "s0": s0, "b": b, "c": c}
    arrays |= {k: v for k, v in options.items() if k != "reset_after"}
    for name, value in arrays.items():
        _check_finite(name, value)
    if cell == "rnn":
        return _prepare_rnn(U, V, W, x, y, s0=s0, b=b, c=c)
    return _prepare_gated(
        "gru" if cell == "gru" else "lstm",
        U,
        V,
        W,
        x,
        y,
        s0=s0,
        b=b,
        c=c,
        c0=options.get("c0"),
        b_hh=options.get("b_hh"),
        reset_after=bool(options.get("reset_after", False)),
    )


def _check_finite(name: str, value: ArrayLike | None) -> None:
    if value is None:
        return
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must hold numbers, got {type(value).__name__} ({exc})", field=name) from exc
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        where = "".join(f"[{int(i)}]" for i in bad[0])
        raise InputError(f"{name} must hold finite numbers, got {a[tuple(bad[0])]} at {name}{where}", field=name)


def _distinct(x: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """(tokens (M,), column of each step (T,)): x[k] = tokens[columns[k]]."""
    tokens, columns = np.unique(x, return_inverse=True)
    return tokens.astype(np.intp), columns.astype(np.intp).reshape(-1)


def _prepare_rnn(
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None,
    b: ArrayLike | None,
    c: ArrayLike | None,
) -> _Model:
    """The vanilla cell, from ``engine``'s forward pass and its recursions."""
    f64 = np.float64
    batch = engine._Batch.of(
        np.asarray(U, dtype=f64),
        np.asarray(V, dtype=f64),
        np.asarray(W, dtype=f64),
        [x],
        [y],
        None if s0 is None else [np.asarray(s0, dtype=f64)],
        b=None if b is None else np.asarray(b, dtype=f64),
        c=None if c is None else np.asarray(c, dtype=f64),
    )
    Wm: FloatArray = batch.W  # (H, H)
    S = engine._hidden_states(batch)[:, 0]  # (T, H), s_k
    T = len(S)
    x_ids = batch.X[:, 0]  # (T,)
    y_ids = batch.targets[:, 0]  # (T,)
    delta_o = engine._logits(batch, S)  # (T, C)
    engine._softmax(delta_o, y_ids)  # delta_o now holds o_t
    delta_o[np.arange(T), y_ids] -= 1.0  # o_t - onehot(y_t) = dE_t/d(V s_t)
    dLds = delta_o @ batch.V  # (T, C) x (C, H): V^T delta_o[t], the error reaching s_t from o_t
    dtanh = 1.0 - S * S  # (T, H), tanh'(z_k) = 1 - s_k**2
    S_prev = np.concatenate([batch.S0, S[:-1]])  # (T, H), s_{k-1}
    tokens, columns = _distinct(x_ids)
    M = len(tokens)
    with_b = batch.b is not None

    def terms(dz: FloatArray) -> dict[str, FloatArray]:
        """The gradients of dz (m, H), dL/dz_k at steps k < m (the seed's delta_t at each)."""
        m = len(dz)
        out = {
            "dLdU": engine._sum_into_columns(dz, columns[:m], M),  # (H, M), dLdU[:, x_k] += dz_k
            "dLdW": dz.T @ S_prev[:m],  # (H, m) x (m, H): sum_k outer(dz_k, s_{k-1})
            "dLds0": dz[0] @ Wm,  # (H,), W^T dz_0: what passes s_{-1} = s0
        }
        if with_b:
            out["dLdb"] = dz.sum(axis=0)  # (H,), sum_k dz_k
        return out

    def lags() -> Iterator[dict[str, FloatArray]]:
        # The recursion of engine.trace: row k of delta is dE_{k+l}/dz_k, the seed's delta_t
        # for output t = k + l when its loop is at step k.
        delta = dLds * dtanh  # (T, H), l = 0
        yield terms(delta)
        for lag in range(1, T):
            delta = (delta[1:] @ Wm) * dtanh[: T - lag]  # (T-l, H): delta_{k} = (W^T delta_{k+1}) * (1 - s_k**2)
            yield terms(delta)

    dz_full = engine._backward_full(Wm, dLds[:, None], dtanh[:, None])[:, 0]  # (T, H), dL/dz_k
    return _Model(
        jacobians=dtanh[:, :, None] * Wm,  # (T, H, H), J_k = diag(1 - s_k**2) W
        W_block=Wm,
        full=terms(dz_full),
        lags=lags,
        tokens=tokens,
        C=batch.U.shape[1],
    )


def _prepare_gated(
    cell: gated.Cell,
    U: ArrayLike,
    V: ArrayLike,
    W: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    s0: ArrayLike | None,
    b: ArrayLike | None,
    c: ArrayLike | None,
    c0: ArrayLike | None,
    b_hh: ArrayLike | None,
    reset_after: bool,
) -> _Model:
    """The GRU and the LSTM, from ``gated``'s forward pass and its one step back."""
    f64 = np.float64
    inputs = gated._Inputs.of(
        cell,
        np.asarray(U, dtype=f64),
        np.asarray(V, dtype=f64),
        np.asarray(W, dtype=f64),
        [x],
        [y],
        None if s0 is None else [s0],
        None if c0 is None else [c0],
        b=None if b is None else np.asarray(b, dtype=f64),
        b_hh=None if b_hh is None else np.asarray(b_hh, dtype=f64),
        c=None if c is None else np.asarray(c, dtype=f64),
        reset_after=reset_after,
    )
    fwd = gated._forward(inputs)
    out = gated._output_layer(inputs, fwd.S)
    T, _, G, H = fwd.gates.shape  # B = 1
    lstm = cell == "lstm"
    tokens, columns = _distinct(inputs.X[:, 0])
    M = len(tokens)

    # The step Jacobians from the one step back, which is linear in (ds, dc): its rows for the
    # cotangents e_i are the rows of J_k, every step at once (the steps k in the leading axis).
    D = 2 * H if lstm else H
    eye = np.eye(D)
    cot_s = np.broadcast_to(eye[:, None, None, :H], (D, T, 1, H)).copy()  # (D, T, 1, H): e_i's s part
    cot_c = np.broadcast_to(eye[:, None, None, H:], (D, T, 1, H)).copy() if lstm else None  # e_i's c part
    buf = np.empty((D, *fwd.gates.shape))  # (D, T, 1, G, H)
    ds_prev, dc_prev = fwd.back(slice(0, T), cot_s, cot_c, buf)  # (D, T, 1, H) each: rows of J_k
    rows = ds_prev if dc_prev is None else np.concatenate([ds_prev, dc_prev], axis=-1)  # (D, T, 1, D)
    jacobians = rows[:, :, 0, :].transpose(1, 0, 2)  # (T, D, D), J_k[i] = e_i^T J_k

    reset_gru = cell == "gru" and reset_after
    tutorial_gru = cell == "gru" and not reset_after

    def terms(dA: FloatArray, ds0: FloatArray, dc0: FloatArray | None) -> dict[str, FloatArray]:
        """The gradients of dA (m, 1, G, H), dL/d(pre-activations) at steps k < m, as gated._bptt does."""
        m = len(dA)
        flat = dA.reshape(m, G * H)  # (m, GH)
        dA_hh = dA
        if reset_gru:
            dA_hh = dA.copy()
            dA_hh[:, :, 2] *= fwd.gates[:m, :, 0]  # n's hidden product is r * (W_n s + bhh_n): r * dA_n
        flat_hh = dA_hh.reshape(m, G * H)  # (m, GH)
        h_prev = fwd.S_prev[:m, 0]  # (m, H), s_{k-1}
        dLdW = (flat_hh.T @ h_prev).reshape(G, H, H)  # (GH, m) x (m, H): sum_k outer(dA_hh_k, s_{k-1})
        if tutorial_gru:
            rh = fwd.gates[:m, 0, 0] * h_prev  # (m, H), r_k * s_{k-1}
            dLdW[2] = dA[:, 0, 2].T @ rh  # (H, m) x (m, H)
        out = {
            "dLdU": engine._sum_into_columns(flat, columns[:m], M).reshape(G, H, M),  # dLdU[g][:, x_k] += dA_k[g]
            "dLdW": dLdW,
            "dLds0": ds0,
        }
        if inputs.b is not None:
            out["dLdb"] = flat.sum(axis=0).reshape(G, H)
        if inputs.b_hh is not None:
            out["dLdb_hh"] = flat_hh.sum(axis=0).reshape(G, H)
        if dc0 is not None:
            out["dLdc0"] = dc0
        return out

    def lags() -> Iterator[dict[str, FloatArray]]:
        # gated._backward_lags without the sum: at lag l row k of ds is dE_{k+l}/ds_k.
        ds: FloatArray = out.dLds  # (T, 1, H), l = 0: each output's own error at its own step
        dc = np.zeros_like(ds) if lstm else None
        for lag in range(T):
            m = T - lag
            dA = np.empty_like(fwd.gates[:m])  # (m, 1, G, H)
            ds_back, dc_back = fwd.back(slice(0, m), ds, dc, dA)
            yield terms(dA, ds_back[0, 0], None if dc_back is None else dc_back[0, 0])
            ds = ds_back[1:]  # row k now for step k, output k + l + 1
            dc = None if dc_back is None else dc_back[1:]

    dA_full, dLds0, dLdc0 = gated._backward_full(fwd, out.dLds)
    return _Model(
        jacobians=jacobians,
        W_block=inputs.W[2],  # W_n (GRU) or W_g (LSTM): the candidate's recurrent weights
        full=terms(dA_full, dLds0[0], None if dLdc0 is None else dLdc0[0]),
        lags=lags,
        tokens=tokens,
        C=inputs.V.shape[0],
    )


# --- Norms and sums ------------------------------------------------------------------------------------------------


def _norms(P: FloatArray, norm: Norm) -> FloatArray:
    """The norm of each (D, D) block of P (n, D, D): (n,)."""
    if norm == "spectral":
        sigma: FloatArray = np.linalg.norm(P, ord=2, axis=(1, 2))  # largest singular value
        return sigma
    frobenius: FloatArray = np.sqrt(np.einsum("nij,nij->n", P, P))
    return frobenius


def _frobenius(a: FloatArray) -> float:
    return float(np.sqrt(np.sum(a * a)))


def _lag_sums(model: _Model) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One pass over the lags: each lag's norms, and the running sums against the full gradients."""
    full = model.full
    scale = {name: _frobenius(g) for name, g in full.items()}
    cum = {name: np.zeros_like(g) for name, g in full.items()}
    norm_W: list[float] = []
    norm_U: list[float] = []
    bias: dict[str, list[float]] = {name: [] for name in full}
    for terms in model.lags():
        norm_W.append(_frobenius(terms["dLdW"]))
        norm_U.append(_frobenius(terms["dLdU"]))
        for name, g in full.items():
            cum[name] += terms[name]  # g_K = the sum over lags l <= K
            err = _frobenius(cum[name] - g)
            bias[name].append(err / scale[name] if scale[name] > 0 else (0.0 if err == 0 else np.inf))
    T = len(norm_W)
    for name in bias:
        bias[name][-1] = 0.0  # K = T - 1 truncates nothing: g_K is g (engine.bptt answers g itself)
    lags: dict[str, list[float]] = {"lag": list(range(T)), "dLdW": norm_W, "dLdU": norm_U}
    order = ["dLdU", "dLdW", "dLdb", "dLdb_hh", "dLds0", "dLdc0"]
    truncation: dict[str, list[float]] = {"K": list(range(T))}
    truncation |= {name: bias[name] for name in order if name in bias}
    return lags, truncation

"""A learner's GRU or LSTM gradients against the gated engine's, with every classic mistake that fits.

``compare`` is ``checks.compare`` for the cells of ``service.gated``: it answers in
the same shape, and when the submission is off it recomputes the gradients with
each mistake made (``GatedMistakeName``) and names those the submission matches.
Two GRU differences are conventions, not mistakes, and are named as such
(``CONVENTIONS``): the reset applied after the product instead of before it
(``reset_after``), and the update gate's two terms swapped (Chung et al., 2014:
``s_t = z_t * n_t + (1 - z_t) * s_{t-1}``).

Each mistake is recomputed like the engine computes BPTT, from one forward pass
(``gated._forward``): the engine's backward loops (``gated._backward_full``, one
pass over time; ``gated._backward_lags``, one loop over the lags with every
output at once) run with a step backward that makes the mistake (``_Mistaken``).
The conventions run the engine on the other GRU: ``reset_after`` flipped, or the
update gate's weights negated (sigma(-a) = 1 - sigma(a), so the swapped GRU is
the engine's with U_z, W_z, b_z, bhh_z negated, and its gradients are the
engine's there with the z rows negated). tests/gated_mistakes.py holds the
per-output loop with each mistake made, the oracle these are tested against.

numpy and the standard library only, like the engine. Dimension letters as in
``service.gated``:

    T  sequence length (steps)      H  hidden units
    C  vocabulary size (classes)    G  gates: 3 (GRU r, z, n), 4 (LSTM i, f, g, o)
    K  truncation (lags kept)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import gated
from .checks import _clipped_diagnosis, _disagreement, _fits, _report
from .engine import _dims, _sum_into_columns
from .errors import InputError

__all__ = ["CONVENTIONS", "SWEEPS", "GatedMistakeName", "compare"]

Array = gated.FloatArray  # float64 here: compare converts the weights
Grads = tuple[Array, Array, Array]  # dLdU (G, H, C), dLdV (C, H), dLdW (G, H, H)
NAMES = ("dLdU", "dLdV", "dLdW")

# The truncation a learner most often hard-codes (checks.TUTORIAL_TRUNCATE, the tutorial's default).
DEFAULT_TRUNCATE = 4


class GatedMistakeName(enum.StrEnum):
    """The mistakes (and conventions) the gated ``compare`` can name: the one spelling of their names.

    The first six are ``checks.MistakeName``'s, spelled the same; the rest are the gated cells' own.
    """

    MEAN_INSTEAD_OF_SUM = "mean_instead_of_sum"
    TRUNCATION_OFF_BY_ONE_SHORT = "truncation_off_by_one_short"
    TRUNCATION_OFF_BY_ONE_LONG = "truncation_off_by_one_long"
    TRUNCATED_INSTEAD_OF_FULL = "truncated_instead_of_full"
    DLDW_TRANSPOSED = "dLdW_transposed"
    NO_RECURRENCE = "no_recurrence"
    SIGMOID_DERIVATIVE_OF_PREACTIVATION = "sigmoid_derivative_of_preactivation"
    RESET_GATE_FACTOR_DROPPED = "reset_gate_factor_dropped"  # GRU
    CELL_GRADIENT_NOT_CARRIED = "cell_gradient_not_carried"  # LSTM
    FORGET_GATE_ON_CURRENT_CELL = "forget_gate_on_current_cell"  # LSTM
    CELL_TANH_DERIVATIVE_DROPPED = "cell_tanh_derivative_dropped"  # LSTM
    RESET_AFTER_CONVENTION = "reset_after_convention"  # GRU, a convention
    UPDATE_GATE_SWAPPED = "update_gate_swapped"  # GRU, a convention
    ALREADY_CLIPPED = "already_clipped"


CONVENTIONS = frozenset({GatedMistakeName.RESET_AFTER_CONVENTION, GatedMistakeName.UPDATE_GATE_SWAPPED})
"""The names that are another GRU's gradients, not a mistake: their explanations start "Not a mistake:"."""

SWEEPS: dict[str, dict[str, dict[str, int]]] = {
    "gru": {"full": {"forward": 4, "backward": 5, "lags": 6}, "truncated": {"forward": 4, "backward": 7, "lags": 1}},
    "lstm": {"full": {"forward": 2, "backward": 5, "lags": 6}, "truncated": {"forward": 2, "backward": 7, "lags": 1}},
}
"""What ``compare`` computes when the submission fails, by cell and mode, for pricing it against
``gated.bptt`` (one forward pass and one backward pass); a submission that passes costs exactly that.

- ``forward``: forward passes over the T steps (``gated._forward``), each as long as bptt's;
- ``backward``: backward passes like bptt's in the mode asked: ``full`` (``bptt_truncate`` null), one
  pass over T steps; ``truncated`` (an integer K), a loop of K - 1, K or K + 1 lags (a pass over T
  steps where that is >= T - 1), each lag one step over at most T rows at once;
- ``lags``: lags of the short loops on top: full, ``truncated_instead_of_full`` (5 lags, K = 4) and
  ``no_recurrence`` (1); truncated, ``no_recurrence`` (1 lag).

Upper bounds: recomputations that coincide are made once (K - 1 = 0 is ``no_recurrence``; a
truncation >= T - 1 is full BPTT, the one asked included). Then, per candidate, dLdU and dLdW:
O(T G H (H + 1)) each, one matrix product. ``tests/test_gated_checks.py`` counts them.
"""


# -- recomputing the gradients with a mistake made ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Mistaken(gated._Forward):
    """The engine's forward pass, with a step backward that makes ``mistake`` (None: the engine's step)."""

    mistake: GatedMistakeName | None = None
    pre: Array | None = None  # (T, B, G, H), pre-activations: sigmoid_derivative_of_preactivation

    def back(self, k: int | slice, ds: Array, dc: Array | None, out: Array) -> tuple[Array, Array | None]:
        if self.cell == "gru":
            return _gru_back(self, k, ds, out), None
        assert dc is not None
        return _lstm_back(self, k, ds, dc, out)

    def dsigma(self, k: int | slice, gate: int) -> Array:
        """sigma'(a) = s (1 - s) of the gate's value s = sigma(a); the mistake: a (1 - a) of its pre-activation."""
        if self.mistake is GatedMistakeName.SIGMOID_DERIVATIVE_OF_PREACTIVATION:
            assert self.pre is not None
            a = self.pre[k][..., gate, :]
        else:
            a = self.gates[k][..., gate, :]
        return a * (1.0 - a)


def _gru_back(f: _Mistaken, k: int | slice, ds: Array, out: Array) -> Array:
    """gated._gru_back with ``f.mistake`` made: dL/ds_k (..., B, H) -> dL/da (..., B, 3, H) in ``out``;
    returns dL/ds_{k-1}."""
    G = f.gates[k]  # (..., B, 3, H)
    r, z, n = G[..., 0, :], G[..., 1, :], G[..., 2, :]
    h = f.S_prev[k]  # (..., B, H), s_{k-1}
    W = f.W
    H = W.shape[-1]
    dropped = f.mistake is GatedMistakeName.RESET_GATE_FACTOR_DROPPED
    # s = (1 - z) * n + z * h:  ds/dn = 1 - z,  ds/dz = h - n,  ds/dh = z (directly)
    da_n = ds * (1.0 - z) * (1.0 - n * n)  # (..., B, H), tanh'(a_n) = 1 - n**2
    out[..., 1, :] = ds * (h - n) * f.dsigma(k, 1)  # dL/da_z
    ds_prev = ds * z
    if f.HN is not None:
        # reset after: a_n = U_n x + b_n + r * (W_n h + bhh_n);  dL/dh += W_n^T (r * da_n)
        dr = da_n * f.HN[k]
        ds_prev += (da_n if dropped else da_n * r) @ W[2]  # the mistake: W_n^T da_n
    else:
        # reset before: a_n = U_n x + W_n (r * h) + b_n;  dL/dh += (W_n^T da_n) * r
        drh = da_n @ W[2]  # (..., B, H), dL/d(r * h)
        dr = drh * h
        ds_prev += drh if dropped else drh * r  # the mistake: W_n^T da_n
    out[..., 0, :] = dr * f.dsigma(k, 0)  # dL/da_r
    out[..., 2, :] = da_n
    da_rz = out[..., :2, :].reshape((*out.shape[:-2], 2 * H))  # (..., B, 2H)
    ds_prev += da_rz @ W[:2].reshape(2 * H, H)  # W_r^T da_r + W_z^T da_z
    return ds_prev


def _lstm_back(f: _Mistaken, k: int | slice, ds: Array, dc: Array, out: Array) -> tuple[Array, Array]:
    """gated._lstm_back with ``f.mistake`` made: dL/ds_k and what reaches c_k from c_{k+1} (..., B, H) ->
    dL/da (..., B, 4, H) in ``out``; returns dL/ds_{k-1} and dL/dc_{k-1}."""
    assert f.C_prev is not None and f.CS is not None and f.TC is not None
    G = f.gates[k]  # (..., B, 4, H)
    i, fg, g, o = G[..., 0, :], G[..., 1, :], G[..., 2, :], G[..., 3, :]
    tc = f.TC[k]  # (..., B, H), tanh(c_k)
    W = f.W
    H = W.shape[-1]
    # s = o * tanh(c):  dL/dc_k = dL/ds_k * o * (1 - tanh(c_k)**2) + what c_{k+1} sends
    dropped = f.mistake is GatedMistakeName.CELL_TANH_DERIVATIVE_DROPPED
    dc = dc + ds * o * (1.0 if dropped else 1.0 - tc * tc)  # the mistake: (1 - tanh(c_k)**2) left out
    # c = f * c_prev + i * g
    c_f = f.CS[k] if f.mistake is GatedMistakeName.FORGET_GATE_ON_CURRENT_CELL else f.C_prev[k]  # the mistake: c_k
    out[..., 0, :] = dc * g * f.dsigma(k, 0)  # dL/da_i
    out[..., 1, :] = dc * c_f * f.dsigma(k, 1)  # dL/da_f
    out[..., 2, :] = dc * i * (1.0 - g * g)  # dL/da_g
    out[..., 3, :] = ds * tc * f.dsigma(k, 3)  # dL/da_o
    carried = f.mistake is not GatedMistakeName.CELL_GRADIENT_NOT_CARRIED
    dc_prev = dc * fg if carried else np.zeros_like(dc)  # dL/dc_{k-1}; the mistake: nothing through c
    ds_prev = out.reshape((*out.shape[:-2], 4 * H)) @ W.reshape(4 * H, H)  # sum_g W_g^T da_g
    return ds_prev, dc_prev


@dataclass
class _Recompute:
    """One forward pass (float64) and the recomputations made from it, each once."""

    inputs: gated._Inputs
    fwd: gated._Forward
    dLdV: Array
    dLds: Array  # (T, 1, H), V^T delta_o: each output's error at its own step
    K: int | None  # the truncation asked for, None when full (K >= T - 1 included)
    correct: dict[int | None, Grads] = field(default_factory=dict)  # per truncation (None: full)

    @classmethod
    def of(cls, inputs: gated._Inputs, K: int | None, expected: Grads) -> _Recompute:
        fwd = gated._forward(inputs)
        out = gated._output_layer(inputs, fwd.S)
        T = len(fwd.S)
        k = cls.truncation(K, T)
        return cls(inputs=inputs, fwd=fwd, dLdV=out.dLdV, dLds=out.dLds, K=k, correct={k: expected})

    @staticmethod
    def truncation(K: int | None, T: int) -> int | None:
        return None if K is None or K >= T - 1 else K

    @property
    def T(self) -> int:
        return len(self.fwd.S)

    def truncated(self, K: int | None) -> Grads:
        """The right gradients with truncation K (None: full)."""
        k = self.truncation(K, self.T)
        if k not in self.correct:
            self.correct[k] = self.gradients(self.backward(self.fwd, k))
        return self.correct[k]

    def mistaken(self, mistake: GatedMistakeName) -> Grads:
        """The gradients with ``mistake`` made in every step backward, truncation as asked."""
        pre = None
        if mistake is GatedMistakeName.SIGMOID_DERIVATIVE_OF_PREACTIVATION:
            pre = self.preactivations()
        forward = {f.name: getattr(self.fwd, f.name) for f in fields(self.fwd)}
        return self.gradients(self.backward(_Mistaken(**forward, mistake=mistake, pre=pre), self.K))

    def backward(self, fwd: gated._Forward, K: int | None) -> Array:
        """dA (T, 1, G, H), dL/d(pre-activations) at every step, by the engine's loops."""
        if K is None:
            return gated._backward_full(fwd, self.dLds)[0]
        return gated._backward_lags(fwd, self.dLds, K)[0]

    def preactivations(self) -> Array:
        """(T, 1, G, H): U_g[:, x_t] + W_g s_{t-1} + b_g + bhh_g, the sigmoid gates' pre-activations
        (the GRU's n and the LSTM's g are not sigmoids: their rows are not used)."""
        inp, S_prev = self.inputs, self.fwd.S_prev  # (T, 1, H)
        G, H, _ = inp.U.shape
        A = inp.U.transpose(2, 0, 1)[inp.X]  # (C, G, H)[(T, 1)] -> (T, 1, G, H)
        A = A + (S_prev @ inp.W.reshape(G * H, H).T).reshape(*S_prev.shape[:2], G, H)  # (T, 1, H) x (H, GH)
        for bias in (inp.b, inp.b_hh):
            if bias is not None:
                A += bias
        return np.asarray(A, dtype=np.float64)

    def gradients(self, dA: Array) -> Grads:
        """dLdU, dLdV, dLdW from dA (T, 1, G, H), assembled as gated._bptt_unchecked assembles them."""
        inp, fwd = self.inputs, self.fwd
        T, _, G, H = dA.shape
        C = inp.V.shape[0]
        rows = dA.reshape(T, G * H)  # (T, GH)
        dLdU = _sum_into_columns(rows, inp.X[:, 0], C).reshape(G, H, C)  # dLdU[g][:, x_k] += dA[k, g]
        # a_g = ... + W_g h:  dLdW[g] = sum_k outer(dL/d(W_g h), h), h = s_{k-1}
        dA_hh = dA
        if inp.cell == "gru" and inp.reset_after:
            dA_hh = dA.copy()
            dA_hh[:, :, 2] *= fwd.gates[:, :, 0]  # r * (W_n h + bhh_n): dL/d(W_n h) = r * dL/da_n
        h_rows = fwd.S_prev.reshape(T, H)  # (T, H)
        dLdW = (dA_hh.reshape(T, G * H).T @ h_rows).reshape(G, H, H)  # (GH, T) x (T, H)
        if inp.cell == "gru" and not inp.reset_after:
            rh_rows = (fwd.gates[:, :, 0] * fwd.S_prev).reshape(T, H)  # a_n = ... + W_n (r_k * s_{k-1})
            dLdW[2] = dA[:, :, 2].reshape(T, H).T @ rh_rows
        return dLdU, self.dLdV, dLdW

    def other_gru(self, inputs: gated._Inputs, *, negate_z: bool = False) -> Grads:
        """The engine's gradients of another GRU (truncation as asked); with ``negate_z``, at the update
        gate's weights negated, and with its rows of dLdU and dLdW negated back."""
        if negate_z:
            inputs = replace(
                inputs,
                U=_negate_z(inputs.U),
                W=_negate_z(inputs.W),
                b=None if inputs.b is None else _negate_z(inputs.b),
                b_hh=None if inputs.b_hh is None else _negate_z(inputs.b_hh),
            )
        g = gated._bptt_unchecked(inputs, self.K)
        if negate_z:
            return _negate_z(g.dLdU), g.dLdV, _negate_z(g.dLdW)
        return g.dLdU, g.dLdV, g.dLdW


def _negate_z(a: Array) -> Array:
    """A copy of a GRU array stacked by gate (r, z, n) with the update gate's row negated."""
    out = a.copy()
    out[1] = -out[1]
    return out


# -- the mistakes, and what to tell the learner ----------------------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    """One classic mistake (or convention): its name, what to tell the learner, and its gradients."""

    name: GatedMistakeName
    explanation: str
    gradients: Callable[[_Recompute], Grads]


def _mean(r: _Recompute) -> Grads:
    dLdU, dLdV, dLdW = r.truncated(r.K)
    return dLdU / r.T, dLdV / r.T, dLdW / r.T


def _truncated(K: int) -> Callable[[_Recompute], Grads]:
    return lambda r: r.truncated(K)


def _dLdW_transposed(r: _Recompute) -> Grads:
    dLdU, dLdV, dLdW = r.truncated(r.K)
    return dLdU, dLdV, dLdW.transpose(0, 2, 1)  # each gate's (H, H) transposed


def _mistaken(name: GatedMistakeName) -> Callable[[_Recompute], Grads]:
    return lambda r: r.mistaken(name)


def _reset_other(r: _Recompute) -> Grads:
    return r.other_gru(replace(r.inputs, reset_after=not r.inputs.reset_after))


def _update_swapped(r: _Recompute) -> Grads:
    return r.other_gru(r.inputs, negate_z=True)


def _candidate(reset_after: bool) -> str:
    if reset_after:
        return "n_t = tanh(U_n x_t + b_n + r_t * (W_n s_{t-1} + bhh_n))"
    return "n_t = tanh(U_n x_t + W_n (r_t * s_{t-1}) + b_n)"


def _mistakes(cell: str, reset_after: bool, K: int | None, T: int) -> list[Mistake]:
    """The mistakes that apply to a request for this cell with truncation K (None: full) and T steps."""
    gru = cell == "gru"
    through = "s" if gru else "s and c"
    found = [
        Mistake(
            GatedMistakeName.MEAN_INSTEAD_OF_SUM,
            f"Your gradients are the expected ones divided by T = {T}: the gradient of the mean loss per token. "
            "The loss here is the sum over t of -ln o_t[y_t]; its gradient sums the contributions of all outputs.",
            _mean,
        )
    ]
    if K is not None:
        for other, words, name in (
            (K - 1, "one step less", GatedMistakeName.TRUNCATION_OFF_BY_ONE_SHORT),
            (K + 1, "one step more", GatedMistakeName.TRUNCATION_OFF_BY_ONE_LONG),
        ):
            if other >= 0:
                found.append(
                    Mistake(
                        name,
                        f"Your gradients are those of bptt_truncate = {other}: your loop goes back {words} than "
                        f"asked (K = {K}). The error of output t goes back through steps t, t-1, ..., "
                        f"max(0, t - K) inclusive, K + 1 steps, through {through} alike.",
                        _truncated(other),
                    )
                )
    else:
        found.append(
            Mistake(
                GatedMistakeName.TRUNCATED_INSTEAD_OF_FULL,
                f"Your gradients are those of truncated BPTT (bptt_truncate = {DEFAULT_TRUNCATE}), not the full "
                f"gradient asked for (bptt_truncate = null): carry each output's error back through {through} "
                "all the way to step 0.",
                _truncated(DEFAULT_TRUNCATE),
            )
        )
    if gru:
        gates = "r_t (1 - r_t) and z_t (1 - z_t)"
        pre = "a_r (1 - a_r) with a_r = U_r x_t + W_r s_{t-1} + b_r"
        back_n = "W_n^T (r_t * da_n)" if reset_after else "(W_n^T da_n) * r_t"
        recurrence = f"dL/ds_{{t-1}} = dL/ds_t * z_t + W_r^T da_r + W_z^T da_z + {back_n}"
        outer = "np.outer(da_g, s_{t-1}), the gate's error first (for n: " + (
            "np.outer(r_t * da_n, s_{t-1}))" if reset_after else "np.outer(da_n, r_t * s_{t-1}))"
        )
    else:
        gates = "i_t (1 - i_t), f_t (1 - f_t) and o_t (1 - o_t)"
        pre = "a_i (1 - a_i) with a_i = U_i x_t + W_i s_{t-1} + b_i"
        recurrence = "dL/ds_{t-1} = sum over i, f, g, o of W_g^T da_g, and dL/dc_{t-1} = dL/dc_t * f_t"
        outer = "np.outer(da_g, s_{t-1}), the gate's error first"
    found.append(
        Mistake(
            GatedMistakeName.SIGMOID_DERIVATIVE_OF_PREACTIVATION,
            f"The derivative of a sigmoid gate is sigma'(a) = sigma(a) (1 - sigma(a)), written with the gate's "
            f"value: {gates}. Yours applies s (1 - s) to the pre-activation instead ({pre}).",
            _mistaken(GatedMistakeName.SIGMOID_DERIVATIVE_OF_PREACTIVATION),
        )
    )
    if gru:
        found.append(
            Mistake(
                GatedMistakeName.RESET_GATE_FACTOR_DROPPED,
                f"The candidate {_candidate(reset_after)} reads s_{{t-1}} through the reset gate, so the error "
                f"that reaches s_{{t-1}} through it is {back_n}; yours leaves out the factor r_t.",
                _mistaken(GatedMistakeName.RESET_GATE_FACTOR_DROPPED),
            )
        )
    else:
        found += [
            Mistake(
                GatedMistakeName.CELL_GRADIENT_NOT_CARRIED,
                "The cell state carries error back in time: c_t = f_t * c_{t-1} + i_t * g_t, so "
                "dL/dc_{t-1} = dL/dc_t * f_t, added to what c_{t-1} gets from s_{t-1}. Yours passes back "
                "only dL/ds_{t-1}: the path through the cell state is missing.",
                _mistaken(GatedMistakeName.CELL_GRADIENT_NOT_CARRIED),
            ),
            Mistake(
                GatedMistakeName.FORGET_GATE_ON_CURRENT_CELL,
                "The forget gate multiplies the previous cell state, c_t = f_t * c_{t-1} + i_t * g_t, so "
                "dL/df_t = dL/dc_t * c_{t-1}; yours uses c_t.",
                _mistaken(GatedMistakeName.FORGET_GATE_ON_CURRENT_CELL),
            ),
            Mistake(
                GatedMistakeName.CELL_TANH_DERIVATIVE_DROPPED,
                "s_t = o_t * tanh(c_t), so the error reaching c_t from s_t is dL/ds_t * o_t * (1 - tanh^2(c_t)), "
                "added to dL/dc_{t+1} * f_{t+1}; yours leaves out the factor 1 - tanh^2(c_t).",
                _mistaken(GatedMistakeName.CELL_TANH_DERIVATIVE_DROPPED),
            ),
        ]
    found.append(
        Mistake(
            GatedMistakeName.DLDW_TRANSPOSED,
            "Your dLdW is the expected one with each gate's H x H block transposed: dLdW[g][i, j] is the "
            "derivative with respect to W[g][i, j], which carries s_{t-1}[j] into the gate's pre-activation "
            f"a_g[i], so dLdW[g] += {outer}.",
            _dLdW_transposed,
        )
    )
    if K != 0:
        found.append(
            Mistake(
                GatedMistakeName.NO_RECURRENCE,
                "Your dLdU and dLdW hold only each output's direct path, through its own step: the error is "
                f"never carried back to earlier steps. Each step must pass {recurrence} back, and the earlier "
                "steps add to dLdU and dLdW too.",
                _truncated(0),
            )
        )
    if gru:
        asked, unasked = ("after", "before") if reset_after else ("before", "after")
        found += [
            Mistake(
                GatedMistakeName.RESET_AFTER_CONVENTION,
                f"Not a mistake: your gradients are those of the GRU with the reset applied {unasked} the product, "
                f"{_candidate(not reset_after)} (reset_after = {str(not reset_after).lower()}); this request asked "
                f"for the reset {asked} it, {_candidate(reset_after)} (reset_after = {str(reset_after).lower()}). "
                "Both forms are GRUs (the tutorial's applies it before, cuDNN's and torch.nn.GRU's after): ask "
                "for the form you computed.",
                _reset_other,
            ),
            Mistake(
                GatedMistakeName.UPDATE_GATE_SWAPPED,
                "Not a mistake: your gradients are those of the GRU written s_t = z_t * n_t + (1 - z_t) * s_{t-1} "
                "(the convention of Chung et al., 2014); this service writes s_t = (1 - z_t) * n_t + z_t * s_{t-1} "
                "(Cho et al., 2014, and torch.nn.GRU). They are the same model with the update gate's sign "
                "flipped (U_z, W_z and its biases negated give 1 - z_t); to compare, use this service's form.",
                _update_swapped,
            ),
        ]
    return found


# -- compare ----------------------------------------------------------------------------------------------------------


def compare(
    cell: gated.Cell,
    arrays: dict[str, Any],
    submitted: dict[str, NDArray[Any]],
    *,
    tolerance: float = 1e-6,
    worst: int = 5,
) -> dict[str, Any]:
    """A learner's GRU or LSTM gradients against ``gated.bptt``'s, with every classic mistake that fits.

    Parameters
    ----------
    cell : "gru" or "lstm"
    arrays : dict
        ``gated.bptt``'s keyword arguments: U (G, H, C), V (C, H), W (G, H, H), x, y (T,), and
        optionally s0, c0 (H,), b, b_hh (G, H), c (C,), reset_after, bptt_truncate. Weights are
        taken in float64 whatever their dtype.
    submitted : dict
        dLdU (G, H, C), dLdV (C, H), dLdW (G, H, H).
    tolerance : float
        Largest max|submitted - expected| / max|expected| that passes, per gradient; also how
        close the submission must be to a mistake's gradients for that mistake to be named.
    worst : int
        How many of the furthest entries to list per gradient.

    Returns
    -------
    dict
        As ``checks.compare``: ``passed``, ``tolerance``, ``parameters`` (per gradient: errors,
        passed, worst entries), ``diagnosis`` (``{"mistake", "explanation"}`` for every mistake
        or convention (``CONVENTIONS``) whose gradients the submission matches; none when it
        passes) and ``disagreement`` (where the submission is furthest off, when nothing fits).

    Raises
    ------
    InputError
        As ``gated.bptt``; and a submitted gradient of another shape than the expected one.
    ComputeError
        As ``gated.bptt``.
    """
    kwargs = {k: _float64(v) if k in _FLOATS else v for k, v in arrays.items()}
    g = gated.bptt(cell, **kwargs)  # checks every input (an unknown cell too)
    expected = {name: np.asarray(getattr(g, name), dtype=np.float64) for name in NAMES}
    submitted = {name: _submitted(name, submitted[name], expected[name], cell) for name in NAMES}  # float64, checked
    report = _report(expected, submitted, tolerance, worst)
    passed = all(r["passed"] for r in report.values())
    diagnosis = []
    if not passed:
        K = kwargs.get("bptt_truncate")
        reset_after = bool(kwargs.get("reset_after", False))
        options = {n: kwargs.get(n) for n in ("s0", "c0", "b", "b_hh", "c")}
        inputs = gated._Inputs.one(cell, kwargs["U"], kwargs["V"], kwargs["W"], kwargs["x"], kwargs["y"],
                                   reset_after=reset_after, **options)  # fmt: skip
        with np.errstate(over="ignore", invalid="ignore"):  # a mistake may overflow where the right one does not
            r = _Recompute.of(inputs, K, (g.dLdU, g.dLdV, g.dLdW))
            for mistake in _mistakes(inputs.cell, reset_after, K, r.T):
                candidate = mistake.gradients(r)
                if all(_fits(submitted[n], c, tolerance) for n, c in zip(NAMES, candidate, strict=True)):
                    diagnosis.append({"mistake": str(mistake.name), "explanation": mistake.explanation})
        clipped = _clipped_diagnosis(submitted, expected, tolerance)  # named as GatedMistakeName spells it
        if clipped is not None:
            diagnosis.append(clipped)
    disagreement = None
    if not passed and not diagnosis:
        # dLdU's rows by (gate, unit): column c still collects the steps that read token c
        G, H, C = g.dLdU.shape
        dLdU = submitted["dLdU"].reshape(G * H, C)
        disagreement = _disagreement(report, dLdU, expected["dLdU"].reshape(G * H, C))
    return {
        "passed": passed,
        "tolerance": tolerance,
        "parameters": report,
        "diagnosis": diagnosis,
        "disagreement": disagreement,
    }


_FLOATS = frozenset({"U", "V", "W", "s0", "c0", "b", "b_hh", "c"})


def _float64(a: Any) -> Any:
    return None if a is None else np.asarray(a, dtype=np.float64)


def _submitted(name: str, value: ArrayLike, want: Array, cell: str) -> NDArray[np.float64]:
    """The learner's gradient as float64, shaped like the expected one (no broadcasting past a wrong shape)."""
    got = np.asarray(value, dtype=np.float64)
    if got.shape != want.shape:
        dims = {"dLdU": "G x H x C", "dLdV": "C x H", "dLdW": "G x H x H"}[name]
        raise InputError(f"{name} must be {dims} = {_dims(want)} for cell {cell!r}, got {_dims(got)}", field=name)
    return got

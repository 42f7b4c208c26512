"""Checking gradients: against central differences, and a learner's own against the engine's.

numpy and the standard library only, like the engine. Two services for learners:

- ``gradient_check``: the engine's gradients against central differences
  (f(p + h) - f(p - h)) / 2h on a sample of entries, with a relative error
  that cannot pass 0/0 silently (the tutorial's ``gradient_check`` computes
  |a - n| / (|a| + |n|), which is NaN when both are 0, and NaN > threshold is
  False: a silent pass).
- ``compare``: a learner's dLdU, dLdV, dLdW against the engine's, with the
  worst entries and every classic mistake (``MistakeName``) whose gradients
  the submission matches. Each mistake is recomputed vectorised, like the
  engine: one pass backward over time, or one loop over the lags with every
  output at once (tests/mistakes.py holds the tutorial's loop with each
  mistake made, the oracle these are tested against).

Dimension letters, as in the engine:

    T  sequence length (steps)      H  hidden units
    C  vocabulary size (classes)    K  truncation (lags kept)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import engine, gated
from .deadline import checkpoint

__all__ = ["ABS_FLOOR", "PARAMETERS", "MistakeName", "compare", "gradient_check", "relative_error"]

Array = NDArray[np.float64]
Grads = tuple[Array, Array, Array]  # dLdU (H, C), dLdV (C, H), dLdW (H, H)

# Below this magnitude two numbers are compared by their absolute difference:
# central differences cannot resolve smaller derivatives (their error is about
# h^2 |f'''| + eps |f| / h).
ABS_FLOOR = 1e-8

# What gradient_check checks, when the request has it (U, V, W always), in the order it reports them.
PARAMETERS = ("U", "V", "W", "b", "b_hh", "c", "s0", "c0")

# The truncation a learner most often hard-codes: the tutorial's default bptt_truncate.
TUTORIAL_TRUNCATE = 4


def relative_error(a: NDArray[Any], n: NDArray[Any]) -> NDArray[np.float64]:
    """|a - n| / max(|a|, |n|, ABS_FLOOR), element-wise: 0 for equal numbers, never NaN for finite ones."""
    return np.asarray(np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), ABS_FLOOR), dtype=np.float64)


def _worst(submitted: NDArray[Any], expected: NDArray[Any], count: int) -> list[dict[str, Any]]:
    err = np.abs(submitted - expected)
    order = np.argsort(err, axis=None)[::-1][:count]
    return [
        {
            "index": [int(i) for i in np.unravel_index(k, err.shape)],
            "submitted": float(submitted.flat[k]),
            "expected": float(expected.flat[k]),
            "abs_error": float(err.flat[k]),
        }
        for k in order
    ]


def gradient_check(
    arrays: dict[str, Any],
    *,
    h: float | dict[str, float] = 1e-5,
    tolerance: float = 1e-6,
    samples: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Central differences of the loss against BPTT's gradients, per parameter.

    ``arrays`` are ``engine.bptt``'s keyword arguments, or ``gated.bptt``'s (with
    ``cell``, and the gated cell's ``b_hh``, ``c0``, ``reset_after``). Up to ``samples``
    entries of each parameter are checked (all when it has fewer): half of them the
    entries with the largest gradients (where a wrong derivative shows most), the
    rest drawn at random with ``seed`` (reported with the results, so a check can
    be repeated exactly). ``h`` is the step, or a step per parameter name.
    """
    cell = arrays.get("cell")
    g = engine.bptt(**arrays) if cell is None else gated.bptt(**arrays)
    params = {name: arrays[name] for name in PARAMETERS if arrays.get(name) is not None}
    steps = {name: (h.get(name, 1e-5) if isinstance(h, dict) else h) for name in params}
    analytic = {"U": g.dLdU, "V": g.dLdV, "W": g.dLdW, "b": g.dLdb, "c": g.dLdc, "s0": g.dLds0}
    if isinstance(g, gated.GatedGradients):
        analytic |= {"b_hh": g.dLdb_hh, "c0": g.dLdc0}
    rng = np.random.default_rng(seed)
    inputs = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    x, y = arrays["x"], arrays["y"]

    def loss() -> float:
        if cell is None:
            return engine.loss(
                inputs["U"], inputs["V"], inputs["W"], x, y, inputs.get("s0"), b=inputs.get("b"), c=inputs.get("c")
            )
        return gated.loss(
            cell, inputs["U"], inputs["V"], inputs["W"], x, y, reset_after=arrays.get("reset_after", False),
            **{name: inputs.get(name) for name in ("s0", "c0", "b", "b_hh", "c")},
        )  # fmt: skip

    report: dict[str, Any] = {}
    for name, p in inputs.items():
        flat = p.reshape(-1)
        gradient = np.asarray(analytic[name], dtype=np.float64).reshape(-1)
        picks = _picks(gradient, samples, rng)
        a = gradient[picks]
        step = steps[name]
        n = np.empty(len(picks))
        for i, k in enumerate(picks):
            checkpoint()
            old = flat[k]
            flat[k] = old + step
            plus = loss()
            flat[k] = old - step
            minus = loss()
            flat[k] = old
            n[i] = (plus - minus) / (2 * step)
        ok = np.isfinite(a) & np.isfinite(n)  # (picks,)
        finite = bool(ok.all())
        with np.errstate(invalid="ignore"):
            rel = np.where(ok, relative_error(a, n), np.inf)  # a non-finite entry is the worst
        worst = int(np.argmax(rel))
        report[name] = {
            "checked": len(picks),
            "entries": int(flat.size),
            "h": step,
            "max_relative_error": float(rel.max()) if finite else None,
            "max_absolute_error": float(np.abs(a - n).max()) if finite else None,
            "passed": bool(finite and rel.max() <= tolerance),
            "worst": {
                "index": [int(i) for i in np.unravel_index(int(picks[worst]), p.shape)],
                "analytic": float(a[worst]),
                "numeric": float(n[worst]) if np.isfinite(n[worst]) else None,
            },
        }
    return report


def _picks(gradient: NDArray[np.float64], samples: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """The entries to check: all of a small parameter; else the (samples + 1) // 2 largest |gradient| (where a
    wrong derivative shows most), and the rest at random among the others."""
    if gradient.size <= samples:
        return np.arange(gradient.size)
    largest = (samples + 1) // 2  # at least one: the largest gradient is always checked
    order = np.argsort(-np.abs(np.nan_to_num(gradient, nan=np.inf)), kind="stable")
    top, others = order[:largest], order[largest:]
    drawn = rng.choice(others, samples - largest, replace=False)
    return np.concatenate([top, drawn]).astype(np.intp)


# -- the learner's mistakes -------------------------------------------------------


class MistakeName(enum.StrEnum):
    """The classic mistakes ``compare`` can diagnose: the one spelling of their names."""

    MEAN_INSTEAD_OF_SUM = "mean_instead_of_sum"
    TANH_DERIVATIVE_WRONG_STEP = "tanh_derivative_wrong_step"
    MISSING_T0_TERM = "missing_t0_term"
    OUTPUT_ERROR_DOUBLE_COUNTED = "output_error_double_counted"
    TRUNCATION_OFF_BY_ONE_SHORT = "truncation_off_by_one_short"
    TRUNCATION_OFF_BY_ONE_LONG = "truncation_off_by_one_long"
    TRUNCATED_INSTEAD_OF_FULL = "truncated_instead_of_full"
    W_NOT_TRANSPOSED = "w_not_transposed"
    DLDW_TRANSPOSED = "dLdW_transposed"
    NO_RECURRENCE = "no_recurrence"
    OUTER_WITH_CURRENT_STATE = "outer_with_current_state"
    DLDU_NEXT_TOKEN = "dLdU_next_token"
    ALREADY_CLIPPED = "already_clipped"


@dataclass(frozen=True)
class _Forward:
    """What every recomputation needs from one forward pass (float64).

    Attributes
    ----------
    x : (T,) integer ndarray
    W : (H, H) ndarray
    S : (T, H) ndarray
        ``S[k]`` = s_k.
    S_prev : (T, H) ndarray
        ``S_prev[k]`` = s_{k-1}, with s_{-1} = s0.
    dtanh : (T, H) ndarray
        tanh'(z_k) = 1 - s_k**2.
    delta_o : (T, C) ndarray
        o_t - onehot(y_t), the seed's ``delta_o``.
    delta0 : (T, H) ndarray
        (V^T delta_o[t]) * (1 - s_t**2): the seed's first ``delta_t`` of output t.
    dLdV : (C, H) ndarray
        sum_t outer(delta_o[t], s_t): no mistake here touches it but the mean.
    K : int or None
        The truncation asked for; None for full BPTT.
    dz : dict
        The seed's summed deltas (T, H) without a mistake, per truncation, once computed.
    """

    x: NDArray[np.intp]
    W: Array
    S: Array
    S_prev: Array
    dtanh: Array
    delta_o: Array
    delta0: Array
    dLdV: Array
    K: int | None
    dz: dict[int | None, Array] = field(default_factory=dict)

    @classmethod
    def of(cls, arrays: dict[str, Any]) -> _Forward:
        U, V, W = (np.asarray(arrays[k], dtype=np.float64) for k in ("U", "V", "W"))  # float32 too: exact candidates
        x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
        s0 = arrays.get("s0")
        delta_o, S = engine.forward(U, V, W, x, s0)  # (T, C) probabilities, (T, H); float64
        s_first = np.zeros((1, U.shape[0])) if s0 is None else np.asarray(s0)[None]  # (1, H), s_{-1}
        delta_o[np.arange(len(y)), y] -= 1.0  # softmax + cross-entropy: dL/d(V s_t) = o_t - onehot(y_t)
        dtanh = 1.0 - S * S  # (T, H), tanh'(z) = 1 - tanh(z)**2
        return cls(
            x=x,
            W=W,
            S=S,
            S_prev=np.concatenate([s_first, S[:-1]]),  # (T, H)
            dtanh=dtanh,
            delta_o=delta_o,
            delta0=(delta_o @ V) * dtanh,  # (T, C) x (C, H) -> (T, H)
            dLdV=delta_o.T @ S,  # (C, T) x (T, H) -> (C, H)
            K=arrays.get("bptt_truncate"),
        )

    @property
    def T(self) -> int:
        return len(self.x)


def _sweep(W: Array, first: Array, factor: Array, K: int | None, *, running: bool = False) -> Array:
    """Every output's delta carried back through time and summed per step: dz (T, H).

    Lag j of output t = k + j, at step k (the seed's ``delta_t`` when its inner
    loop is at ``bptt_step`` = k):

        g_0[k] = first[k],    g_j[k] = (W^T g_{j-1}[k + 1]) * factor[k]

    and dz[k] = sum_j g_j[k] over j = 0 .. min(T - 1 - k, K). Full BPTT (K None
    or >= T - 1) is one pass backward, dz[k] = first[k] + (W^T dz[k + 1]) * factor[k]
    (engine._backward_full); truncated, one loop over the lags with every output
    at once (engine._backward_truncated).

    ``running``: each output's delta also collects ``first`` at every step it
    passes (output_error_double_counted), so its delta at step k is the sum of the
    lags up to j, added once for each output t >= k within reach:
    dz[k] = sum_{i <= L_k} sum_{j <= i} g_j[k], L_k = min(T - 1 - k, K).

    Parameters
    ----------
    W : (H, H) ndarray
        The matrix the deltas go back through (rows times W is W^T times each delta).
    first, factor : (T, H) ndarrays
    K : int or None
    """
    T = len(first)
    if K is None or K >= T - 1:
        if running:
            # Untruncated, output m's delta is counted once per output t >= m: T - m times.
            first = first * (T - np.arange(T))[:, None]
        dz = np.empty_like(first)  # (T, H)
        dz[T - 1] = first[T - 1]
        carry = np.empty_like(first[0])  # (H,)
        dot, add, mul = np.dot, np.add, np.multiply  # local names: the hot loop, as in the engine
        for k in range(T - 2, -1, -1):
            dot(dz[k + 1], W, out=carry)  # (H,) x (H, H): W^T dz_{k+1}
            mul(carry, factor[k], out=carry)
            add(first[k], carry, out=dz[k])
        return dz
    return _lag_sums(W, first, factor, (K,), running=running)[K]


def _lag_sums(W: Array, first: Array, factor: Array, Ks: tuple[int, ...], *, running: bool = False) -> dict[int, Array]:
    """``_sweep`` truncated at each K in ``Ks`` (each <= T - 1), from one loop over the lags up to max(Ks).

    The sums at K - 1, K and K + 1 differ only by the last lag: the truncations
    one step off come with the one asked for at the cost of one more lag.
    """
    T = len(first)
    dz = first.copy()  # (T, H), lag 0
    g = first
    total = first
    out = {0: dz.copy()} if 0 in Ks else {}
    for j in range(1, max(Ks) + 1):
        g = (g[1:] @ W) * factor[: T - j]  # (T-j, H) x (H, H) -> (T-j, H), rows k = t - j
        if running:
            total = total[: T - j] + g  # (T-j, H), the running delta: lags 0..j summed at step k
            dz[: T - j] += total
        else:
            dz[: T - j] += g
        if j in Ks:
            out[j] = dz.copy()
    return out


def _gradients(f: _Forward, dz: Array, *, states: Array | None = None) -> Grads:
    """dLdU, dLdV, dLdW from the summed deltas dz (T, H), as the engine assembles them.

    dLdU[:, x_k] += dz_k;  dLdV = sum_t outer(delta_o[t], s_t);  dLdW = sum_k outer(dz_k, states[k]),
    ``states`` s_{k-1} (``f.S_prev``) unless given.
    """
    dLdU = engine._sum_into_columns(dz, f.x, f.delta_o.shape[1])  # (H, C)
    dLdW = dz.T @ (f.S_prev if states is None else states)  # (H, T) x (T, H) -> (H, H)
    return dLdU, f.dLdV, dLdW


def _correct(f: _Forward, K: int | None) -> Array:
    """dz of the seed's loop with truncation K, no mistake made (computed once per K; do not modify).

    For the truncation asked for, K - 1 and K + 1 come with it (truncation_off_by_one_*).
    """
    if K not in f.dz:
        if K is None or K >= f.T - 1:
            f.dz[K] = _sweep(f.W, f.delta0, f.dtanh, K)
        else:
            Ks = (K - 1, K, K + 1) if K == f.K and K > 0 else (K,)
            for k, dz in _lag_sums(f.W, f.delta0, f.dtanh, Ks).items():
                f.dz[k] = dz
    return f.dz[K]


def _tanh_wrong_step(f: _Forward) -> Grads:
    # Going back from step k + 1 to k, the seed multiplies by 1 - s_k**2; this mistake by 1 - s_{k+1}**2.
    arrive = np.roll(f.dtanh, -1, axis=0)  # (T, H), row k: 1 - s_{k+1}**2; the last row (wrapped) is never used
    return _gradients(f, _sweep(f.W, f.delta0, arrive, f.K))


def _missing_t0(f: _Forward) -> Grads:
    dz = _correct(f, f.K).copy()
    dz[0] = 0.0  # the inner loop stops at bptt_step = 1: step 0 collects nothing
    return _gradients(f, dz)


def _double_counted(f: _Forward) -> Grads:
    return _gradients(f, _sweep(f.W, f.delta0, f.dtanh, f.K, running=True))


def _mean(f: _Forward) -> Grads:
    dLdU, dLdV, dLdW = _gradients(f, _correct(f, f.K))
    return dLdU / f.T, dLdV / f.T, dLdW / f.T


def _truncated(K: int) -> Callable[[_Forward], Grads]:
    return lambda f: _gradients(f, _correct(f, K))


def _w_not_transposed(f: _Forward) -> Grads:
    return _gradients(f, _sweep(f.W.T, f.delta0, f.dtanh, f.K))  # W delta instead of W^T delta


def _dLdW_transposed(f: _Forward) -> Grads:
    dLdU, dLdV, dLdW = _gradients(f, _correct(f, f.K))
    return dLdU, dLdV, dLdW.T


def _outer_with_current_state(f: _Forward) -> Grads:
    return _gradients(f, _correct(f, f.K), states=f.S)  # outer(dz_k, s_k) instead of s_{k-1}


def _dLdU_next_token(f: _Forward) -> Grads:
    dz = _correct(f, f.K)
    _, dLdV, dLdW = _gradients(f, dz)
    H, C = dz.shape[1], f.delta_o.shape[1]
    # dLdU[:, x_{k+1}] += dz_k for k < T - 1; the last step has no next token.
    dLdU = engine._sum_into_columns(dz[:-1], f.x[1:], C) if f.T > 1 else np.zeros((H, C))
    return dLdU, dLdV, dLdW


@dataclass(frozen=True)
class Mistake:
    """One classic mistake: its name, what to tell the learner, and its gradients."""

    name: MistakeName
    explanation: str
    gradients: Callable[[_Forward], Grads]


def _mistakes(K: int | None, T: int) -> list[Mistake]:
    """The mistakes that apply to a request with truncation K (None: full) and T steps."""
    found = [
        Mistake(
            MistakeName.MEAN_INSTEAD_OF_SUM,
            f"Your gradients are the expected ones divided by T = {T}: the gradient of the mean loss "
            "per token. The loss here is the sum over t (as in the tutorial's bptt); its gradient "
            "sums the contributions of all outputs.",
            _mean,
        ),
        Mistake(
            MistakeName.TANH_DERIVATIVE_WRONG_STEP,
            "Going back from step k to k-1, the error must be multiplied by tanh'(z_{k-1}) = "
            "1 - s_{k-1}^2, the derivative at the step you arrive at; yours uses 1 - s_k^2 "
            "(in the tutorial's loop: s[bptt_step-1], not s[bptt_step]).",
            _tanh_wrong_step,
        ),
        Mistake(
            MistakeName.MISSING_T0_TERM,
            "Your loop back in time stops before step 0: the contributions at k = 0 (the first "
            "input, with s_{-1} = s0) are missing from dLdU and dLdW. Loop down to step 0 inclusive.",
            _missing_t0,
        ),
        Mistake(
            MistakeName.OUTPUT_ERROR_DOUBLE_COUNTED,
            "You add the output error V^T delta_o at every earlier step as you go back, inside the "
            "loop over outputs t: each output's error is then counted once per later output. In the "
            "per-output loop the output error enters once, at its own step; only the one-pass form "
            "adds V^T delta_o[k] at each step k (docs/derivation.md, section 7).",
            _double_counted,
        ),
    ]
    if K is not None:
        for other, words, name in (
            (K - 1, "one step less", MistakeName.TRUNCATION_OFF_BY_ONE_SHORT),
            (K + 1, "one step more", MistakeName.TRUNCATION_OFF_BY_ONE_LONG),
        ):
            if other >= 0:
                found.append(
                    Mistake(
                        name,
                        f"Your gradients are those of bptt_truncate = {other}: your loop goes back {words} "
                        f"than asked (K = {K}). The tutorial's inner loop runs bptt_step from t down to "
                        "max(0, t - K) inclusive: K + 1 steps.",
                        _truncated(other),
                    )
                )
    else:
        found.append(
            Mistake(
                MistakeName.TRUNCATED_INSTEAD_OF_FULL,
                f"Your gradients are those of the tutorial's truncated BPTT (bptt_truncate = {TUTORIAL_TRUNCATE}), "
                "not the full gradient asked for (bptt_truncate = null).",
                _truncated(TUTORIAL_TRUNCATE),
            )
        )
    found += [
        Mistake(
            MistakeName.W_NOT_TRANSPOSED,
            "Going back one step, the error is multiplied by W^T (delta_{k-1} = W^T delta_k * "
            "(1 - s_{k-1}^2)); yours uses W. In numpy: W.T.dot(delta_t), not W.dot(delta_t).",
            _w_not_transposed,
        ),
        Mistake(
            MistakeName.DLDW_TRANSPOSED,
            "Your dLdW is the transpose of the expected one: the outer product goes the other way round. "
            "dLdW[i, j] is the derivative with respect to W[i, j], which carries s_{k-1}[j] into z_k[i]: "
            "np.outer(delta_t, s[bptt_step - 1]), delta first.",
            _dLdW_transposed,
        ),
        Mistake(
            MistakeName.NO_RECURRENCE,
            "Your dLdU and dLdW hold only each output's direct path, through its own step: the error "
            "is never carried back through W to earlier steps. Each output's delta must go back "
            "step by step (delta_{k-1} = W^T delta_k * (1 - s_{k-1}^2)), adding to dLdU and dLdW at every step.",
            _truncated(0),
        ),
        Mistake(
            MistakeName.OUTER_WITH_CURRENT_STATE,
            "Your dLdW uses the outer product of the delta at step k with s_k; z_k = U x_k + W s_{k-1} "
            "takes the previous state, so it is np.outer(delta_t, s[bptt_step - 1]).",
            _outer_with_current_state,
        ),
        Mistake(
            MistakeName.DLDU_NEXT_TOKEN,
            "Your dLdU adds the delta at step k to the column of the next token, x_{k+1}; it belongs in "
            "the column of the token read at that step: dLdU[:, x[bptt_step]] += delta_t.",
            _dLdU_next_token,
        ),
    ]
    return found


def compare(
    arrays: dict[str, Any], submitted: dict[str, NDArray[Any]], *, tolerance: float = 1e-6, worst: int = 5
) -> dict[str, Any]:
    """A learner's gradients against the engine's, with every classic mistake that fits.

    Parameters
    ----------
    arrays : dict
        ``engine.bptt``'s keyword arguments (U, V, W, x, y, s0, bptt_truncate).
    submitted : dict
        dLdU (H, C), dLdV (C, H), dLdW (H, H).
    tolerance : float
        Largest max|submitted - expected| / max|expected| that passes; also how close
        the submission must be to a mistake's gradients for that mistake to be named.
    worst : int
        How many of the furthest entries to list per parameter.

    Returns
    -------
    dict
        ``passed``, ``tolerance``, ``parameters`` (per gradient: errors, passed,
        worst entries) and ``diagnosis``: ``{"mistake", "explanation"}`` for every
        mistake whose gradients the submission matches (none when it passes).
    """
    g = engine.bptt(**arrays)
    expected = {"dLdU": g.dLdU, "dLdV": g.dLdV, "dLdW": g.dLdW}
    report = _report(expected, submitted, tolerance, worst)
    passed = all(r["passed"] for r in report.values())
    diagnosis = []
    if not passed:
        f = _Forward.of(arrays)
        for mistake in _mistakes(f.K, f.T):
            candidate = mistake.gradients(f)
            if all(_fits(submitted[n], c, tolerance) for n, c in zip(("dLdU", "dLdV", "dLdW"), candidate, strict=True)):
                diagnosis.append({"mistake": str(mistake.name), "explanation": mistake.explanation})
        clipped = _clipped_diagnosis(submitted, expected, tolerance)
        if clipped is not None:
            diagnosis.append(clipped)
    disagreement = None if passed or diagnosis else _disagreement(report, submitted["dLdU"], expected["dLdU"])
    return {
        "passed": passed,
        "tolerance": tolerance,
        "parameters": report,
        "diagnosis": diagnosis,
        "disagreement": disagreement,
    }


def _report(
    expected: dict[str, NDArray[Any]], submitted: dict[str, NDArray[Any]], tolerance: float, worst: int
) -> dict[str, Any]:
    """Per gradient: the largest absolute and relative error (to the expected gradient's largest entry),
    whether it passes, and its ``worst`` furthest entries (the vanilla and the gated compare alike)."""
    report = {}
    for name, want in expected.items():
        got = submitted[name]
        err = float(np.abs(got - want).max())
        rel = err / max(float(np.abs(want).max()), ABS_FLOOR)
        report[name] = {
            "max_absolute_error": err,
            "max_relative_error": rel,
            "passed": rel <= tolerance,
            "worst": _worst(got, want, worst),
        }
    return report


def _fits(got: NDArray[Any], candidate: NDArray[Any], tolerance: float) -> bool:
    """The submission is the candidate's gradient, to ``tolerance`` relative to the candidate's largest entry."""
    scale = max(float(np.abs(candidate).max()), ABS_FLOOR)
    return bool(float(np.abs(got - candidate).max()) <= tolerance * scale)


def _clipped_diagnosis(
    submitted: dict[str, NDArray[Any]], expected: dict[str, NDArray[Any]], tolerance: float
) -> dict[str, str] | None:
    """The ``already_clipped`` diagnosis when the submission is the expected gradients clipped, else None."""
    clipped_at = _clipped_at(submitted, expected, tolerance)
    if clipped_at is None:
        return None
    return {
        "mistake": str(MistakeName.ALREADY_CLIPPED),
        "explanation": f"Your gradients are the expected ones clipped to [-{clipped_at:.6g}, "
        f"{clipped_at:.6g}]: check the gradients before clipping them (clipping is a step of the "
        "update, after the gradient; this service clips only when asked with `clip`).",
    }


def _clipped_at(submitted: dict[str, NDArray[Any]], expected: dict[str, Array], tolerance: float) -> float | None:
    """The value c at which the expected gradients, clipped to [-c, c], give the submission; None if none does.

    Clipped gradients reach c in their largest entry, so c is the submission's largest magnitude.
    """
    c = max(float(np.abs(a).max()) for a in submitted.values())
    if not c > 0 or c >= max(float(np.abs(a).max()) for a in expected.values()):
        return None  # nothing was clipped
    for name, want in expected.items():
        clipped = np.clip(want, -c, c)
        if float(np.abs(submitted[name] - clipped).max()) > tolerance * max(float(np.abs(clipped).max()), ABS_FLOOR):
            return None
    return c


def _disagreement(report: dict[str, Any], dLdU: NDArray[Any], want: Array, columns: int = 5) -> dict[str, Any]:
    """Where a submission no mistake explains is furthest off: the parameters by relative error, and the
    token columns of dLdU (the only place a summed gradient still shows the time steps: column c collects
    the steps that read token c)."""
    order = sorted(report, key=lambda n: report[n]["max_relative_error"], reverse=True)
    err = np.abs(dLdU - want).max(axis=0)  # (C,): each token column's largest error
    top = np.argsort(err)[::-1][:columns]
    return {
        "parameters": order,
        "dLdU_columns": [{"token": int(c), "max_absolute_error": float(err[c])} for c in top if err[c] > 0],
    }

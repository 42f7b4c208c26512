"""Checking gradients: against central differences, and a learner's own against the engine's.

numpy and the standard library only, like the engine. Two services for learners:

- ``gradient_check``: the engine's gradients against central differences
  (f(p + h) - f(p - h)) / 2h on a sample of entries, with a relative error
  that cannot pass 0/0 silently (the tutorial's ``gradient_check`` computes
  |a - n| / (|a| + |n|), which is NaN when both are 0, and NaN > threshold is
  False: a silent pass).
- ``compare``: a learner's dLdU, dLdV, dLdW against the engine's, with the
  worst entries and, when it can tell, which classic mistake the submission
  matches (each mistake is computed by the tutorial's loop with that mistake
  made, and compared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import engine

__all__ = ["relative_error", "gradient_check", "compare", "MISTAKES", "ABS_FLOOR"]

# Below this magnitude two numbers are compared by their absolute difference:
# central differences cannot resolve smaller derivatives (their error is about
# h^2 |f'''| + eps |f| / h).
ABS_FLOOR = 1e-8

PARAMS = ("U", "V", "W", "b", "c", "s0")


def relative_error(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """|a - n| / max(|a|, |n|, ABS_FLOOR), element-wise: 0 for equal numbers, never NaN for finite ones."""
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), ABS_FLOOR)


def _worst(submitted: np.ndarray, expected: np.ndarray, count: int) -> list[dict[str, Any]]:
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
    h: float = 1e-5,
    tolerance: float = 1e-6,
    samples: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Central differences of ``engine.loss`` against ``engine.bptt``, per parameter.

    ``arrays`` are ``engine.bptt``'s keyword arguments. Up to ``samples`` entries
    of each parameter are checked (all when it has fewer), drawn with ``seed``.
    """
    g = engine.bptt(**arrays)
    params = {"U": arrays["U"], "V": arrays["V"], "W": arrays["W"]}
    for name in ("b", "c", "s0"):
        if arrays.get(name) is not None:
            params[name] = arrays[name]
    analytic = {"U": g.dLdU, "V": g.dLdV, "W": g.dLdW, "b": g.dLdb, "c": g.dLdc, "s0": g.dLds0}
    rng = np.random.default_rng(seed)
    inputs = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    fixed = {k: arrays.get(k) for k in ("x", "y")}

    def loss() -> float:
        return engine.loss(inputs["U"], inputs["V"], inputs["W"], fixed["x"], fixed["y"],
                           inputs.get("s0"), b=inputs.get("b"), c=inputs.get("c"))

    report: dict[str, Any] = {}
    for name, p in inputs.items():
        flat = p.reshape(-1)
        picks = np.arange(flat.size) if flat.size <= samples else rng.choice(flat.size, samples, replace=False)
        a = np.asarray(analytic[name], dtype=np.float64).reshape(-1)[picks]
        n = np.empty(len(picks))
        for i, k in enumerate(picks):
            old = flat[k]
            flat[k] = old + h
            plus = loss()
            flat[k] = old - h
            minus = loss()
            flat[k] = old
            n[i] = (plus - minus) / (2 * h)
        finite = np.isfinite(n).all() and np.isfinite(a).all()
        rel = relative_error(a, n) if finite else np.full(len(picks), np.inf)
        worst = int(np.argmax(rel))
        report[name] = {
            "checked": len(picks),
            "entries": int(flat.size),
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


# -- the learner's mistakes -------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    name: str
    explanation: str
    gradients: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


def _loop(U, V, W, x, y, K, s0, *, mistake: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tutorial's bptt loop (tests/seed.py is its oracle), with one mistake made."""
    T, H = len(y), U.shape[0]
    s = np.zeros((T + 1, H))  # s[-1] is the initial state
    s[-1] = 0 if s0 is None else s0
    o = np.zeros((T, U.shape[1]))
    for t in range(T):
        s[t] = np.tanh(U[:, x[t]] + W @ s[t - 1])
        z = V @ s[t]
        e = np.exp(z - z.max())
        o[t] = e / e.sum()
    dLdU, dLdV, dLdW = np.zeros(U.shape), np.zeros(V.shape), np.zeros(W.shape)
    delta_o = o.copy()
    delta_o[np.arange(T), y] -= 1.0
    first = 1 if mistake == "missing_t0" else 0
    for t in range(T - 1, -1, -1):
        dLdV += np.outer(delta_o[t], s[t])
        delta_t = V.T @ delta_o[t] * (1 - s[t] ** 2)
        for step in range(t, max(first, t - K) - 1, -1):
            dLdW += np.outer(delta_t, s[step - 1])
            dLdU[:, x[step]] += delta_t
            if mistake == "tanh_wrong_step":
                delta_t = W.T @ delta_t * (1 - s[step] ** 2)  # should be s[step - 1]
            else:
                delta_t = W.T @ delta_t * (1 - s[step - 1] ** 2)
            if mistake == "double_counting" and step > 0:
                delta_t = delta_t + V.T @ delta_o[step - 1] * (1 - s[step - 1] ** 2)
    return dLdU, dLdV, dLdW


def _mistakes(K: int | None, T: int) -> list[Mistake]:
    full = T if K is None else K

    def loop(mistake: str = "", k: int = full):
        return lambda U, V, W, x, y, s0: _loop(U, V, W, x, y, k, s0, mistake=mistake)

    found = [
        Mistake(
            "mean_instead_of_sum",
            f"Your gradients are the expected ones divided by T = {T}: the gradient of the mean loss "
            "per token. The loss here is the sum over t (as in the tutorial's bptt); its gradient "
            "sums the contributions of all outputs.",
            lambda U, V, W, x, y, s0: tuple(a / T for a in _loop(U, V, W, x, y, full, s0)),
        ),
        Mistake(
            "tanh_derivative_wrong_step",
            "Going back from step k to k-1, the error must be multiplied by tanh'(z_{k-1}) = "
            "1 - s_{k-1}^2, the derivative at the step you arrive at; yours uses 1 - s_k^2 "
            "(in the tutorial's loop: s[bptt_step-1], not s[bptt_step]).",
            loop("tanh_wrong_step"),
        ),
        Mistake(
            "missing_t0_term",
            "Your loop back in time stops before step 0: the contributions at k = 0 (the first "
            "input, with s_{-1} = s0) are missing from dLdU and dLdW. Loop down to step 0 inclusive.",
            loop("missing_t0"),
        ),
        Mistake(
            "output_error_double_counted",
            "You add the output error V^T delta_o at every earlier step as you go back, inside the "
            "loop over outputs t: each output's error is then counted once per later output. In the "
            "per-output loop the output error enters once, at its own step; only the one-pass form "
            "adds V^T delta_o[k] at each step k (docs/derivation.md, section 7).",
            loop("double_counting"),
        ),
    ]
    if K is not None:
        for other, words in ((K - 1, "one step less"), (K + 1, "one step more")):
            if other >= 0:
                found.append(Mistake(
                    f"truncation_off_by_one_{'short' if other < K else 'long'}",
                    f"Your gradients are those of bptt_truncate = {other}: your loop goes back {words} "
                    f"than asked (K = {K}). The tutorial's inner loop runs bptt_step from t down to "
                    "max(0, t - K) inclusive: K + 1 steps.",
                    loop("", other),
                ))
    else:
        found.append(Mistake(
            "truncated_instead_of_full",
            "Your gradients are those of the tutorial's truncated BPTT (bptt_truncate = 4), "
            "not the full gradient asked for (bptt_truncate = null).",
            loop("", 4),
        ))
    return found


MISTAKES = (
    "mean_instead_of_sum",
    "tanh_derivative_wrong_step",
    "missing_t0_term",
    "output_error_double_counted",
    "truncation_off_by_one_short",
    "truncation_off_by_one_long",
    "truncated_instead_of_full",
)


def compare(arrays: dict[str, Any], submitted: dict[str, np.ndarray], *, tolerance: float = 1e-6,
            worst: int = 5) -> dict[str, Any]:
    """A learner's gradients against the engine's, with a diagnosis when a classic mistake fits.

    ``arrays`` are ``engine.bptt``'s keyword arguments (U, V, W, x, y, s0,
    bptt_truncate); ``submitted`` has dLdU, dLdV, dLdW.
    """
    g = engine.bptt(**arrays)
    expected = {"dLdU": g.dLdU, "dLdV": g.dLdV, "dLdW": g.dLdW}
    report = {}
    for name, want in expected.items():
        got = submitted[name]
        scale = max(float(np.abs(want).max()), ABS_FLOOR)
        rel = float(np.abs(got - want).max()) / scale
        report[name] = {
            "max_absolute_error": float(np.abs(got - want).max()),
            "max_relative_error": rel,
            "passed": rel <= tolerance,
            "worst": _worst(got, want, worst),
        }
    passed = all(r["passed"] for r in report.values())
    diagnosis = []
    if not passed:
        U, V, W, x, y = (arrays[k] for k in ("U", "V", "W", "x", "y"))
        for mistake in _mistakes(arrays.get("bptt_truncate"), len(y)):
            candidate = mistake.gradients(U, V, W, x, y, arrays.get("s0"))
            if all(
                float(np.abs(submitted[n] - c).max()) <= tolerance * max(float(np.abs(c).max()), ABS_FLOOR)
                for n, c in zip(("dLdU", "dLdV", "dLdW"), candidate)
            ):
                diagnosis.append({"mistake": mistake.name, "explanation": mistake.explanation})
    return {"passed": passed, "tolerance": tolerance, "parameters": report, "diagnosis": diagnosis}

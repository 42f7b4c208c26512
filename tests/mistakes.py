"""The tutorial's bptt loop (tests/seed.py) with one classic mistake made: the oracle of checks.compare.

Written here, in the tests, and sharing nothing with service.checks: each
mistake is the one- or two-line change a learner makes to the seed's loop,
marked ``# mistake``. ``checks.compare`` recomputes the same gradients
vectorised and must name the mistake from these.

Slow on purpose (O(T * min(T, K + 1)) Python steps): small problems only.
"""

from __future__ import annotations

import numpy as np
import seed

# Every mistake, in the spelling of checks.MistakeName (compared in the tests, not imported here).
NAMES = (
    "mean_instead_of_sum",
    "tanh_derivative_wrong_step",
    "missing_t0_term",
    "output_error_double_counted",
    "truncation_off_by_one_short",
    "truncation_off_by_one_long",
    "truncated_instead_of_full",
    "w_not_transposed",
    "dLdW_transposed",
    "no_recurrence",
    "outer_with_current_state",
    "dLdU_next_token",
    "already_clipped",
)


def applicable(K: int | None) -> list[str]:
    """The mistakes that can be made with truncation K (None: full BPTT)."""
    out = []
    for name in NAMES:
        if name == "truncated_instead_of_full" and K is not None:
            continue
        if name.startswith("truncation_off_by_one") and K is None:
            continue
        if name == "truncation_off_by_one_short" and K == 0:
            continue
        out.append(name)
    return out


def bptt(U, V, W, x, y, K, s0=None, *, mistake: str = "", also: str = ""):
    """[dLdU, dLdV, dLdW] of the seed's loop for truncation K (None: full), with ``mistake`` made.

    ``also`` makes a second mistake at the same time (only the in-loop ones combine).
    """
    T = len(y)
    made = {mistake, also}
    if K is None:
        K = T  # the seed's full BPTT: bptt_truncate >= T - 1
    if "truncated_instead_of_full" in made:
        K = 4  # mistake: the tutorial's default truncation, hard-coded
    if "truncation_off_by_one_short" in made:
        K = K - 1  # mistake
    if "truncation_off_by_one_long" in made:
        K = K + 1  # mistake
    o, s = seed.forward_propagation(U, V, W, x, s0)
    dLdU = np.zeros(U.shape)
    dLdV = np.zeros(V.shape)
    dLdW = np.zeros(W.shape)
    delta_o = o.copy()
    delta_o[np.arange(len(y)), y] -= 1.0
    last = 1 if "missing_t0_term" in made else 0  # mistake: the inner loop stops at step 1
    for t in np.arange(T)[::-1]:
        dLdV += np.outer(delta_o[t], s[t].T)
        delta_t = V.T.dot(delta_o[t]) * (1 - (s[t] ** 2))
        for bptt_step in np.arange(max(last, t - K), t + 1)[::-1]:
            if "outer_with_current_state" in made:
                dLdW += np.outer(delta_t, s[bptt_step])  # mistake: s_k, not s_{k-1}
            else:
                dLdW += np.outer(delta_t, s[bptt_step - 1])
            if "dLdU_next_token" in made:
                if bptt_step + 1 < T:
                    dLdU[:, x[bptt_step + 1]] += delta_t  # mistake: the next token's column
            else:
                dLdU[:, x[bptt_step]] += delta_t
            if "no_recurrence" in made:
                break  # mistake: the delta is never carried back
            back = W.dot(delta_t) if "w_not_transposed" in made else W.T.dot(delta_t)  # mistake: W, not W^T
            if "tanh_derivative_wrong_step" in made:
                delta_t = back * (1 - s[bptt_step] ** 2)  # mistake: the derivative at the step left
            else:
                delta_t = back * (1 - s[bptt_step - 1] ** 2)
            if "output_error_double_counted" in made and bptt_step > 0:
                delta_t = delta_t + V.T.dot(delta_o[bptt_step - 1]) * (1 - s[bptt_step - 1] ** 2)  # mistake
    if "dLdW_transposed" in made:
        dLdW = dLdW.T  # mistake: np.outer(s[bptt_step - 1], delta_t)
    if "mean_instead_of_sum" in made:
        return [dLdU / T, dLdV / T, dLdW / T]  # mistake: the gradient of the mean loss
    if "already_clipped" in made:  # mistake: checked after clipping, at half the largest entry
        c = 0.5 * max(np.abs(g).max() for g in (dLdU, dLdV, dLdW))
        return [np.clip(g, -c, c) for g in (dLdU, dLdV, dLdW)]
    return [dLdU, dLdV, dLdW]

"""GRU and LSTM BPTT as a plain loop, one output at a time, with one classic mistake made: the oracle of
gated_checks.compare.

Written here, in the tests, and sharing nothing with ``service``: for each output t the error
V^T (o_t - onehot(y_t)) goes back one step at a time, t, t-1, ..., max(0, t-K), and at each step the
gates' errors are added to dLdU and dLdW (the tutorial's loop, tests/seed.py, with a gated cell). Each
mistake is the one- or two-line change a learner makes, marked ``# mistake``; the two GRU conventions
(``reset_after_convention``, ``update_gate_swapped``) change the forward pass too, as a learner who
wrote the other form would.

Gates stacked in PyTorch's order: GRU r, z, n; LSTM i, f, g, o. U (G, H, C), V (C, H), W (G, H, H),
b, b_hh (G, H), c (C,). Slow on purpose (O(T * min(T, K + 1)) Python steps): small problems only.
"""

from __future__ import annotations

import numpy as np

GENERIC = (
    "mean_instead_of_sum",
    "truncation_off_by_one_short",
    "truncation_off_by_one_long",
    "truncated_instead_of_full",
    "dLdW_transposed",
    "no_recurrence",
    "already_clipped",
)
GRU_ONLY = ("reset_gate_factor_dropped", "reset_after_convention", "update_gate_swapped")
LSTM_ONLY = ("cell_gradient_not_carried", "forget_gate_on_current_cell", "cell_tanh_derivative_dropped")
BOTH = ("sigmoid_derivative_of_preactivation",)


def applicable(cell: str, K: int | None) -> list[str]:
    """The mistakes (and conventions) that can be made with this cell and truncation K (None: full)."""
    out = []
    for name in (*GENERIC, *BOTH, *(GRU_ONLY if cell == "gru" else LSTM_ONLY)):
        if name == "truncated_instead_of_full" and K is not None:
            continue
        if name.startswith("truncation_off_by_one") and K is None:
            continue
        if name in ("truncation_off_by_one_short", "no_recurrence") and K == 0:
            continue  # K - 1 < 0; and K = 0 is asked, not a mistake
        out.append(name)
    return out


def sigma(a):
    return 1.0 / (1.0 + np.exp(-a))


def bptt(cell, U, V, W, x, y, K=None, *, s0=None, c0=None, b=None, b_hh=None, c=None, reset_after=False, mistake=""):
    """[dLdU, dLdV, dLdW] of the per-output loop with truncation K (None: full), ``mistake`` made."""
    G, H, C = U.shape
    T = len(x)
    b = np.zeros((G, H)) if b is None else b
    b_hh = np.zeros((G, H)) if b_hh is None else b_hh
    c = np.zeros(C) if c is None else c
    if K is None:
        K = T
    if mistake == "truncated_instead_of_full":
        K = 4  # mistake: a default truncation, hard-coded
    if mistake == "truncation_off_by_one_short":
        K = K - 1  # mistake
    if mistake == "truncation_off_by_one_long":
        K = K + 1  # mistake
    if mistake == "reset_after_convention":
        reset_after = not reset_after  # convention: the other GRU
    swapped = mistake == "update_gate_swapped"  # convention: s = z * n + (1 - z) * s_prev

    # Forward, one step at a time; s[t], and s[-1] the initial state (index T).
    s = np.zeros((T + 1, H))
    s[-1] = np.zeros(H) if s0 is None else s0
    cs = np.zeros((T + 1, H))
    cs[-1] = np.zeros(H) if c0 is None else c0
    act = np.zeros((T, G, H))  # activated gates
    pre = np.zeros((T, G, H))  # pre-activations
    hn = np.zeros((T, H))  # GRU, reset after: W_n s_{t-1} + bhh_n
    o = np.zeros((T, C))
    for t in range(T):
        h = s[t - 1]
        for g in range(G):
            pre[t, g] = U[g][:, x[t]] + W[g] @ h + b[g] + b_hh[g]
        if cell == "gru":
            act[t, 0] = sigma(pre[t, 0])
            act[t, 1] = sigma(pre[t, 1])
            r, z = act[t, 0], act[t, 1]
            if reset_after:
                hn[t] = W[2] @ h + b_hh[2]
                pre[t, 2] = U[2][:, x[t]] + b[2] + r * hn[t]
            else:
                pre[t, 2] = U[2][:, x[t]] + W[2] @ (r * h) + b[2] + b_hh[2]
            n = act[t, 2] = np.tanh(pre[t, 2])
            s[t] = z * n + (1 - z) * h if swapped else (1 - z) * n + z * h
        else:
            act[t] = sigma(pre[t])
            act[t, 2] = np.tanh(pre[t, 2])
            i, f, g_, og = act[t]
            cs[t] = f * cs[t - 1] + i * g_
            s[t] = og * np.tanh(cs[t])
        logits = V @ s[t] + c
        e = np.exp(logits - logits.max())
        o[t] = e / e.sum()

    def dsigma(t, g):
        if mistake == "sigmoid_derivative_of_preactivation":
            return pre[t, g] * (1 - pre[t, g])  # mistake: s(1 - s) of the pre-activation
        return act[t, g] * (1 - act[t, g])

    dLdU = np.zeros(U.shape)
    dLdV = np.zeros(V.shape)
    dLdW = np.zeros(W.shape)
    for t in range(T):
        delta_o = o[t].copy()
        delta_o[y[t]] -= 1.0
        dLdV += np.outer(delta_o, s[t])
        ds = V.T @ delta_o  # dE_t/ds_k, k = t first
        dc = np.zeros(H)  # LSTM: dE_t/dc_k from c_{k+1}
        for k in range(t, max(0, t - K) - 1, -1):
            h = s[k - 1]
            da = np.zeros((G, H))
            if cell == "gru":
                r, z, n = act[k]
                if swapped:
                    dn, dz, direct = ds * z, ds * (n - h), ds * (1 - z)
                else:
                    dn, dz, direct = ds * (1 - z), ds * (h - n), ds * z
                da[2] = dn * (1 - n**2)
                da[1] = dz * dsigma(k, 1)
                if reset_after:
                    dr = da[2] * hn[k]
                    dLdW[2] += np.outer(r * da[2], h)
                    rn = 1.0 if mistake == "reset_gate_factor_dropped" else r  # mistake: r_t left out
                    back_n = W[2].T @ (rn * da[2])
                else:
                    back = W[2].T @ da[2]  # dE/d(r * h)
                    dr = back * h
                    dLdW[2] += np.outer(da[2], r * h)
                    back_n = back if mistake == "reset_gate_factor_dropped" else back * r  # mistake: r_t left out
                da[0] = dr * dsigma(k, 0)
                dLdW[0] += np.outer(da[0], h)
                dLdW[1] += np.outer(da[1], h)
                ds = direct + W[0].T @ da[0] + W[1].T @ da[1] + back_n
            else:
                i, f, g_, og = act[k]
                tc = np.tanh(cs[k])
                dtanh = 1.0 if mistake == "cell_tanh_derivative_dropped" else 1 - tc**2  # mistake: tanh' left out
                dc = dc + ds * og * dtanh
                da[0] = dc * g_ * dsigma(k, 0)
                if mistake == "forget_gate_on_current_cell":
                    da[1] = dc * cs[k] * dsigma(k, 1)  # mistake: c_k, not c_{k-1}
                else:
                    da[1] = dc * cs[k - 1] * dsigma(k, 1)
                da[2] = dc * i * (1 - g_**2)
                da[3] = ds * tc * dsigma(k, 3)
                for g in range(4):
                    dLdW[g] += np.outer(da[g], h)
                ds = sum(W[g].T @ da[g] for g in range(4))
                dc = np.zeros(H) if mistake == "cell_gradient_not_carried" else dc * f  # mistake: c's path dropped
            for g in range(G):
                dLdU[g][:, x[k]] += da[g]
            if mistake == "no_recurrence":
                break  # mistake: the error is never carried back
    if mistake == "dLdW_transposed":
        dLdW = dLdW.transpose(0, 2, 1)  # mistake: np.outer(h, da[g])
    if mistake == "mean_instead_of_sum":
        return [dLdU / T, dLdV / T, dLdW / T]  # mistake: the gradient of the mean loss
    if mistake == "already_clipped":  # mistake: checked after clipping, at half the largest entry
        cut = 0.5 * max(np.abs(a).max() for a in (dLdU, dLdV, dLdW))
        return [np.clip(a, -cut, cut) for a in (dLdU, dLdV, dLdW)]
    return [dLdU, dLdV, dLdW]

"""The seed's ``RNNNumpy`` forward pass and ``bptt`` loop, transcribed as the oracle.

From ../shared/seed/000_ed859965229352e2.txt (Denny Britz, WildML RNN tutorial
part 3). Kept line for line, with these changes only:

- ``delta_o = o`` aliased the output probabilities and changed them in place;
  here it is ``o.copy()``, so ``o`` stays the forward pass's output.
- ``s0`` (the tutorial's implicit zero vector ``s[-1]``) can be given.
- Optional biases ``b`` and ``c`` (the textbook form), marked "# bias": they
  enter the pre-activation and the logits, and collect ``delta_t`` and
  ``delta_o[t]`` as the loop passes them.
- ``record``, a list, receives ``(t, bptt_step, delta_t)`` at every step: the
  deltas ``trace`` returns.

Slow on purpose: it is the reference, not the implementation.
"""

from __future__ import annotations

import numpy as np


def softmax(z):
    e = np.exp(z - np.max(z))
    return e / np.sum(e)


def forward_propagation(U, V, W, x, s0=None, b=None, c=None):
    T = len(x)
    H = U.shape[0]
    b = np.zeros(H) if b is None else b  # bias
    c = np.zeros(V.shape[0]) if c is None else c  # bias
    # s has T + 1 rows; s[-1] is the initial state (zeros in the tutorial).
    s = np.zeros((T + 1, H))
    if s0 is not None:
        s[-1] = s0
    o = np.zeros((T, U.shape[1]))
    for t in np.arange(T):
        s[t] = np.tanh(U[:, x[t]] + W.dot(s[t - 1]) + b)
        o[t] = softmax(V.dot(s[t]) + c)
    return o, s


def calculate_total_loss(U, V, W, x, y, s0=None, b=None, c=None):
    o, _ = forward_propagation(U, V, W, x, s0, b, c)
    return -np.sum(np.log(o[np.arange(len(y)), y]))


def bptt(U, V, W, x, y, bptt_truncate, s0=None, b=None, c=None, record=None):
    """The seed's loop. Full BPTT is ``bptt_truncate >= len(y) - 1``.

    Returns [dLdU, dLdV, dLdW], and dLdb, dLdc after them when b, c are given.
    """
    T = len(y)
    # Perform forward propagation
    o, s = forward_propagation(U, V, W, x, s0, b, c)
    dLdb = np.zeros(U.shape[0])  # bias
    dLdc = np.zeros(V.shape[0])  # bias
    # We accumulate the gradients in these variables
    dLdU = np.zeros(U.shape)
    dLdV = np.zeros(V.shape)
    dLdW = np.zeros(W.shape)
    delta_o = o.copy()  # the seed wrote `delta_o = o`, which overwrote o
    delta_o[np.arange(len(y)), y] -= 1.0
    # For each output backwards...
    for t in np.arange(T)[::-1]:
        dLdV += np.outer(delta_o[t], s[t].T)
        dLdc += delta_o[t]  # bias
        # Initial delta calculation: dL/dz
        delta_t = V.T.dot(delta_o[t]) * (1 - (s[t] ** 2))
        # Backpropagation through time (for at most bptt_truncate steps)
        for bptt_step in np.arange(max(0, t - bptt_truncate), t + 1)[::-1]:
            # Add to gradients at each previous step
            if record is not None:
                record.append((t, bptt_step, delta_t.copy()))
            dLdW += np.outer(delta_t, s[bptt_step - 1])
            dLdU[:, x[bptt_step]] += delta_t
            dLdb += delta_t  # bias
            # Update delta for next step dL/dz at t-1
            delta_t = W.T.dot(delta_t) * (1 - s[bptt_step - 1] ** 2)
    if b is not None or c is not None:
        return [dLdU, dLdV, dLdW, dLdb, dLdc]
    return [dLdU, dLdV, dLdW]

"""The same model in PyTorch and JAX, for the benchmarks (optional: None when absent).

Both compute the exact (full-BPTT) gradients of the summed loss, in float64,
the way a user of those libraries would write it: a loop (or lax.scan) over
time for the hidden states, then one batched output layer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Fn = Callable[[], object]


def torch_bptt(U, V, W, x, y) -> Fn | None:
    """PyTorch CPU autograd: returns a thunk computing loss and dL/dU, dL/dV, dL/dW."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)  # one core, as the service computes a request (common.one_core)
    Ut, Vt, Wt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (U, V, W))
    xt, yt = torch.tensor(x), torch.tensor(y)

    def run():
        h = torch.zeros(Ut.shape[0], dtype=torch.float64)
        cols = Ut.T[xt]  # (T, H)
        states = []
        for t in range(len(xt)):
            h = torch.tanh(cols[t] + Wt @ h)
            states.append(h)
        logits = torch.stack(states) @ Vt.T
        loss = torch.nn.functional.cross_entropy(logits, yt, reduction="sum")
        dU, dV, dW = torch.autograd.grad(loss, (Ut, Vt, Wt))
        return loss.item(), dU.numpy(), dV.numpy(), dW.numpy()

    return run


def jax_bptt(U, V, W, x, y) -> Fn | None:
    """jax.jit(jax.value_and_grad(loss)) over lax.scan, float64; compiled before timing."""
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax

    def loss(U, V, W, x, y):
        def step(h, xt):
            h = jnp.tanh(U[:, xt] + W @ h)
            return h, h

        _, S = lax.scan(step, jnp.zeros(U.shape[0], dtype=U.dtype), x)
        logp = jax.nn.log_softmax(S @ V.T, axis=1)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).sum()

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = tuple(jnp.asarray(a) for a in (U, V, W, x, y))

    def run():
        value, grads = f(*args)
        return float(value), *(np.asarray(g) for g in grads)  # np.asarray waits for the result

    run()  # compile
    return run


def check_same(reference, candidate, name: str) -> None:
    """Refuse to time a peer that computes something else: loss and gradients to 1e-9."""
    _, *grads = candidate()
    for want, got, label in zip(reference, grads, ("dLdU", "dLdV", "dLdW"), strict=False):
        err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
        if err > 1e-9:
            raise AssertionError(f"{name} {label} differs from the engine: relative error {err:.2e}")

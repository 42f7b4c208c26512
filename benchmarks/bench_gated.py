"""The gated cells' engine (service/gated.py) against PyTorch, JAX and its own matrix-product floor.

C = 8000, H = 100 (the tutorial's configuration), T in {20, 50, 100}, full BPTT,
float64, one sequence, every candidate on one thread (as the service computes,
BPTT_BLAS_THREADS=1), timed once per round in turn. The peers compute the same loss and gradients (checked to
1e-9 before timing), written as their users write them:

- PyTorch, a cell by hand: the gathered input columns U[:, :, x_t], a loop over
  time, autograd;
- PyTorch's own ``nn.GRU`` (reset-after form) / ``nn.LSTM`` fed one-hot vectors,
  the weights passed as they are (their input product is then a (T, C) x (C, GH)
  matrix product, which the gather avoids);
- JAX: ``jax.jit(jax.value_and_grad(loss))`` over ``lax.scan``, compiled before timing.

The floor is the matrix products any implementation does: the three (T, H) x
(H, C)-sized products of the output layer, T forward (1, H) x (H, GH) products
and T backward ones, and dL/dW, one (GH, T) x (T, H) product.

Each round runs the candidates in a new random order (``common.interleaved``
with a seed), as bench_kernel.py does: in the fixed order of the first tables
(engine, floor, PyTorch cell, nn module, JAX) the engine always ran right after
JAX, and measured 4% to 8% slower there than the same call after PyTorch's
(docs/performance.md). ``--fixed-order`` runs that order.

    python benchmarks/bench_gated.py [--quick] [--fixed-order]
"""

from __future__ import annotations

import argparse
import os

# One thread for every candidate, as the service computes (BPTT_BLAS_THREADS=1): on 2 shared cores the
# thread pools of PyTorch, JAX and BLAS otherwise spin against each other and the ratios mean little.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np
from common import Isolated, add_all_cores, interleaved, one_core, table

from service import gated
from service.runtime import tune_malloc

GATES = {"gru": 3, "lstm": 4}


def problem(cell: str, C: int, H: int, T: int, seed: int = 0):
    """U (G, H, C), V, W (G, H, H), biases (G, H), uniform in +-1/sqrt(fan-in); random x, y."""
    G = GATES[cell]
    rng = np.random.default_rng(seed)
    U = rng.uniform(-1, 1, (G, H, C)) / np.sqrt(C)
    V = rng.uniform(-1, 1, (C, H)) / np.sqrt(H)
    W = rng.uniform(-1, 1, (G, H, H)) / np.sqrt(H)
    b, b_hh = (rng.uniform(-1, 1, (G, H)) / np.sqrt(H) for _ in range(2))
    return U, V, W, b, b_hh, rng.integers(0, C, T), rng.integers(0, C, T)


def floor(G: int, C: int, H: int, T: int):
    rng = np.random.default_rng(1)
    s, d = rng.uniform(-1, 1, (T, H)), rng.uniform(-1, 1, (T, C))
    V, W, dA = rng.uniform(-1, 1, (C, H)), rng.uniform(-1, 1, (H, G * H)), rng.uniform(-1, 1, (T, G * H))

    def run():
        s @ V.T  # logits
        d.T @ s  # dL/dV
        d @ V  # the output's error into the states
        for t in range(T):
            s[t] @ W  # forward, (1, H) x (H, GH)
            dA[t] @ W.T  # backward
        dA.T @ s  # dL/dW

    return run


def torch_cell(cell: str, U, V, W, b, b_hh, x, y, *, module: bool):
    import torch

    torch.set_num_threads(1)
    G, H, C = U.shape
    if module:
        net = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](C, H, dtype=torch.float64)
        with torch.no_grad():
            net.weight_ih_l0.copy_(torch.from_numpy(U.reshape(G * H, C)))
            net.weight_hh_l0.copy_(torch.from_numpy(W.reshape(G * H, H)))
            net.bias_ih_l0.copy_(torch.from_numpy(b.reshape(-1)))
            net.bias_hh_l0.copy_(torch.from_numpy(b_hh.reshape(-1)))
        params = [net.weight_ih_l0, net.weight_hh_l0]
    else:
        Ut, Wt = (torch.tensor(a, requires_grad=True) for a in (U, W))
        params = [Ut, Wt]
    Vt = torch.tensor(V, requires_grad=True)
    bt, bht = torch.tensor(b), torch.tensor(b_hh)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def hidden():
        if module:
            onehot = torch.nn.functional.one_hot(xt, C).to(torch.float64)[:, None]  # (T, 1, C)
            return net(onehot)[0][:, 0]
        cols = Ut.permute(2, 0, 1)[xt] + bt  # (T, G, H)
        h = torch.zeros(H, dtype=torch.float64)
        c = torch.zeros(H, dtype=torch.float64)
        states = []
        for t in range(len(xt)):
            a = cols[t] + (Wt @ h) + bht  # (G, H): reset_after form for the GRU, like nn.GRU
            if cell == "gru":
                hn = Wt[2] @ h + bht[2]
                r, z = torch.sigmoid(a[0]), torch.sigmoid(a[1])
                n = torch.tanh(cols[t][2] + r * hn)
                h = (1 - z) * n + z * h
            else:
                i, f, g, o = torch.sigmoid(a[0]), torch.sigmoid(a[1]), torch.tanh(a[2]), torch.sigmoid(a[3])
                c = f * c + i * g
                h = o * torch.tanh(c)
            states.append(h)
        return torch.stack(states)

    def run():
        loss = torch.nn.functional.cross_entropy(hidden() @ Vt.T, yt, reduction="sum")
        dU, dW, dV = torch.autograd.grad(loss, [*params, Vt])
        return loss.item(), dU.numpy().reshape(G, H, C), dV.numpy(), dW.numpy().reshape(G, H, H)

    return run


def jax_cell(cell: str, U, V, W, b, b_hh, x, y):
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax

    def loss(U, V, W, x, y):
        H = U.shape[1]
        cols = jnp.transpose(U, (2, 0, 1))[x] + b  # (T, G, H)

        def step(carry, col):
            h, c = carry
            a = col + jnp.einsum("gij,j->gi", W, h) + b_hh
            if cell == "gru":
                hn = W[2] @ h + b_hh[2]
                r, z = jax.nn.sigmoid(a[0]), jax.nn.sigmoid(a[1])
                n = jnp.tanh(col[2] + r * hn)
                h = (1 - z) * n + z * h
            else:
                i, f, g, o = jax.nn.sigmoid(a[0]), jax.nn.sigmoid(a[1]), jnp.tanh(a[2]), jax.nn.sigmoid(a[3])
                c = f * c + i * g
                h = o * jnp.tanh(c)
            return (h, c), h

        zero = jnp.zeros(H, dtype=U.dtype)
        _, S = lax.scan(step, (zero, zero), cols)
        logp = jax.nn.log_softmax(S @ V.T, axis=1)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).sum()

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = tuple(jnp.asarray(a) for a in (U, V, W, x, y))

    def run():
        value, grads = f(*args)
        dU, dV, dW = (np.asarray(g) for g in grads)
        return float(value), dU, dV, dW

    run()  # compile
    return run


def check_same(want, fn, name: str) -> None:
    """Refuse to time a peer that computes something else: the gradients to 1e-9."""
    _, dU, dV, dW = fn()
    for label, a, w in (("dLdU", dU, want.dLdU), ("dLdV", dV, want.dLdV), ("dLdW", dW, want.dLdW)):
        err = np.abs(np.asarray(a) - w).max() / np.abs(w).max()
        if err > 1e-9:
            raise AssertionError(f"{name} {label} differs from the engine: relative error {err:.2e}")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, T in {20, 50}")
    parser.add_argument("--fixed-order", action="store_true", help="the same order every round (the first tables')")
    add_all_cores(parser)
    args = parser.parse_args(argv)
    cores = one_core(args)
    tune_malloc()  # as the service runs: large arrays reuse the heap instead of fresh pages
    C, H = 8000, 100
    Ts = (20, 50) if args.quick else (20, 50, 100)
    repeat = 5 if args.quick else 9
    rows = []
    for cell in ("gru", "lstm"):
        for T in Ts:
            U, V, W, b, b_hh, x, y = problem(cell, C, H, T)
            kw = {"b": b, "b_hh": b_hh, "reset_after": cell == "gru"}
            want = gated.bptt(cell, U, V, W, x, y, **kw)
            peers = {
                "torch cell": torch_cell(cell, U, V, W, b, b_hh, x, y, module=False),
                "torch nn": torch_cell(cell, U, V, W, b, b_hh, x, y, module=True),
                "JAX": Isolated(jax_cell, cell, U, V, W, b, b_hh, x, y),
            }
            peers = {name: fn for name, fn in peers.items() if fn is not None and getattr(fn, "available", True)}
            for name, fn in peers.items():
                check_same(want, fn, name)
            candidates = {
                "engine": lambda cell=cell, U=U, V=V, W=W, x=x, y=y, kw=kw: gated.bptt(cell, U, V, W, x, y, **kw),
                "floor": floor(GATES[cell], C, H, T),
                **{name: fn for name, fn in peers.items() if fn is not None},
            }
            t = interleaved(candidates, repeat=repeat, shuffle=None if args.fixed_order else 0)
            for fn in peers.values():
                if isinstance(fn, Isolated):
                    fn.close()
            row: list[object] = [cell, T, t["engine"] * 1e3, t["engine"] / t["floor"], t["engine"] / T * 1e3]
            row += [f"{t[name] / t['engine']:.2f}" if name in t else "n/a" for name in peers]
            rows.append(row)
    return table(
        f"Gated cells, C = {C}, H = {H}, full BPTT, float64 (medians of {repeat}; a peer / engine > 1: the engine "
        f"is faster; every candidate timed once per round, in a {'fixed' if args.fixed_order else 'random'} order; "
        f"{cores})",
        [
            "cell",
            "T",
            "engine ms",
            "engine / floor",
            "engine ms per step",
            "PyTorch cell / engine",
            "nn.GRU, nn.LSTM / engine",
            "JAX / engine",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
